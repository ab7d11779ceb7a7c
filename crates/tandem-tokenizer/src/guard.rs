//! The boundary with the `tokenizers` crate, which panics on some hostile
//! files instead of returning an error: a `tokenizer.json` whose decoder is
//! cut off, a `Precompiled` normalizer with a malformed charsmap, a
//! `TemplateProcessing` post-processor naming a special token it does not
//! define (which loads, then panics on the first encode), a `Strip`
//! decoder that cuts the end of tokens shorter than its cut, a single-input
//! template that reads the second input (both found by the
//! `tokenizer_json` fuzzer).
//!
//! Two layers: [`validate_json`] / [`validate_loaded`] reject what
//! `tokenizers` is known to panic on, before it runs, with an error that
//! names the file and the part; and every call into `tokenizers` runs under
//! [`guard`], which turns any other panic into an error naming the file.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::Value;

use crate::TokenizerError;

/// Runs `f`, turning a panic into [`TokenizerError::Panicked`].
pub(crate) fn guard<T>(
    origin: &str,
    what: &str,
    f: impl FnOnce() -> Result<T, TokenizerError>,
) -> Result<T, TokenizerError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(TokenizerError::Panicked {
                origin: origin.to_string(),
                what: what.to_string(),
                message: message.replace('\n', " "),
            })
        }
    }
}

fn bad(origin: &str, part: &str, detail: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::invalid(format!("{origin} ({part})"), detail)
}

/// Checks of the raw `tokenizer.json` before `tokenizers` parses it.
pub(crate) fn validate_json(origin: &str, v: &Value) -> Result<(), TokenizerError> {
    if !v.is_object() {
        return Err(bad(origin, "top level", "not a JSON object"));
    }
    if let Some(n) = v.get("normalizer") {
        validate_normalizer(origin, n)?;
    }
    if let Some(d) = v.get("decoder") {
        validate_decoder(origin, d)?;
    }
    Ok(())
}

/// `tokenizers`' `Strip` decoder cuts `stop` characters off the end of
/// every token without checking the token is that long (an index past
/// the end, or a cut past its start: a panic while decoding). Tokenizers
/// in the wild strip only a leading space (`start` 1, `stop` 0), so a
/// `stop` is refused here, on any object under the decoder whatever its
/// `type` says: `tokenizers` reads decoders untagged, and took
/// `{"start": 1, "stop": 2, "type": "contenStrip"}` for a `Strip` (the
/// fuzzer's second input of this class).
fn validate_decoder(origin: &str, d: &Value) -> Result<(), TokenizerError> {
    match d {
        Value::Object(map) => {
            if let Some(stop) = map.get("stop").and_then(Value::as_u64).filter(|&s| s > 0) {
                return Err(bad(
                    origin,
                    "Strip decoder",
                    format!("stop {stop}: cutting the end of a token is not supported"),
                ));
            }
            map.values().try_for_each(|v| validate_decoder(origin, v))
        }
        Value::Array(items) => items.iter().try_for_each(|v| validate_decoder(origin, v)),
        _ => Ok(()),
    }
}

fn validate_normalizer(origin: &str, n: &Value) -> Result<(), TokenizerError> {
    match n.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            for inner in n
                .get("normalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                validate_normalizer(origin, inner)?;
            }
        }
        Some("Precompiled") => {
            let b64 = n
                .get("precompiled_charsmap")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad(
                        origin,
                        "Precompiled normalizer",
                        "no precompiled_charsmap string",
                    )
                })?;
            let bytes = base64::decode(b64).map_err(|e| {
                bad(
                    origin,
                    "Precompiled normalizer",
                    format!("charsmap is not base64: {e}"),
                )
            })?;
            check_charsmap(&bytes).map_err(|e| {
                bad(
                    origin,
                    "Precompiled normalizer",
                    format!("malformed charsmap: {e}"),
                )
            })?;
        }
        _ => {}
    }
    Ok(())
}

