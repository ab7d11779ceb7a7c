//! Tokenization that reproduces the reference tools exactly.
//!
//! Two sources feed one [`Tokenizer`] type:
//!
//! * a GGUF vocabulary ([`GgufVocab`], the `tokenizer.ggml.*` metadata), whose
//!   ids must equal llama.cpp's `llama_tokenize(..., parse_special = true)`;
//! * a Hugging Face `tokenizer.json`, whose ids must equal transformers'.
//!
//! Both run on the `tokenizers` crate. For GGUF files the vocabulary is turned
//! into a `tokenizers` BPE model (SentencePiece merges are derived from the
//! token scores, as transformers' own converter does), and the parts that
//! llama.cpp does differently from transformers live here, in
//! [`gguf`]: the special-token partition of the raw text, the per-fragment
//! space prefix of SentencePiece vocabularies, and the pre-tokenizer regexes
//! chosen by `tokenizer.ggml.pre`.
//!
//! This crate deliberately does not know the GGUF file format: the model crate
//! reads the metadata and hands over a [`GgufVocab`]. Nor does it know chat
//! templates (the engine renders those and passes text here).

mod detok;
mod error;
mod gguf;
mod guard;
mod hf;
mod pre_types;
mod pretok;
#[allow(clippy::unreadable_literal)]
mod unicode_flags;

pub use detok::IncrementalDecoder;
pub use error::TokenizerError;
pub use gguf::{GgufVocab, TokenType};

/// How raw text is split into special tokens and plain fragments.
#[derive(Debug, Clone)]
enum Flavor {
    /// llama.cpp semantics over a GGUF vocabulary.
    Gguf(gguf::GgufFlavor),
    /// transformers semantics: `tokenizer.json` does everything itself.
    Hf,
}

/// A tokenizer with the model's special-token conventions attached.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    flavor: Flavor,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Every id that ends generation (EOS, EOT, `<|im_end|>`, ...).
    eog: Vec<u32>,
    /// Ids never printed when decoding (control tokens).
    hidden: Vec<bool>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
    /// Where the tokenizer came from, for errors.
    origin: std::sync::Arc<str>,
}

impl Tokenizer {
    /// Token ids for `text`. With `add_special` the model's BOS/EOS
    /// conventions apply; special tokens written in the text are always
    /// recognised (llama.cpp's `parse_special = true`).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(text, add_special, true)
    }

    /// [`encode`](Self::encode) with control over whether special-token text
    /// is recognised. llama.cpp's tools differ here: `llama-perplexity`
    /// tokenizes with `parse_special = false`. For Hugging Face tokenizers
    /// added tokens are always recognised, as in transformers.
    pub fn encode_with(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        guard::guard(&self.origin, "encoding", || match &self.flavor {
            Flavor::Gguf(f) => f.encode(
                &self.inner,
                text,
                parse_special,
                self.bos_if(add_special),
                self.eos_if(add_special),
            ),
            Flavor::Hf => {
                let enc = self
                    .inner
                    .encode(text, add_special)
                    .map_err(|e| TokenizerError::Encode(e.to_string()))?;
                Ok(enc.get_ids().to_vec())
            }
        })
    }

    fn bos_if(&self, add_special: bool) -> Option<u32> {
        if add_special && self.add_bos {
            self.bos
        } else {
            None
        }
    }

    fn eos_if(&self, add_special: bool) -> Option<u32> {
        if add_special && self.add_eos {
            self.eos
        } else {
            None
        }
    }

    /// Text for `ids`, leaving out control tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let visible: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| !self.hidden.get(id as usize).copied().unwrap_or(false))
            .collect();
        guard::guard(&self.origin, "decoding", || {
            self.inner
                .decode(&visible, false)
                .map_err(|e| TokenizerError::Decode(e.to_string()))
        })
    }

    /// The bytes one token stands for, control tokens included, as
    /// llama.cpp's `token_to_piece(..., special = true)` gives them for a
    /// GGUF vocabulary (a piece may be part of a UTF-8 character).
    pub fn token_piece(&self, id: u32) -> Result<Vec<u8>, TokenizerError> {
        guard::guard(&self.origin, "decoding", || match &self.flavor {
            Flavor::Gguf(f) => Ok(f.piece(id)),
            Flavor::Hf => self
                .inner
                .decode(&[id], false)
                .map(String::into_bytes)
                .map_err(|e| TokenizerError::Decode(e.to_string())),
        })
    }

    /// The text of one token as stored in the vocabulary (for diagnostics).
    pub fn token_text(&self, id: u32) -> Option<String> {
        guard::guard(&self.origin, "looking up a token", || {
            Ok(self.inner.id_to_token(id))
        })
        .ok()
        .flatten()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    /// Whether the model expects a BOS token at the start of a prompt.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }
    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }
    /// The chat template shipped with the model, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// Text of the BOS / EOS tokens, as chat templates refer to them.
    pub fn bos_text(&self) -> Option<String> {
        self.bos.and_then(|id| self.token_text(id))
    }
    pub fn eos_text(&self) -> Option<String> {
        self.eos.and_then(|id| self.token_text(id))
    }
}
