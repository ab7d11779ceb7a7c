//! How many prompt tokens a step may prefill beside its decodes.
//!
//! A fixed budget (`--prefill-chunk`, 512 tokens) is right while nothing
//! decodes and wrong while streams run: on a small machine 512 prompt
//! tokens of a 3B model take seconds, and every running stream would wait
//! those seconds for its next token (measured before this pacer: 10 s
//! gaps in 4 streams of 125 ms while a 4000-token prompt was prefilled).
//!
//! The pacer learns two costs from the steps it sees, as moving averages:
//! the time of a step that only decodes, and the time one prompt token
//! adds to a step. While anything decodes, a step gets the prompt tokens
//! that stretch it to `stretch` times a decode-only step (at least one, so
//! a prompt always advances; at most the fixed budget); while nothing
//! decodes it gets the fixed budget. Until it has seen a prefill it
//! offers [`FIRST_CHUNK`] tokens.
//!
//! The cost of a prompt token grows as the prompt gets longer (attention
//! reads every earlier position) and the averages follow it within a few
//! steps; `stretch` is a target, so a step can exceed it while they do.
//!
//! Does not know: which requests run (the scheduler counts them), clocks
//! (it is told each step's duration).

/// Prompt tokens offered beside decodes before any prefill was timed.
pub const FIRST_CHUNK: usize = 16;

/// Weight of the newest observation in the moving averages.
const ALPHA: f64 = 0.3;

/// The step's prefill budget, from what earlier steps cost.
#[derive(Debug, Clone)]
pub struct PrefillPacer {
    /// The budget when nothing decodes, and the most ever given.
    max_chunk: usize,
    /// Longest step, as a multiple of a decode-only step, that prefill may
    /// cause while streams decode; `None`: no limit but `max_chunk`.
    stretch: Option<f64>,
    /// Seconds of a step that only decodes.
    decode_step: Option<f64>,
    /// Seconds one prompt token adds to a step.
    per_token: Option<f64>,
}

impl PrefillPacer {
    /// A pacer giving at most `max_chunk` tokens per step and, while
    /// requests decode, stretching their steps to about `stretch` times a
    /// decode-only step (`None`, or a factor of 1 or less: the fixed
    /// budget always).
    pub fn new(max_chunk: usize, stretch: Option<f64>) -> Self {
        PrefillPacer {
            max_chunk: max_chunk.max(1),
            stretch: stretch.filter(|s| s.is_finite() && *s > 1.0),
            decode_step: None,
            per_token: None,
        }
    }

    /// The budget when nothing decodes.
    pub fn max_chunk(&self) -> usize {
        self.max_chunk
    }

    /// The stretch factor, if pacing is on.
    pub fn stretch(&self) -> Option<f64> {
        self.stretch
    }

    /// Prompt tokens the next step may prefill beside `decoding` decodes.
    pub fn budget(&self, decoding: usize) -> usize {
        let Some(stretch) = self.stretch else {
            return self.max_chunk;
        };
        if decoding == 0 {
            return self.max_chunk;
        }
        match (self.decode_step, self.per_token) {
            (Some(d), Some(c)) if c > 0.0 => {
                let n = (stretch - 1.0) * d / c;
                // `as` saturates: a huge or NaN quotient stays in range.
                (n as usize).clamp(1, self.max_chunk)
            }
            _ => FIRST_CHUNK.min(self.max_chunk),
        }
    }

    /// Records a step that decoded `decoding` requests and prefilled
    /// `prefilled` prompt tokens in `secs` seconds.
    pub fn observe(&mut self, decoding: usize, prefilled: usize, secs: f64) {
        if !secs.is_finite() || secs < 0.0 {
            return;
        }
        if prefilled == 0 {
            if decoding > 0 {
                average(&mut self.decode_step, secs);
            }
            return;
        }
        let base = if decoding > 0 {
            self.decode_step.unwrap_or(0.0)
        } else {
            0.0
        };
        // A decode-only estimate above this step's time (noise) must not
        // make prompt tokens look free.
        let extra = (secs - base).max(secs * 0.05);
        average(&mut self.per_token, extra / prefilled as f64);
    }
}

fn average(avg: &mut Option<f64>, x: f64) {
    *avg = Some(match *avg {
        Some(a) => a + ALPHA * (x - a),
        None => x,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_decodes_or_a_limit_the_budget_is_the_fixed_chunk() {
        let mut p = PrefillPacer::new(512, None);
        p.observe(4, 0, 0.1);
        p.observe(4, 100, 2.0);
        assert_eq!(p.budget(4), 512);
        let p = PrefillPacer::new(512, Some(1.5));
        assert_eq!(p.budget(0), 512);
        assert_eq!(PrefillPacer::new(512, Some(1.0)).budget(3), 512);
    }

    #[test]
    fn beside_decodes_prefill_stretches_a_step_by_the_factor() {
        let mut p = PrefillPacer::new(512, Some(1.5));
        assert_eq!(p.budget(4), FIRST_CHUNK);
        // Decode steps of 125 ms; a prompt token adds 1/64 s.
        p.observe(4, 0, 0.125);
        p.observe(4, 16, 0.125 + 16.0 / 64.0);
        // 0.5 × 125 ms of prefill = 4 tokens.
        assert_eq!(p.budget(4), 4);
        // A prompt alone teaches the per-token cost too.
        let mut q = PrefillPacer::new(512, Some(2.0));
        q.observe(2, 0, 0.125);
        q.observe(0, 512, 512.0 / 1024.0);
        assert_eq!(q.budget(2), 128);
    }

    #[test]
    fn the_budget_follows_rising_costs_and_stays_in_range() {
        let mut p = PrefillPacer::new(64, Some(1.5));
        p.observe(1, 0, 0.1);
        p.observe(1, 10, 0.1 + 10.0 * 1e-6);
        assert_eq!(p.budget(1), 64, "capped by the fixed chunk");
        for _ in 0..30 {
            p.observe(1, 10, 0.1 + 10.0 * 1.0);
        }
        assert_eq!(p.budget(1), 1, "never below one token");
        // Garbage durations are ignored.
        p.observe(1, 10, f64::NAN);
        p.observe(1, 10, -1.0);
        assert_eq!(p.budget(1), 1);
        // A step faster than the decode estimate still costs something.
        let mut q = PrefillPacer::new(512, Some(1.5));
        q.observe(1, 0, 1.0);
        q.observe(1, 10, 0.5);
        assert!(q.budget(1) < 512);
    }
}
