//! Stop strings on streamed text.
//!
//! Text is held back while it could still be the start of a stop string,
//! so a client never sees part of one: a piece is released once no stop
//! string can match across it, and when one matches, everything from its
//! start on is dropped and generation ends.

/// Watches generated text for any of a request's stop strings.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What [`StopMatcher::push`] lets through.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    pub text: String,
    /// A stop string matched: `text` ends before it, nothing follows.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds generated text; returns what can be shown now.
    pub fn push(&mut self, piece: &str) -> Released {
        if self.stops.is_empty() {
            return Released {
                text: piece.to_string(),
                stopped: false,
            };
        }
        self.held.push_str(piece);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Released {
                text,
                stopped: true,
            };
        }
        // Keep the longest tail that some stop string starts with.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let text = self.held[..keep].to_string();
        self.held.drain(..keep);
        Released {
            text,
            stopped: false,
        }
    }

    /// The held-back text, at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_matches_and_cuts_at_the_stop() {
        let mut m = StopMatcher::new(vec!["END".into(), "\n\n".into()]);
        assert_eq!(m.push("abc E").text, "abc ");
        assert_eq!(m.push("N").text, "");
        let r = m.push("Dx");
        assert_eq!(r.text, "");
        assert!(r.stopped);

        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN").text, "");
        assert_eq!(m.push("o").text, "ENo");
        assert_eq!(m.push("E").text, "");
        assert_eq!(m.flush(), "E");

        let mut m = StopMatcher::new(vec!["é!".into()]);
        assert_eq!(m.push("aé").text, "a");
        let r = m.push("!b");
        assert!(r.stopped);
        assert_eq!(r.text, "");

        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("x").text, "x");
    }
}