/// A SentencePiece precompiled charsmap as `spm_precompiled` reads it:
/// `u32` trie size in bytes, the trie (`u32` units of a double array), then
/// NUL-separated UTF-8 replacements. Every path a lookup can take through
/// the trie must stay inside it, and every replacement offset must start a
/// character of the replacement text.
fn check_charsmap(bytes: &[u8]) -> Result<(), String> {
    let head: [u8; 4] = bytes
        .get(..4)
        .and_then(|h| h.try_into().ok())
        .ok_or("shorter than its 4-byte header")?;
    let trie_bytes = (u32::from_le_bytes(head) / 4) as usize * 4;
    let trie_end = 4usize
        .checked_add(trie_bytes)
        .filter(|&e| e <= bytes.len())
        .ok_or("trie size beyond the data")?;
    let units: Vec<usize> = bytes[4..trie_end]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let normalized =
        std::str::from_utf8(&bytes[trie_end..]).map_err(|_| "replacement text is not UTF-8")?;
    let offset = |u: usize| (u >> 10) << ((u & (1 << 9)) >> 6);
    let label = |u: usize| u & ((1 << 31) | 0xFF);
    let has_leaf = |u: usize| (u >> 8) & 1 == 1;
    let value = |u: usize| u & ((1 << 31) - 1);
    let root = *units.first().ok_or("empty trie")?;
    let mut seen = vec![false; units.len()];
    let mut stack = vec![offset(root)];
    while let Some(node) = stack.pop() {
        if node < seen.len() {
            if seen[node] {
                continue;
            }
            seen[node] = true;
        }
        for c in 1..=255usize {
            let p = node ^ c;
            let unit = *units.get(p).ok_or("a lookup leaves the trie")?;
            if label(unit) != c {
                continue;
            }
            let next = p ^ offset(unit);
            if has_leaf(unit) {
                let leaf = *units.get(next).ok_or("a leaf outside the trie")?;
                let start = value(leaf);
                if !normalized.is_char_boundary(start) {
                    return Err("a replacement offset outside the text".into());
                }
            }
            if next >= seen.len() || !seen[next] {
                stack.push(next);
            }
        }
    }
    Ok(())
}

/// Checks of a loaded tokenizer whose flaws only show when encoding.
pub(crate) fn validate_loaded(
    origin: &str,
    t: &tokenizers::Tokenizer,
) -> Result<(), TokenizerError> {
    if let Some(pp) = t.get_post_processor() {
        let v = serde_json::to_value(pp).map_err(|e| bad(origin, "post_processor", e))?;
        validate_processor(origin, &v, t.get_vocab_size(true))?;
    }
    Ok(())
}

fn validate_processor(origin: &str, p: &Value, vocab: usize) -> Result<(), TokenizerError> {
    match p.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            for inner in p
                .get("processors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                validate_processor(origin, inner, vocab)?;
            }
        }
        Some("TemplateProcessing") => {
            let part = "TemplateProcessing post-processor";
            let specials = p.get("special_tokens").and_then(Value::as_object);
            for key in ["single", "pair"] {
                for piece in p.get(key).and_then(Value::as_array).into_iter().flatten() {
                    // `tokenizers` indexes the inputs by a piece's
                    // sequence: `B` in the single template reads past the
                    // one input there is (a panic on the first encode;
                    // found by the `tokenizer_json` fuzzer).
                    let seq = piece
                        .get("Sequence")
                        .and_then(|s| s.get("id"))
                        .and_then(Value::as_str);
                    if key == "single" && seq.is_some_and(|id| id != "A") {
                        return Err(bad(
                            origin,
                            part,
                            "the single template reads sequence B, which a single input does not have",
                        ));
                    }
                    let Some(name) = piece
                        .get("SpecialToken")
                        .and_then(|s| s.get("id"))
                        .and_then(Value::as_str)
                    else {
                        continue;
                    };
                    if !specials.is_some_and(|m| m.contains_key(name)) {
                        return Err(bad(
                            origin,
                            part,
                            format!("the {key} template names special token {name:?}, which it does not define"),
                        ));
                    }
                }
            }
            for (name, tok) in specials.into_iter().flatten() {
                let ids = tok.get("ids").and_then(Value::as_array);
                let toks = tok.get("tokens").and_then(Value::as_array);
                let (Some(ids), Some(toks)) = (ids, toks) else {
                    return Err(bad(
                        origin,
                        part,
                        format!("special token {name:?} lacks ids or tokens"),
                    ));
                };
                if ids.len() != toks.len() {
                    return Err(bad(
                        origin,
                        part,
                        format!(
                            "special token {name:?} has {} ids for {} tokens",
                            ids.len(),
                            toks.len()
                        ),
                    ));
                }
                for id in ids {
                    match id.as_u64() {
                        Some(i) if (i as usize) < vocab => {}
                        _ => {
                            return Err(bad(
                                origin,
                                part,
                                format!("special token {name:?} has id {id}, outside the vocabulary of {vocab}"),
                            ))
                        }
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_turns_a_panic_into_an_error() {
        let r: Result<(), _> = guard("x.json", "encoding", || panic!("boom"));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("x.json") && e.contains("boom"), "{e}");
    }

    #[test]
    fn charsmap_checks() {
        assert!(check_charsmap(&[]).is_err());
        assert!(check_charsmap(&[8, 0, 0, 0, 1]).is_err()); // trie beyond data
        assert!(check_charsmap(&[0, 0, 0, 0]).is_err()); // empty trie
                                                         // Root whose offset sends every lookup outside a one-unit trie.
        let mut b = vec![4, 0, 0, 0];
        b.extend_from_slice(&(1u32 << 10).to_le_bytes());
        assert!(check_charsmap(&b).is_err());
    }
}
