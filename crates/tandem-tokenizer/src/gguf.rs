//! llama.cpp's tokenizer semantics over a GGUF vocabulary.
//!
//! The vocabulary becomes a `tokenizers` BPE model; what llama.cpp does on top
//! of plain BPE is reproduced here, following `src/llama-vocab.cpp`:
//!
//! 1. **Special-token partition** (`tokenizer_st_partition`): tokens of type
//!    control, user-defined or unknown are searched for in the raw text,
//!    longest first, and split out as whole tokens.
//! 2. **SentencePiece (`llama`)**: each remaining fragment gets a leading
//!    space if it starts the text or follows a special token (when
//!    `add_space_prefix`), spaces become `▁`, and the fragment is merged by
//!    token score with byte fallback. Merges are derived from the scores.
//! 3. **Byte-level BPE (`gpt2`)**: each fragment is split by the regexes that
//!    `tokenizer.ggml.pre` names, byte-mapped and merged by rank.

use std::sync::Arc;

use ahash::{AHashMap, AHashSet};
use serde_json::{json, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::{DecoderWrapper, Model, NormalizerWrapper};

use crate::pre_types;
use crate::pretok::Splitter;
use crate::{Flavor, Tokenizer, TokenizerError};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    pub fn from_id(id: i32) -> TokenType {
        match id {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }

    /// Matched in raw text by the special-token partition.
    fn is_special(self) -> bool {
        matches!(
            self,
            TokenType::Control | TokenType::UserDefined | TokenType::Unknown
        )
    }
}

/// The `tokenizer.ggml.*` metadata of a GGUF file, read by the model crate.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `llama` (SentencePiece) or `gpt2` (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer of a `gpt2` vocabulary.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

/// What llama.cpp does around the BPE model for one GGUF vocabulary.
#[derive(Debug, Clone)]
pub(crate) struct GgufFlavor {
    /// Special tokens, longest text first, as the partition searches them.
    specials: Vec<(String, u32, TokenType)>,
    kind: Kind,
    /// Token texts and types by id (duplicated texts keep every id here).
    texts: Arc<Vec<String>>,
    types: Arc<Vec<TokenType>>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// SentencePiece: prefix a space to fragments at the start or after a
    /// special token, spaces become `▁`, merges by score.
    Spm { space_prefix: bool },
    /// Byte-level BPE behind llama.cpp's pre-tokenizer.
    Bpe {
        splitter: Arc<Splitter>,
        byte_encode: bool,
        escape_whitespaces: bool,
    },
}

enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// GPT-2's byte-to-unicode map (`bytes_to_unicode`): printable bytes stand
/// for themselves, the others for 256 + their rank.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('\u{FFFD}')
}

/// The inverse of [`byte_char`].
fn char_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 && byte_char(cp as u8) == c {
        return Some(cp as u8);
    }
    let rank = cp.checked_sub(256)?;
    (0..=255u8)
        .filter(|&b| byte_char(b) as u32 >= 256)
        .nth(rank as usize)
}

