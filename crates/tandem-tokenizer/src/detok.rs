//! Streaming detokenization.
//!
//! A token can end in the middle of a UTF-8 character (byte-fallback and
//! byte-level vocabularies), and SentencePiece decoders treat the first token
//! differently (leading-space strip). So text is produced by decoding a short
//! window of recent ids and emitting only the part that is new and complete.

use crate::{Tokenizer, TokenizerError};

/// Turns a stream of ids into a stream of complete UTF-8 text pieces.
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the decoding window.
    prefix: usize,
    /// Ids before this index have been emitted.
    read: usize,
}

impl IncrementalDecoder {
    /// A decoder whose context already holds `context` (e.g. the prompt), so
    /// that the first generated token decodes as it would mid-text.
    pub fn with_context(context: &[u32]) -> Self {
        let keep = context.len().min(4);
        let ids = context[context.len() - keep..].to_vec();
        IncrementalDecoder {
            read: ids.len(),
            prefix: 0,
            ids,
        }
    }

    /// Adds one id; returns the newly completed text, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let now = tok.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            let new = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            // Keep the window short so decoding stays O(1) per token.
            if self.prefix > 64 {
                self.ids.drain(..self.prefix);
                self.read -= self.prefix;
                self.prefix = 0;
            }
            Ok(Some(new))
        } else {
            Ok(None)
        }
    }
}
