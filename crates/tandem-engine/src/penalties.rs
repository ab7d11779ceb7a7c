//! OpenAI's presence and frequency penalties.
//!
//! `logit[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)`
//! where `count[t]` is how often `t` occurs among the tokens generated so
//! far (not the prompt), as vLLM and the OpenAI API define them. They are
//! applied to a copy of the logits before the sampler's own chain
//! (llama.cpp's repetition penalty, top-k, ...), which is where llama.cpp's
//! penalties sampler applies its frequency/presence terms too.

use crate::sampler::SamplingError;

/// Presence and frequency penalties, each in `[-2, 2]`; 0 is off.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Penalties {
    pub presence: f32,
    pub frequency: f32,
}

impl Penalties {
    /// Whether applying them changes anything.
    pub fn is_active(&self) -> bool {
        self.presence != 0.0 || self.frequency != 0.0
    }

    /// Checks the ranges OpenAI allows.
    pub fn validate(&self) -> Result<(), SamplingError> {
        for (name, v) in [
            ("presence_penalty", self.presence),
            ("frequency_penalty", self.frequency),
        ] {
            if !(v.is_finite() && (-2.0..=2.0).contains(&v)) {
                return Err(SamplingError::InvalidParameter {
                    name,
                    value: v.to_string(),
                    expected: "must be a number in [-2, 2]",
                });
            }
        }
        Ok(())
    }

    /// Penalises `logits` for the tokens of `generated` (ids outside the
    /// vocabulary are ignored).
    pub fn apply(&self, logits: &mut [f32], generated: &[u32]) {
        if !self.is_active() || generated.is_empty() {
            return;
        }
        let mut ids = generated.to_vec();
        ids.sort_unstable();
        for run in ids.chunk_by(|a, b| a == b) {
            let Some(&id) = run.first() else { continue };
            if let Some(l) = logits.get_mut(id as usize) {
                *l -= self.frequency * run.len() as f32 + self.presence;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_generated_tokens() {
        let p = Penalties {
            presence: 0.5,
            frequency: 0.25,
        };
        let mut l = vec![1.0f32; 5];
        p.apply(&mut l, &[3, 1, 3, 3, 99]);
        assert_eq!(l, vec![1.0, 0.25, 1.0, -0.25, 1.0]);
        assert!(Penalties {
            presence: 2.5,
            frequency: 0.0
        }
        .validate()
        .is_err());
        assert!(p.validate().is_ok());
    }
}
