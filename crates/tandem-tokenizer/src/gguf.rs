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

use std::collections::HashMap;

use serde_json::{json, Value};

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

const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Pre-tokenizer regexes (applied in sequence) and `ignore_merges`, as
/// llama.cpp's `llm_tokenizer_bpe` picks them for `tokenizer.ggml.pre`.
fn bpe_pre_tokenizer(pre: Option<&str>) -> Result<(Vec<&'static str>, bool), TokenizerError> {
    Ok(match pre.unwrap_or("default") {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => (vec![LLAMA3_REGEX], true),
        "qwen2" | "deepseek-r1-qwen" => (vec![QWEN2_REGEX], false),
        "gpt-2" | "phi-2" | "mpt" | "olmo" => (vec![GPT2_REGEX], false),
        "smollm" | "refact" | "command-r" => (vec![r"\p{N}", GPT2_REGEX], false),
        "default" => (
            vec![
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_REGEX,
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
            false,
        ),
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "GGUF pre-tokenizer '{other}' (supported: default, gpt-2, llama-bpe, qwen2, smollm)"
            )))
        }
    })
}

/// What llama.cpp does around the BPE model for one GGUF vocabulary.
#[derive(Debug, Clone)]
pub(crate) struct GgufFlavor {
    /// Special tokens, longest text first, as the partition searches them.
    specials: Vec<(String, u32, TokenType)>,
    /// SentencePiece: prefix a space to fragments at the start or after a special token.
    space_prefix: bool,
    spm: bool,
}

enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
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
                    let piece = if self.spm && self.space_prefix && prev_special {
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
                    prev_special = false;
                }
            }
        }
        out.extend(eos);
        Ok(out)
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
            "gpt2" => false,
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "GGUF tokenizer model '{other}' (supported: llama, gpt2)"
                )))
            }
        };
        // llama.cpp's defaults when the metadata is silent.
        let (def_bos, def_eos, def_add_bos) = if spm { (1, 2, true) } else { (11, 11, false) };
        let (bos, eos) = (
            v.bos_id.or((def_bos < n_u32).then_some(def_bos)),
            v.eos_id.or((def_eos < n_u32).then_some(def_eos)),
        );
        let mut vocab: HashMap<String, u32> = HashMap::with_capacity(n);
        for (i, t) in v.tokens.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }

        let (model, normalizer, pre_tokenizer, decoder, add_bos_default) = if spm {
            let scores = v.scores.as_ref().ok_or_else(|| {
                TokenizerError::invalid(
                    "tokenizer.ggml.scores",
                    "missing for a SentencePiece vocabulary",
                )
            })?;
            let merges = spm_merges(&v.tokens, scores, &vocab);
            let unk = v.unk_id.unwrap_or(0).min(n_u32 - 1);
            let model = json!({
                "type": "BPE",
                "dropout": null,
                "unk_token": v.tokens[unk as usize],
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": true,
                "byte_fallback": true,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges,
            });
            let normalizer =
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if v.add_space_prefix.unwrap_or(true) {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                model,
                normalizer,
                Value::Null,
                json!({"type": "Sequence", "decoders": decoders}),
                def_add_bos,
            )
        } else {
            let (regexes, ignore_merges) = bpe_pre_tokenizer(v.pre.as_deref())?;
            let raw = v.merges.as_ref().ok_or_else(|| {
                TokenizerError::invalid("tokenizer.ggml.merges", "missing for a BPE vocabulary")
            })?;
            let mut merges = Vec::with_capacity(raw.len());
            for (i, m) in raw.iter().enumerate() {
                // llama.cpp splits at the first space after the first byte.
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
                merges.push((m[..pos].to_string(), m[pos + 1..].to_string()));
            }
            let model = json!({
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": ignore_merges,
                "vocab": vocab,
                "merges": merges,
            });
            let mut pres: Vec<Value> = regexes
                .iter()
                .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
                .collect();
            pres.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
            let add_bos_default = ignore_merges; // llama.cpp turns add_bos on for llama-bpe
            (
                model,
                Value::Null,
                json!({"type": "Sequence", "pretokenizers": pres}),
                decoder,
                add_bos_default,
            )
        };
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": decoder,
            "model": model,
        });
        let inner: tokenizers::Tokenizer = spec
            .to_string()
            .parse()
            .map_err(|e: tokenizers::Error| TokenizerError::invalid("GGUF vocabulary", e))?;

        let mut specials: Vec<(String, u32, TokenType)> = types
            .iter()
            .enumerate()
            .filter(|(i, t)| t.is_special() && !v.tokens[*i].is_empty())
            .map(|(i, t)| (v.tokens[i].clone(), i as u32, *t))
            .collect();
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));

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

        Ok(Tokenizer {
            inner,
            flavor: Flavor::Gguf(GgufFlavor {
                specials,
                space_prefix: v.add_space_prefix.unwrap_or(spm),
                spm,
            }),
            vocab_size: n,
            bos,
            eos,
            eog,
            hidden,
            add_bos: v.add_bos.unwrap_or(add_bos_default),
            add_eos: v.add_eos.unwrap_or(false),
            chat_template: v.chat_template.clone(),
        })
    }
}

/// BPE merges equivalent to SentencePiece's score-driven merging: every split
/// of a token into two tokens is a merge, ranked by the merged token's score
/// (highest first), ties by the ids of the halves. This is what transformers'
/// `SentencePieceExtractor` does.
fn spm_merges(
    tokens: &[String],
    scores: &[f32],
    vocab: &HashMap<String, u32>,
) -> Vec<(String, String)> {
    let mut merges: Vec<(f32, u32, u32)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if vocab.get(tok) != Some(&(id as u32)) {
            continue; // a duplicate string: llama.cpp keeps the last id
        }
        for (pos, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(pos);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                merges.push((scores[id], li, ri));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges
        .into_iter()
        .map(|(_, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect()
}
