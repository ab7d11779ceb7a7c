//! Token sampling, done the way llama.cpp's default sampler chain does it.
//!
//! llama.cpp (`common/sampling.cpp` + `src/llama-sampler.cpp`) builds, by default, the chain
//! `penalties → top_k → top_p → min_p → temperature → dist` (DRY, top-n-sigma, typical-p and XTC
//! sit in the chain too but are disabled by default, so they are not implemented here). This
//! module reproduces that chain, with the same parameter names, defaults and edge-case rules, so
//! that a given set of `--temp/--top-k/--top-p/--min-p/--repeat-penalty` values means the same
//! thing here as it does in llama.cpp:
//!
//! 1. **Repetition penalty** over the distinct tokens among the last `repeat_last_n` tokens of the
//!    history: a logit `<= 0` is multiplied by the penalty, a positive one divided by it. A token is
//!    penalised once however often it occurs (llama.cpp's `penalty_repeat`; its frequency and
//!    presence penalties are not implemented).
//! 2. **top-k**: keep the `k` highest logits (`0` = off).
//! 3. **top-p** (nucleus): softmax over what is left, then keep the smallest prefix of the
//!    sorted-by-probability list whose cumulative probability reaches `top_p` (at least one token;
//!    `1.0` = off).
//! 4. **min-p**: keep the tokens whose probability is at least `min_p` times the largest one,
//!    i.e. `logit >= max_logit + ln(min_p)` (`0.0` = off).
//! 5. **Temperature**: divide the surviving logits by `temperature`, softmax, and draw one token.
//!
//! Note that top-p and min-p see the logits *before* temperature, exactly as in llama.cpp.
//!
//! `temperature <= 0` (only `0` passes [`SamplingParams::validate`]) means greedy decoding: the
//! repetition penalty is still applied, then the arg-max is returned (ties go to the lowest token
//! id). The filters are skipped because none of them can remove the arg-max, and the RNG is not
//! touched.
//!
//! Differences from llama.cpp worth knowing:
//! * The RNG is [`rand::rngs::StdRng`] seeded with [`SamplingParams::seed`] (llama.cpp uses
//!   `std::mt19937` and picks a random seed by default); the same seed never gives the same tokens
//!   as llama.cpp, but the same seed and inputs always give the same tokens here. The default seed
//!   is the fixed [`DEFAULT_SEED`], not a random one. In non-greedy mode every `sample` call draws
//!   exactly one `f64` from the RNG, even when a single candidate is left (llama.cpp does the same),
//!   so the stream of draws does not depend on how many tokens the filters cut.
//! * Ties between equal logits are broken by token id (lower id first) everywhere, where
//!   llama.cpp's unstable partial sorts leave the order unspecified.
//! * NaN logits are treated as `-inf` (never sampled); if no logit is left above `-inf`, `sample`
//!   returns an error instead of asserting.

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The seed [`SamplingParams::default`] uses. It is fixed (not random) so that two runs with
/// default settings produce the same text; pass your own seed for different samples.
pub const DEFAULT_SEED: u64 = 0x7A4D_3E5E_ED00_0001;

/// Errors from parameter validation and from [`Sampler::sample`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// A sampling parameter is out of its valid range.
    #[error("invalid sampling parameter `{name}` = {value}: {expected}")]
    InvalidParameter {
        /// The [`SamplingParams`] field name.
        name: &'static str,
        /// The rejected value, as text.
        value: String,
        /// What the parameter must be.
        expected: &'static str,
    },
    /// `sample` was called with an empty logits slice.
    #[error("cannot sample from an empty logits vector")]
    EmptyLogits,
    /// Every logit is NaN or `-inf` (after the repetition penalty), so there is no token to pick.
    #[error("cannot sample: all {vocab} logits are NaN or -inf")]
    NoValidLogits {
        /// Length of the logits slice.
        vocab: usize,
    },
}

