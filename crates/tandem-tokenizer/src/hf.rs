//! Hugging Face layout: `tokenizer.json` plus the conventions that
//! transformers keeps beside it (`tokenizer_config.json`,
//! `generation_config.json`, `config.json`).

use std::path::Path;

use serde_json::Value;

use crate::{Flavor, Tokenizer, TokenizerError};

fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| TokenizerError::invalid(path.display().to_string(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TokenizerError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` as tokenizer_config.json writes special tokens.
fn token_content(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// One id or a list of ids (`eos_token_id` in configs).
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .into_iter()
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect(),
        _ => vec![],
    }
}

/// The chat template: a string, or a list of named templates (take "default").
fn chat_template(cfg: &Value) -> Option<String> {
    match cfg.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

impl Tokenizer {
    /// The tokenizer of a Hugging Face model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(TokenizerError::invalid(
                dir.display().to_string(),
                "no tokenizer.json in the model directory",
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| TokenizerError::invalid(path.display().to_string(), e))?;
        let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let gen_cfg = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let model_cfg = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);

        let lookup = |v: Option<&Value>| token_content(v).and_then(|t| inner.token_to_id(t));
        let bos = lookup(tok_cfg.get("bos_token"))
            .or_else(|| ids(gen_cfg.get("bos_token_id")).first().copied())
            .or_else(|| ids(model_cfg.get("bos_token_id")).first().copied());
        let mut eog = ids(gen_cfg.get("eos_token_id"));
        let eos = lookup(tok_cfg.get("eos_token"))
            .or_else(|| eog.first().copied())
            .or_else(|| ids(model_cfg.get("eos_token_id")).first().copied());
        eog.extend(eos);
        eog.extend(ids(model_cfg.get("eos_token_id")));
        eog.sort_unstable();
        eog.dedup();

        let vocab_size = inner.get_vocab_size(true);
        let mut hidden = vec![false; vocab_size];
        for (id, added) in inner.get_added_tokens_decoder() {
            if added.special {
                if let Some(h) = hidden.get_mut(id as usize) {
                    *h = true;
                }
            }
        }
        // Whether encoding with special tokens puts BOS first is decided by
        // tokenizer.json's post-processor; ask it rather than guess.
        let add_bos = match (bos, inner.encode("a", true)) {
            (Some(b), Ok(enc)) => enc.get_ids().first() == Some(&b),
            _ => false,
        };
        let add_eos = match (eos, inner.encode("a", true)) {
            (Some(e), Ok(enc)) => enc.get_ids().last() == Some(&e),
            _ => false,
        };
        Ok(Tokenizer {
            inner,
            flavor: Flavor::Hf,
            vocab_size,
            bos,
            eos,
            eog,
            hidden,
            add_bos,
            add_eos,
            chat_template: chat_template(&tok_cfg),
        })
    }
}
