//! Log-probabilities of sampled tokens and their best alternatives, for
//! the OpenAI API's `logprobs` / `top_logprobs`.
//!
//! They are the log-softmax of the model's raw logits (before penalties,
//! temperature and filters), as vLLM reports them by default. Ties among
//! the alternatives go to the lower token id.

/// One sampled token's log-probability and the `n` most likely tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// (token, log-probability), most likely first.
    pub top: Vec<(u32, f32)>,
}

/// The log-probability of `token` under `logits` and the `n` most likely
/// tokens. NaN logits count as `-inf`.
pub fn token_logprobs(logits: &[f32], token: u32, n: usize) -> TokenLogprobs {
    let clean = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
    let max = logits
        .iter()
        .map(|&l| clean(l))
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .map(|&l| f64::from(clean(l) - max).exp())
        .sum();
    let log_z = max as f64 + sum.ln();
    let lp = |l: f32| (f64::from(clean(l)) - log_z) as f32;
    let logprob = logits
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |&l| lp(l));
    let n = n.min(logits.len());
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let order = |a: &u32, b: &u32| {
        let la = clean(logits[*a as usize]);
        let lb = clean(logits[*b as usize]);
        lb.total_cmp(&la).then(a.cmp(b))
    };
    if n > 0 && n < ids.len() {
        ids.select_nth_unstable_by(n - 1, order);
    }
    ids.truncate(n);
    ids.sort_unstable_by(order);
    let top = ids
        .into_iter()
        .map(|id| (id, lp(logits[id as usize])))
        .collect();
    TokenLogprobs { logprob, top }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_top() {
        let l = [0.0f32, (2.0f32).ln(), f32::NAN, 0.0];
        let t = token_logprobs(&l, 1, 2);
        assert!((t.logprob - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(t.top.len(), 2);
        assert_eq!(t.top[0].0, 1);
        assert_eq!(t.top[1].0, 0);
        assert!((t.top[1].1 - 0.25f32.ln()).abs() < 1e-6);
        assert!(token_logprobs(&l, 2, 0).logprob.is_infinite());
    }
}