/// Sampling settings, with llama.cpp's names, meanings and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` = greedy (arg-max). llama.cpp default `0.8`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` = off. Default `40`.
    pub top_k: usize,
    /// Nucleus sampling threshold in `(0, 1]`; `1.0` = off. Default `0.95`.
    pub top_p: f32,
    /// Minimum probability relative to the most likely token, in `[0, 1]`; `0` = off.
    /// Default `0.05`.
    pub min_p: f32,
    /// Repetition penalty (`> 0`); `1.0` = off. Default `1.0`.
    pub repeat_penalty: f32,
    /// How many of the most recent history tokens the repetition penalty looks at; `0` = off.
    /// Default `64`.
    pub repeat_last_n: usize,
    /// Seed of the sampler's RNG. Default [`DEFAULT_SEED`].
    pub seed: u64,
}

impl Default for SamplingParams {
    /// llama.cpp's `common_params_sampling` defaults, except that the seed is fixed.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: DEFAULT_SEED,
        }
    }
}

impl SamplingParams {
    /// Deterministic arg-max decoding (temperature `0`, every filter off, no penalty).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            ..Self::default()
        }
    }

    /// Checks every parameter's range; the error names the offending parameter.
    pub fn validate(&self) -> Result<(), SamplingError> {
        fn invalid(name: &'static str, value: f32, expected: &'static str) -> SamplingError {
            SamplingError::InvalidParameter {
                name,
                value: value.to_string(),
                expected,
            }
        }
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(invalid(
                "temperature",
                t,
                "must be a finite number >= 0 (0 = greedy)",
            ));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(invalid("top_p", p, "must be in (0, 1] (1 = disabled)"));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return Err(invalid("min_p", m, "must be in [0, 1] (0 = disabled)"));
        }
        let r = self.repeat_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(invalid(
                "repeat_penalty",
                r,
                "must be a finite number > 0 (1 = disabled)",
            ));
        }
        Ok(())
    }
}

/// One entry of the candidate list: a token id, its (penalised) logit, and a probability slot.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: u32,
    logit: f32,
    /// Scratch: marks "already penalised" during the penalty pass, then holds the probability.
    p: f32,
}

/// Descending by logit, ascending by id on ties: a total order, so unstable sorts are
/// deterministic.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// A seeded sampler implementing llama.cpp's default chain (see the module docs).
///
/// The candidate buffer is reused between calls: after the first call for a given vocabulary
/// size, [`Sampler::sample`] performs no heap allocation.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    candidates: Vec<Candidate>,
}