impl GgufFlavor {
    /// llama.cpp's `tokenizer_st_partition`.
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut frags = if text.is_empty() {
            vec![]
        } else {
            vec![Fragment::Text(text)]
        };
        for (special, id, ty) in &self.specials {
            // Without parse_special only user-defined tokens are split out.
            if !parse_special && *ty != TokenType::UserDefined {
                continue;
            }
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(special.as_str())))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(mut t) => {
                        while let Some(pos) = t.find(special.as_str()) {
                            if pos > 0 {
                                next.push(Fragment::Text(&t[..pos]));
                            }
                            next.push(Fragment::Token(*id));
                            t = &t[pos + special.len()..];
                        }
                        if !t.is_empty() {
                            next.push(Fragment::Text(t));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }

    pub(crate) fn encode(
        &self,
        inner: &tokenizers::Tokenizer,
        text: &str,
        parse_special: bool,
        bos: Option<u32>,
        eos: Option<u32>,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::new();
        out.extend(bos);
        let mut prev_special = true;
        let mut buf = String::new();
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    match &self.kind {
                        Kind::Spm { space_prefix } => {
                            let piece = if *space_prefix && prev_special {
                                buf.clear();
                                buf.push(' ');
                                buf.push_str(t);
                                buf.as_str()
                            } else {
                                t
                            };
                            let enc = inner
                                .encode(piece, false)
                                .map_err(|e| TokenizerError::Encode(e.to_string()))?;
                            out.extend_from_slice(enc.get_ids());
                        }
                        Kind::Bpe {
                            splitter,
                            byte_encode,
                            escape_whitespaces,
                        } => {
                            let escaped;
                            let t = if *escape_whitespaces {
                                escaped = t.replace(' ', "\u{2581}");
                                escaped.as_str()
                            } else {
                                t
                            };
                            let mut word = String::new();
                            for w in splitter.split(t) {
                                let w = if *byte_encode {
                                    word.clear();
                                    word.extend(w.bytes().map(byte_char));
                                    word.as_str()
                                } else {
                                    w
                                };
                                // Gemma 4: a run of newlines that is a token is that token.
                                if *escape_whitespaces && w.bytes().all(|b| b == b'\n') {
                                    if let Some(id) = inner.get_model().token_to_id(w) {
                                        out.push(id);
                                        continue;
                                    }
                                }
                                let toks = inner
                                    .get_model()
                                    .tokenize(w)
                                    .map_err(|e| TokenizerError::Encode(e.to_string()))?;
                                out.extend(toks.iter().map(|t| t.id));
                            }
                        }
                    }
                    prev_special = false;
                }
            }
        }
        out.extend(eos);
        Ok(out)
    }

    /// llama.cpp's `token_to_piece(..., special = true)`: the bytes a token
    /// stands for (control and user-defined tokens as their text).
    pub(crate) fn piece(&self, id: u32) -> Vec<u8> {
        let (Some(text), Some(ty)) = (self.texts.get(id as usize), self.types.get(id as usize))
        else {
            return Vec::new();
        };
        match ty {
            TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
                text.as_bytes().to_vec()
            }
            TokenType::Normal => match &self.kind {
                Kind::Spm { .. }
                | Kind::Bpe {
                    escape_whitespaces: true,
                    ..
                } => text.replace('\u{2581}', " ").into_bytes(),
                Kind::Bpe { .. } => {
                    let mut out = Vec::with_capacity(text.len());
                    for c in text.chars() {
                        match char_byte(c) {
                            Some(b) => out.push(b),
                            None => {
                                // llama_decode_text's marker for a codepoint outside the map.
                                let mut utf8 = [0u8; 4];
                                out.extend_from_slice(b"[UNK_BYTE_0x");
                                for b in c.encode_utf8(&mut utf8).bytes() {
                                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                                }
                                out.extend_from_slice(text.as_bytes());
                                out.push(b']');
                            }
                        }
                    }
                    out
                }
            },
            TokenType::Byte => text
                .get(3..5)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .map(|b| vec![b])
                .unwrap_or_default(),
            TokenType::Undefined | TokenType::Unused => Vec::new(),
        }
    }
}

/// Tokens that end a turn in common chat formats, when the vocabulary has them.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "</s>",
];

