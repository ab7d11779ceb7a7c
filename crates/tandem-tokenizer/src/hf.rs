//! Hugging Face layout: `tokenizer.json` plus the conventions that
//! transformers keeps beside it (`tokenizer_config.json`,
//! `generation_config.json`, `config.json`).

use std::path::Path;

use serde_json::Value;

use crate::{guard, Flavor, Tokenizer, TokenizerError};

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
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| TokenizerError::Io {
            path: path.clone(),
            source: e,
        })?;
        // Parse as plain JSON first: `tokenizers` panics on some malformed
        // documents (a decoder cut off), serde_json does not.
        let json: Value =
            serde_json::from_str(&text).map_err(|e| TokenizerError::invalid(origin.clone(), e))?;
        guard::validate_json(&origin, &json)?;
        let inner: tokenizers::Tokenizer = guard::guard(&origin, "loading", || {
            serde_json::from_value(json).map_err(|e| TokenizerError::invalid(origin.clone(), e))
        })?;
        guard::validate_loaded(&origin, &inner)?;
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
        let probe = |add: bool| {
            guard::guard(&origin, "encoding a probe text", || {
                inner
                    .encode("a", add)
                    .map_err(|e| TokenizerError::Encode(e.to_string()))
            })
        };
        // A panic is the file's fault and fatal; an ordinary error only
        // leaves the BOS/EOS conventions unknown, as before.
        let mut probe_special = None;
        for add in [true, false] {
            match probe(add) {
                Err(e @ TokenizerError::Panicked { .. }) => return Err(e),
                Ok(enc) if add => probe_special = Some(enc),
                _ => {}
            }
        }
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
        let first_last =
            probe_special.map(|e| (e.get_ids().first().copied(), e.get_ids().last().copied()));
        let add_bos = bos.is_some() && first_last.is_some_and(|(f, _)| f == bos);
        let add_eos = eos.is_some() && first_last.is_some_and(|(_, l)| l == eos);
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
            origin: origin.into(),
        })
    }
}