impl Sampler {
    /// Validates `params` and seeds the RNG with `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        Ok(Self {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            candidates: Vec::new(),
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one entry per vocabulary id), given the tokens so far
    /// (`history`, oldest first; only its last `repeat_last_n` entries matter, and ids outside
    /// the vocabulary are ignored).
    ///
    /// Errors if `logits` is empty or holds no value above `-inf` (NaN counts as `-inf`).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32, SamplingError> {
        if logits.is_empty() {
            return Err(SamplingError::EmptyLogits);
        }
        let params = &self.params;
        let cands = &mut self.candidates;

        // Candidate list, indexed by token id until the first sort.
        cands.clear();
        cands.extend(logits.iter().enumerate().map(|(i, &l)| Candidate {
            id: i as u32,
            logit: if l.is_nan() { f32::NEG_INFINITY } else { l },
            p: 0.0,
        }));

        // 1. Repetition penalty, once per distinct token of the window (`p` marks "done").
        if params.repeat_penalty != 1.0 && params.repeat_last_n > 0 {
            let start = history.len().saturating_sub(params.repeat_last_n);
            for &tok in &history[start..] {
                if let Some(c) = cands.get_mut(tok as usize) {
                    if c.p == 0.0 {
                        c.p = 1.0;
                        if c.logit <= 0.0 {
                            c.logit *= params.repeat_penalty;
                        } else {
                            c.logit /= params.repeat_penalty;
                        }
                    }
                }
            }
        }

        // Arg-max (lowest id on ties); also tells whether anything is sampleable at all.
        let mut best = 0usize;
        for (i, c) in cands.iter().enumerate().skip(1) {
            if c.logit > cands[best].logit {
                best = i;
            }
        }
        if cands[best].logit == f32::NEG_INFINITY {
            return Err(SamplingError::NoValidLogits {
                vocab: logits.len(),
            });
        }

        // Greedy: no filter can remove the arg-max, so it is the answer.
        if params.temperature <= 0.0 {
            return Ok(cands[best].id);
        }

        // Tokens at -inf can never be drawn; dropping them early keeps the filters simple.
        cands.retain(|c| c.logit > f32::NEG_INFINITY);
        let mut sorted = false;

        // 2. top-k.
        if params.top_k > 0 && params.top_k < cands.len() {
            cands.select_nth_unstable_by(params.top_k - 1, by_logit_desc);
            cands.truncate(params.top_k);
            cands.sort_unstable_by(by_logit_desc);
            sorted = true;
        }

        // 3. top-p, on the softmax of the (pre-temperature) logits that are left.
        if params.top_p < 1.0 && cands.len() > 1 {
            let max_logit = max_logit_of(cands, sorted);
            softmax(cands, max_logit);
            let mut keep = None;
            if !sorted && cands.len() > TOP_P_PARTIAL_MIN {
                // Like llama.cpp: the nucleus is usually small, so first try with only the
                // best TOP_P_PARTIAL tokens sorted, and sort everything only if they fall short.
                cands.select_nth_unstable_by(TOP_P_PARTIAL - 1, by_logit_desc);
                cands[..TOP_P_PARTIAL].sort_unstable_by(by_logit_desc);
                keep = nucleus_len(&cands[..TOP_P_PARTIAL], params.top_p);
            }
            if keep.is_none() {
                if !sorted {
                    cands.sort_unstable_by(by_logit_desc);
                }
                keep = Some(nucleus_len(cands, params.top_p).unwrap_or(cands.len()));
            }
            cands.truncate(keep.unwrap_or(cands.len()));
            sorted = true;
        }

        // 4. min-p: p_i >= min_p * p_max  <=>  logit_i >= max_logit + ln(min_p).
        if params.min_p > 0.0 && cands.len() > 1 {
            let max_logit = max_logit_of(cands, sorted);
            let min_logit = max_logit + params.min_p.ln();
            // `retain` keeps the order, so a sorted list stays sorted.
            cands.retain(|c| c.logit >= min_logit);
        }

        // 5. Temperature, softmax, and one draw.
        let temp = params.temperature;
        let max_logit = max_logit_of(cands, sorted);
        let mut sum = 0.0f64;
        for c in cands.iter_mut() {
            // (l - max) / temp instead of l / temp - max / temp: the same value, but it cannot
            // overflow for tiny temperatures, and a +inf maximum becomes 0 instead of NaN.
            c.p = if c.logit == max_logit {
                1.0
            } else {
                ((c.logit - max_logit) / temp).exp()
            };
            sum += f64::from(c.p);
        }
        let r: f64 = self.rng.random();
        let target = sum * r;
        let mut run = 0.0f64;
        let mut chosen = None;
        for c in cands.iter() {
            if c.p > 0.0 {
                run += f64::from(c.p);
                chosen = Some(c.id);
                if run > target {
                    break;
                }
            }
        }
        // `chosen` is the last token with p > 0 if rounding kept `run` below `target`; the
        // token at `max_logit` always has p = 1, so there is one (the error is unreachable).
        chosen.ok_or(SamplingError::EmptyLogits)
    }
}

/// Above this many candidates, top-p first tries a partial sort of the best
/// [`TOP_P_PARTIAL`] (llama.cpp's heuristic, with its thresholds).
const TOP_P_PARTIAL_MIN: usize = 1024;
const TOP_P_PARTIAL: usize = 256;

/// The largest logit: the first one of a sorted list.
fn max_logit_of(cands: &[Candidate], sorted: bool) -> f32 {
    if sorted {
        cands[0].logit
    } else {
        cands
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max)
    }
}

/// Normalised softmax of the candidates' logits into `p`, in `f32` like llama.cpp's
/// `llama_sampler_softmax_impl` (which top-p uses).
fn softmax(cands: &mut [Candidate], max_logit: f32) {
    let mut sum = 0.0f32;
    for c in cands.iter_mut() {
        c.p = if c.logit == max_logit {
            1.0
        } else {
            (c.logit - max_logit).exp()
        };
        sum += c.p;
    }
    for c in cands.iter_mut() {
        c.p /= sum;
    }
}