impl Tokenizer {
    /// A tokenizer that tokenizes as llama.cpp does for this GGUF vocabulary.
    pub fn from_gguf_vocab(v: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
        let n = v.tokens.len();
        if n == 0 {
            return Err(TokenizerError::invalid(
                "tokenizer.ggml.tokens",
                "empty vocabulary",
            ));
        }
        let n_u32 = u32::try_from(n)
            .map_err(|_| TokenizerError::invalid("tokenizer.ggml.tokens", "too many tokens"))?;
        let check_len = |what: &str, len: usize| {
            if len == n {
                Ok(())
            } else {
                Err(TokenizerError::invalid(
                    what,
                    format!("{len} entries for {n} tokens"),
                ))
            }
        };
        if let Some(s) = &v.scores {
            check_len("tokenizer.ggml.scores", s.len())?;
        }
        if let Some(t) = &v.token_types {
            check_len("tokenizer.ggml.token_type", t.len())?;
        }
        for (what, id) in [
            ("bos_token_id", v.bos_id),
            ("eos_token_id", v.eos_id),
            ("eot_token_id", v.eot_id),
            ("eom_token_id", v.eom_id),
            ("unknown_token_id", v.unk_id),
        ] {
            if let Some(id) = id {
                if id >= n_u32 {
                    return Err(TokenizerError::invalid(
                        format!("tokenizer.ggml.{what}"),
                        format!("id {id} outside the vocabulary of {n} tokens"),
                    ));
                }
            }
        }
        let types: Vec<TokenType> = match &v.token_types {
            Some(t) => t.iter().map(|&x| TokenType::from_id(x)).collect(),
            None => vec![TokenType::Normal; n],
        };

        let spm = match v.model.as_str() {
            "llama" => true,
            "gpt2" | "gemma4" => false,
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "GGUF tokenizer model '{other}' (supported: llama, gpt2, gemma4)"
                )))
            }
        };
        let gemma4 = v.model == "gemma4";
        let pre = if spm {
            None
        } else {
            // llama.cpp: the gemma4 model implies its pre-tokenizer.
            let name = if gemma4 {
                "gemma4"
            } else {
                v.pre.as_deref().unwrap_or("default")
            };
            Some(pre_types::pre_type(name).ok_or_else(|| {
                TokenizerError::Unsupported(format!("GGUF pre-tokenizer '{name}'"))
            })?)
        };
        // llama.cpp's defaults when the metadata is silent.
        let (def_bos, def_eos) = match pre {
            None => (Some(1), Some(2)),
            Some(_) if gemma4 => (None, None),
            Some(p) if p.no_bos => (None, Some(11)),
            Some(_) => (Some(11), Some(11)),
        };
        let in_vocab = |id: Option<u32>| id.filter(|&i| i < n_u32);
        let (bos, eos) = (
            v.bos_id.or(in_vocab(def_bos)),
            v.eos_id.or(in_vocab(def_eos)),
        );
        let mut vocab: AHashMap<String, u32> = AHashMap::with_capacity(n);
        for (i, t) in v.tokens.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }
        let hidden: Vec<bool> = types.iter().map(|t| *t == TokenType::Control).collect();
        let mut eog: Vec<u32> = [eos, v.eot_id, v.eom_id].into_iter().flatten().collect();
        for text in EOG_TEXTS {
            if let Some(&id) = vocab.get(*text) {
                if types[id as usize] == TokenType::Control || Some(id) == eos {
                    eog.push(id);
                }
            }
        }
        eog.sort_unstable();
        eog.dedup();
        let build_err = |e: tokenizers::Error| TokenizerError::invalid("GGUF vocabulary", e);

        let (inner, kind, add_bos_default) = if let Some(pre) = pre {
            let merges = match &v.merges {
                Some(raw) => bpe_merges(raw, &vocab)?,
                // llama.cpp accepts Kimi-K2 files without merges.
                None if pre.name == "KIMI_K2" => Vec::new(),
                None => {
                    return Err(TokenizerError::invalid(
                        "tokenizer.ggml.merges",
                        "missing for a BPE vocabulary",
                    ))
                }
            };
            let model = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .ignore_merges(pre.ignore_merges)
                .byte_fallback(!pre.byte_encode)
                .build()
                .map_err(build_err)?;
            let mut inner = tokenizers::Tokenizer::new(model);
            let decoder: DecoderWrapper = if pre.byte_encode {
                json_part(
                    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}),
                )?
            } else {
                json_part(json!({"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteFallback"},
                    {"type": "Fuse"},
                ]}))?
            };
            inner.with_decoder(Some(decoder));
            let splitter = Splitter::new(pre.regexes)?;
            let kind = Kind::Bpe {
                splitter: Arc::new(splitter),
                byte_encode: pre.byte_encode,
                escape_whitespaces: pre.escape_whitespaces,
            };
            (inner, kind, pre.add_bos)
        } else {
            let scores = v.scores.as_ref().ok_or_else(|| {
                TokenizerError::invalid(
                    "tokenizer.ggml.scores",
                    "missing for a SentencePiece vocabulary",
                )
            })?;
            let merges = spm_merges(&v.tokens, scores, &vocab);
            let unk = v.unk_id.unwrap_or(0).min(n_u32 - 1);
            let unk_text = v.tokens.get(unk as usize).cloned().unwrap_or_default();
            let model = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .unk_token(unk_text)
                .fuse_unk(true)
                .byte_fallback(true)
                .build()
                .map_err(build_err)?;
            let mut inner = tokenizers::Tokenizer::new(model);
            let normalizer: NormalizerWrapper = json_part(
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}),
            )?;
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if v.add_space_prefix.unwrap_or(true) {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            let decoder: DecoderWrapper =
                json_part(json!({"type": "Sequence", "decoders": decoders}))?;
            inner.with_normalizer(Some(normalizer));
            inner.with_decoder(Some(decoder));
            let kind = Kind::Spm {
                space_prefix: v.add_space_prefix.unwrap_or(true),
            };
            (inner, kind, true)
        };

        let mut specials: Vec<(String, u32, TokenType)> = types
            .iter()
            .enumerate()
            .filter(|(i, t)| t.is_special() && !v.tokens[*i].is_empty())
            .map(|(i, t)| (v.tokens[i].clone(), i as u32, *t))
            .collect();
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));

        Ok(Tokenizer {
            inner,
            flavor: Flavor::Gguf(GgufFlavor {
                specials,
                kind,
                texts: Arc::new(v.tokens.clone()),
                types: Arc::new(types),
            }),
            vocab_size: n,
            bos,
            eos,
            eog,
            hidden,
            // llama.cpp forces BOS on for Gemma 4 (its PR #21500).
            add_bos: v.add_bos.unwrap_or(add_bos_default) || gemma4,
            add_eos: v.add_eos.unwrap_or(false),
            chat_template: v.chat_template.clone(),
            origin: "GGUF vocabulary".into(),
        })
    }
}

/// A normalizer or decoder from its `tokenizer.json` form.
fn json_part<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, TokenizerError> {
    serde_json::from_value(v).map_err(|e| TokenizerError::invalid("GGUF tokenizer component", e))
}

/// `tokenizer.ggml.merges` as llama.cpp reads them: split at the first
/// space after the first byte; the first rank of a repeated pair wins. A
/// merge whose halves or result are not tokens can never yield a token
/// and is left out.
fn bpe_merges(
    raw: &[String],
    vocab: &AHashMap<String, u32>,
) -> Result<Vec<(String, String)>, TokenizerError> {
    let mut seen = AHashSet::with_capacity(raw.len());
    let mut merges = Vec::with_capacity(raw.len());
    let mut joined = String::new();
    for (i, m) in raw.iter().enumerate() {
        let pos = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(p, _)| p)
            .ok_or_else(|| {
                TokenizerError::invalid(
                    "tokenizer.ggml.merges",
                    format!("entry {i} has no separating space"),
                )
            })?;
        let (a, b) = (&m[..pos], &m[pos + 1..]);
        joined.clear();
        joined.push_str(a);
        joined.push_str(b);
        let (Some(&ia), Some(&ib)) = (vocab.get(a), vocab.get(b)) else {
            continue;
        };
        if !vocab.contains_key(&joined) || !seen.insert((ia, ib)) {
            continue;
        }
        merges.push((a.to_string(), b.to_string()));
    }
    Ok(merges)
}

/// BPE merges equivalent to SentencePiece's score-driven merging: every split
/// of a token into two tokens is a merge, ranked by the merged token's score
/// (highest first), ties by the ids of the halves. This is what transformers'
/// `SentencePieceExtractor` does.
///
/// Only the split points where both halves have the length of some token
/// are looked up, so a very long token costs its length times the number of
/// distinct token lengths, not its length squared.
fn spm_merges(
    tokens: &[String],
    scores: &[f32],
    vocab: &AHashMap<String, u32>,
) -> Vec<(String, String)> {
    let lengths: AHashSet<usize> = vocab.keys().map(String::len).collect();
    let mut sorted_lengths: Vec<usize> = lengths.iter().copied().collect();
    sorted_lengths.sort_unstable();
    let mut merges: Vec<(f32, u32, u32)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if vocab.get(tok) != Some(&(id as u32)) {
            continue; // a duplicate string: llama.cpp keeps the last id
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for &pos in sorted_lengths.iter().take_while(|&&l| l < tok.len()) {
            if pos == 0 || !lengths.contains(&(tok.len() - pos)) || !tok.is_char_boundary(pos) {
                continue;
            }
            let (l, r) = tok.split_at(pos);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                merges.push((score, li, ri));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges
        .into_iter()
        .map(|(_, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect()
}