/// Length of the shortest prefix of `sorted` (descending probabilities) whose cumulative
/// probability reaches `top_p`; `None` if the whole slice falls short.
fn nucleus_len(sorted: &[Candidate], top_p: f32) -> Option<usize> {
    let mut cum = 0.0f32;
    for (i, c) in sorted.iter().enumerate() {
        cum += c.p;
        if cum >= top_p {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 1234,
        }
    }

    /// Logits whose softmax is exactly `probs` (up to rounding).
    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    /// Draw `n` tokens and count them.
    fn histogram(p: SamplingParams, logits: &[f32], n: usize) -> BTreeMap<u32, usize> {
        let mut s = Sampler::new(p).unwrap();
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            *counts.entry(s.sample(logits, &[]).unwrap()).or_insert(0) += 1;
        }
        counts
    }

    fn drawn_set(p: SamplingParams, logits: &[f32], n: usize) -> BTreeSet<u32> {
        histogram(p, logits, n).into_keys().collect()
    }

    /// softmax(logits[i] / temp) over `keep`, as f64.
    fn expected_probs(logits: &[f32], keep: &[u32], temp: f64) -> BTreeMap<u32, f64> {
        let max = keep
            .iter()
            .map(|&i| f64::from(logits[i as usize]))
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = keep
            .iter()
            .map(|&i| ((f64::from(logits[i as usize]) - max) / temp).exp())
            .collect();
        let sum: f64 = e.iter().sum();
        keep.iter().zip(e).map(|(&i, e)| (i, e / sum)).collect()
    }

    fn assert_distribution(counts: &BTreeMap<u32, usize>, expected: &BTreeMap<u32, f64>, n: usize) {
        let drawn: BTreeSet<u32> = counts.keys().copied().collect();
        let allowed: BTreeSet<u32> = expected.keys().copied().collect();
        assert!(
            drawn.is_subset(&allowed),
            "drew {drawn:?}, only {allowed:?} may survive the filters"
        );
        for (&tok, &p) in expected {
            let freq = counts.get(&tok).copied().unwrap_or(0) as f64 / n as f64;
            // 20k draws: the standard error is at most 0.0036, so 0.015 is > 4 sigma. The seed
            // is fixed, so the test is deterministic anyway.
            assert!(
                (freq - p).abs() < 0.015,
                "token {tok}: frequency {freq:.4}, expected {p:.4} (counts {counts:?})"
            );
        }
    }

    #[test]
    fn defaults_match_llama_cpp() {
        let p = SamplingParams::default();
        assert_eq!(p.temperature, 0.8);
        assert_eq!(p.top_k, 40);
        assert_eq!(p.top_p, 0.95);
        assert_eq!(p.min_p, 0.05);
        assert_eq!(p.repeat_penalty, 1.0);
        assert_eq!(p.repeat_last_n, 64);
        assert_eq!(p.seed, DEFAULT_SEED);
        assert!(p.validate().is_ok());
        assert!(SamplingParams::greedy().validate().is_ok());
    }

    #[test]
    fn greedy_picks_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, -3.0, 1.9], &[]).unwrap(), 1);
        // Ties go to the lowest id.
        assert_eq!(s.sample(&[1.0, 5.0, 5.0, 5.0], &[]).unwrap(), 1);
        // NaN is -inf, never the arg-max.
        assert_eq!(s.sample(&[f32::NAN, -100.0, f32::NAN], &[]).unwrap(), 1);
        // +inf wins.
        assert_eq!(s.sample(&[1.0, f32::INFINITY, 2.0], &[]).unwrap(), 1);
        // Single-token vocabulary.
        assert_eq!(s.sample(&[-7.0], &[]).unwrap(), 0);
    }

    #[test]
    fn top_k_1_equals_greedy_at_any_temperature() {
        let mut gen = StdRng::seed_from_u64(7);
        let mut greedy = Sampler::new(SamplingParams::greedy()).unwrap();
        for temp in [0.05f32, 0.5, 1.0, 3.0, 100.0] {
            let mut s = Sampler::new(SamplingParams {
                top_k: 1,
                ..params(temp, 1, 1.0, 0.0)
            })
            .unwrap();
            for _ in 0..50 {
                let logits: Vec<f32> = (0..500).map(|_| gen.random_range(-5.0..5.0)).collect();
                assert_eq!(
                    s.sample(&logits, &[]).unwrap(),
                    greedy.sample(&logits, &[]).unwrap()
                );
            }
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed: u64| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                top_k: 0,
                ..SamplingParams::default()
            })
            .unwrap();
            (0..200)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(99), run(99));
        assert_ne!(run(99), run(100));
    }

    #[test]
    fn unfiltered_distribution_is_the_softmax() {
        let logits = [3.0f32, 2.5, 2.0, 1.0, 0.0, -1.0, -5.0, -10.0];
        let all: Vec<u32> = (0..8).collect();
        for temp in [1.0f32, 0.7, 1.5] {
            let n = 20_000;
            let counts = histogram(params(temp, 0, 1.0, 0.0), &logits, n);
            assert_distribution(&counts, &expected_probs(&logits, &all, f64::from(temp)), n);
        }
    }

    #[test]
    fn default_chain_distribution() {
        // Pre-temperature probabilities: .459 .278 .169 .062 .023 .008 .0002 .00001.
        // top_k 40 keeps all 8; top_p 0.95: cumulative .459 .737 .906 .968 -> first 4;
        // min_p 0.05: threshold .023, all 4 pass; then softmax at temperature 0.8 over 4.
        let logits = [3.0f32, 2.5, 2.0, 1.0, 0.0, -1.0, -5.0, -10.0];
        let n = 20_000;
        let counts = histogram(
            SamplingParams {
                seed: 5,
                ..SamplingParams::default()
            },
            &logits,
            n,
        );
        assert_distribution(&counts, &expected_probs(&logits, &[0, 1, 2, 3], 0.8), n);

        // top_k 3 then temperature 2: tokens 0..3 only, flattened.
        let counts = histogram(params(2.0, 3, 1.0, 0.0), &logits, n);
        assert_distribution(&counts, &expected_probs(&logits, &[0, 1, 2], 2.0), n);

        // min_p 0.1 alone: p_i >= 0.0459 -> tokens 0..4 (p = .062 passes, .023 does not).
        let counts = histogram(params(1.0, 0, 1.0, 0.1), &logits, n);
        assert_distribution(&counts, &expected_probs(&logits, &[0, 1, 2, 3], 1.0), n);
    }

    #[test]
    fn top_p_cuts_exactly() {
        // Shuffled ids, so the sort matters: token 3 = .5, 0 = .3, 4 = .15, 1 = .04, 2 = .01.
        let logits = logits_of(&[0.3, 0.04, 0.01, 0.5, 0.15]);
        let n = 5_000;
        let cases: [(f32, &[u32]); 6] = [
            (0.4, &[3]),
            (0.75, &[3, 0]),
            (0.85, &[3, 0, 4]),
            (0.97, &[3, 0, 4, 1]),
            (0.995, &[3, 0, 4, 1, 2]),
            (1.0, &[3, 0, 4, 1, 2]),
        ];
        for (top_p, keep) in cases {
            let got = drawn_set(params(1.0, 0, top_p, 0.0), &logits, n);
            let want: BTreeSet<u32> = keep.iter().copied().collect();
            assert_eq!(got, want, "top_p = {top_p}");
        }
        // top_p comes after top_k: with k = 2 the nucleus is computed over {3, 0} renormalised
        // (.625, .375), so top_p 0.6 keeps only token 3 and 0.7 keeps both.
        assert_eq!(
            drawn_set(params(1.0, 2, 0.6, 0.0), &logits, n),
            BTreeSet::from([3])
        );
        assert_eq!(
            drawn_set(params(1.0, 2, 0.7, 0.0), &logits, n),
            BTreeSet::from([0, 3])
        );
    }

    #[test]
    fn top_p_partial_sort_path_matches_full_sort() {
        // Vocabularies over 1024 take the partial-sort shortcut: `n_high` tokens at logit 5
        // (scattered ids), the rest at -20 (p ~ 2e-9 each). Equal logits are ordered by id, so
        // the nucleus is the `keep` lowest ids of the high group.
        let vocab = 5000usize;
        for (n_high, top_p, keep) in [(100usize, 0.505f32, 51usize), (300, 0.905, 272)] {
            let high: BTreeSet<u32> = (0..n_high).map(|i| ((i * 7919) % vocab) as u32).collect();
            let mut logits = vec![-20.0f32; vocab];
            for &id in &high {
                logits[id as usize] = 5.0;
            }
            let mut s = Sampler::new(params(1.0, 0, top_p, 0.0)).unwrap();
            let tok = s.sample(&logits, &[]).unwrap();
            let kept: BTreeSet<u32> = s.candidates.iter().map(|c| c.id).collect();
            let want: BTreeSet<u32> = high.iter().copied().take(keep).collect();
            assert_eq!(kept, want, "n_high = {n_high}");
            assert!(want.contains(&tok));
        }
    }

    #[test]
    fn min_p_cuts_exactly() {
        // p_max = .4 (token 2).
        let logits = logits_of(&[0.2, 0.05, 0.4, 0.1, 0.03, 0.22]);
        let n = 5_000;
        let cases: [(f32, &[u32]); 5] = [
            (0.2, &[2, 0, 5, 3]),        // p >= .08
            (0.3, &[2, 0, 5]),           // p >= .12
            (0.52, &[2, 5]),             // p >= .208
            (0.9, &[2]),                 // p >= .36
            (0.05, &[0, 1, 2, 3, 4, 5]), // p >= .02
        ];
        for (min_p, keep) in cases {
            let got = drawn_set(params(1.0, 0, 1.0, min_p), &logits, n);
            let want: BTreeSet<u32> = keep.iter().copied().collect();
            assert_eq!(got, want, "min_p = {min_p}");
        }
        // min_p applies before temperature: a high temperature flattens the survivors but
        // does not bring back what min_p removed.
        let got = drawn_set(params(50.0, 0, 1.0, 0.3), &logits, n);
        assert_eq!(got, BTreeSet::from([0, 2, 5]));
    }

    #[test]
    fn repeat_penalty_changes_argmax() {
        let greedy_pen = |penalty: f32, last_n: usize| {
            Sampler::new(SamplingParams {
                repeat_penalty: penalty,
                repeat_last_n: last_n,
                ..SamplingParams::greedy()
            })
            .unwrap()
        };
        // Positive logit divided: 2.0 / 1.1 = 1.82 < 1.9.
        let mut s = greedy_pen(1.1, 64);
        assert_eq!(s.sample(&[2.0, 1.9], &[]).unwrap(), 0);
        assert_eq!(s.sample(&[2.0, 1.9], &[0]).unwrap(), 1);
        // Negative logit multiplied: -1.0 * 1.1 = -1.1 < -1.05.
        assert_eq!(s.sample(&[-1.0, -1.05], &[0]).unwrap(), 1);
        // Applied once per distinct token, however often it repeats: 2.0 / 1.1 > 1.7 (three
        // applications would give 1.50 < 1.7).
        assert_eq!(s.sample(&[2.0, 1.7], &[0, 0, 0]).unwrap(), 0);
        // Zero stays zero.
        assert_eq!(s.sample(&[0.0, -0.01], &[0]).unwrap(), 0);
        // Out-of-vocabulary history ids are ignored.
        assert_eq!(s.sample(&[2.0, 1.9], &[7, 1_000_000]).unwrap(), 0);
        // Only the last repeat_last_n tokens count.
        let mut s = greedy_pen(1.1, 2);
        assert_eq!(s.sample(&[2.0, 1.9], &[0, 5, 5]).unwrap(), 0);
        assert_eq!(s.sample(&[2.0, 1.9], &[5, 0, 5]).unwrap(), 1);
        // repeat_last_n = 0 disables it.
        let mut s = greedy_pen(1.1, 0);
        assert_eq!(s.sample(&[2.0, 1.9], &[0]).unwrap(), 0);
        // A penalty < 1 rewards repetition.
        let mut s = greedy_pen(0.5, 64);
        assert_eq!(s.sample(&[1.9, 2.0], &[0]).unwrap(), 0);

        // Also in the stochastic chain (top_k = 1 makes it deterministic).
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 1.1,
            ..params(1.0, 1, 1.0, 0.0)
        })
        .unwrap();
        assert_eq!(s.sample(&[2.0, 1.9, -3.0], &[0]).unwrap(), 1);
    }

    #[test]
    fn sample_errors() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[], &[]), Err(SamplingError::EmptyLogits));
        assert_eq!(
            s.sample(&[f32::NAN, f32::NAN], &[]),
            Err(SamplingError::NoValidLogits { vocab: 2 })
        );
        assert_eq!(
            s.sample(&[f32::NEG_INFINITY, f32::NAN], &[]),
            Err(SamplingError::NoValidLogits { vocab: 2 })
        );
        let mut g = Sampler::new(SamplingParams::greedy()).unwrap();
        assert!(g.sample(&[f32::NAN], &[]).is_err());
        // One valid logit among NaNs is always chosen.
        for _ in 0..100 {
            assert_eq!(s.sample(&[f32::NAN, 0.5, f32::NAN], &[]).unwrap(), 1);
        }
    }

    #[test]
    fn extreme_values_do_not_break_sampling() {
        let mut s = Sampler::new(params(1e-30, 0, 1.0, 0.0)).unwrap();
        // A vanishing temperature is greedy in effect (no overflow to NaN).
        assert_eq!(s.sample(&[1.0, 3.0, 2.999], &[]).unwrap(), 1);
        let mut s = Sampler::new(params(1.0, 0, 0.9, 0.1)).unwrap();
        // +inf logits share all the mass.
        for _ in 0..50 {
            let t = s
                .sample(&[0.0, f32::INFINITY, 1e30, f32::INFINITY], &[])
                .unwrap();
            assert!(t == 1 || t == 3);
        }
    }

    #[test]
    fn validate_rejects_bad_parameters() {
        let bad = [
            (
                "temperature",
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
            ),
            (
                "temperature",
                SamplingParams {
                    temperature: -0.5,
                    ..Default::default()
                },
            ),
            (
                "temperature",
                SamplingParams {
                    temperature: f32::INFINITY,
                    ..Default::default()
                },
            ),
            (
                "top_p",
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
            ),
            (
                "top_p",
                SamplingParams {
                    top_p: 1.01,
                    ..Default::default()
                },
            ),
            (
                "top_p",
                SamplingParams {
                    top_p: f32::NAN,
                    ..Default::default()
                },
            ),
            (
                "min_p",
                SamplingParams {
                    min_p: -0.1,
                    ..Default::default()
                },
            ),
            (
                "min_p",
                SamplingParams {
                    min_p: 1.5,
                    ..Default::default()
                },
            ),
            (
                "min_p",
                SamplingParams {
                    min_p: f32::NAN,
                    ..Default::default()
                },
            ),
            (
                "repeat_penalty",
                SamplingParams {
                    repeat_penalty: 0.0,
                    ..Default::default()
                },
            ),
            (
                "repeat_penalty",
                SamplingParams {
                    repeat_penalty: -1.0,
                    ..Default::default()
                },
            ),
            (
                "repeat_penalty",
                SamplingParams {
                    repeat_penalty: f32::NAN,
                    ..Default::default()
                },
            ),
        ];
        for (name, p) in bad {
            let err = p.validate().unwrap_err();
            match &err {
                SamplingError::InvalidParameter { name: n, .. } => assert_eq!(*n, name),
                other => panic!("unexpected error {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{name}`")), "{msg}");
            assert!(Sampler::new(p).is_err());
        }
        assert_eq!(
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .to_string(),
            "invalid sampling parameter `top_p` = 1.5: must be in (0, 1] (1 = disabled)"
        );
        // Boundary values are fine.
        for p in [
            SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                min_p: 1.0,
                ..Default::default()
            },
            SamplingParams {
                repeat_penalty: 0.01,
                ..Default::default()
            },
        ] {
            assert!(p.validate().is_ok(), "{p:?}");
        }
    }

    #[test]
    fn buffers_are_reused() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        let logits: Vec<f32> = (0..1000).map(|i| (i % 17) as f32 * 0.1).collect();
        s.sample(&logits, &[]).unwrap();
        let (ptr, cap) = (s.candidates.as_ptr(), s.candidates.capacity());
        for _ in 0..20 {
            s.sample(&logits, &[1, 2, 3]).unwrap();
        }
        assert_eq!((s.candidates.as_ptr(), s.candidates.capacity()), (ptr, cap));
    }
}
