//! Small seeds made from the fixtures, so the fuzzers run with a short
//! `-max_len` and still reach every path.
//!
//! The fixture files are 0.2–1.8 MB: a GGUF header holds the whole
//! vocabulary, a `tokenizer.json` its vocabulary and merges. libFuzzer
//! mutates and copies every input whole, so corpora of such files ran at
//! 400–2,500 executions per second; cut to 4 KiB they ran 10x faster but
//! no longer parsed (coverage fell by a third). These functions keep every
//! structure of a fixture (each metadata key and type, each tensor name,
//! type and row, the tokenizer's normalizer, pre-tokenizer, post-processor
//! and decoder) and drop the bulk (array entries, rows, vocabulary
//! entries), so a seed of a few KiB reaches what the full file reaches.

use serde_json::Value as Json;
use tandem_gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};

/// Array entries kept per metadata array.
const ARRAY_KEEP: usize = 24;
/// Vocabulary entries kept per tokenizer (ids below this).
const VOCAB_KEEP: usize = 300;

fn cut(a: &Array) -> Array {
    fn first<T: Clone>(v: &[T]) -> Vec<T> {
        v[..v.len().min(ARRAY_KEEP)].to_vec()
    }
    match a {
        Array::U8(v) => Array::U8(first(v)),
        Array::I8(v) => Array::I8(first(v)),
        Array::U16(v) => Array::U16(first(v)),
        Array::I16(v) => Array::I16(first(v)),
        Array::U32(v) => Array::U32(first(v)),
        Array::I32(v) => Array::I32(first(v)),
        Array::U64(v) => Array::U64(first(v)),
        Array::I64(v) => Array::I64(first(v)),
        Array::F32(v) => Array::F32(first(v)),
        Array::F64(v) => Array::F64(first(v)),
        Array::Bool(v) => Array::Bool(first(v)),
        Array::String(v) => Array::String(first(v)),
        Array::Array(v) => Array::Array(v[..v.len().min(ARRAY_KEEP)].iter().map(cut).collect()),
    }
}

/// A GGUF file with the same metadata keys (arrays cut to their first
/// entries) and the same tensors, each cut to its first row; `None` if
/// `bytes` is not a GGUF file.
pub fn shrink_gguf(bytes: &[u8]) -> Option<Vec<u8>> {
    let file = GgufFile::from_bytes(bytes.to_vec()).ok()?;
    let mut w = GgufWriter::new();
    w.set_version(file.version()).ok()?;
    for (key, value) in file.metadata().iter() {
        let v = match value {
            Value::Array(a) => Value::Array(cut(a)),
            v => v.clone(),
        };
        w.add_metadata(key, v);
    }
    for t in file.tensors() {
        let row = usize::try_from(t.row_bytes()).ok()?;
        let data = file.tensor_data(t).get(..row)?.to_vec();
        let dims = vec![*t.dims.first()?];
        w.add_tensor(t.name.clone(), dims, t.ggml_type, data).ok()?;
    }
    let mut out = Vec::new();
    w.write(&mut out).ok()?;
    Some(out)
}

/// A GGUF file with one single-block tensor of every ggml type (zero
/// bytes: every block decodes) and a few metadata values of every type.
pub fn every_type_gguf() -> Option<Vec<u8>> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into()));
    w.add_metadata("general.alignment", Value::U32(32));
    w.add_metadata("seed.u8", Value::U8(1));
    w.add_metadata("seed.i8", Value::I8(-1));
    w.add_metadata("seed.u16", Value::U16(2));
    w.add_metadata("seed.i16", Value::I16(-2));
    w.add_metadata("seed.u64", Value::U64(3));
    w.add_metadata("seed.i64", Value::I64(-3));
    w.add_metadata("seed.f64", Value::F64(0.5));
    w.add_metadata("seed.bool", Value::Bool(true));
    w.add_metadata(
        "seed.nested",
        Value::Array(Array::Array(vec![
            Array::I32(vec![1, 2]),
            Array::String(vec!["a".into()]),
        ])),
    );
    for &ty in GgmlType::ALL {
        let n = usize::try_from(ty.block_bytes()).ok()?;
        w.add_tensor(
            format!("t.{}", ty.name()),
            vec![ty.block_len()],
            ty,
            vec![0; n],
        )
        .ok()?;
    }
    let mut out = Vec::new();
    w.write(&mut out).ok()?;
    Some(out)
}

/// A `tokenizer.json` with the same pipeline and only the vocabulary
/// entries below id [`VOCAB_KEEP`] (BPE merges whose pieces survive);
/// `None` if `bytes` is not JSON of a known model type.
pub fn shrink_tokenizer_json(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut json: Json = serde_json::from_slice(bytes).ok()?;
    // Added tokens past the kept ids move to just after them (the
    // post-processor's ids with them), so the vocabulary stays dense.
    let mut moved = std::collections::HashMap::new();
    if let Some(Json::Array(added)) = json.get_mut("added_tokens") {
        for t in added.iter_mut() {
            let Some(id) = t.get("id").and_then(Json::as_u64) else {
                continue;
            };
            if id >= VOCAB_KEEP as u64 {
                let new = (VOCAB_KEEP + moved.len()) as u64;
                moved.insert(id, new);
                t["id"] = Json::from(new);
            }
        }
    }
    if let Some(p) = json.get_mut("post_processor") {
        renumber(p, &moved);
    }
    let model = json.get_mut("model")?;
    let keep = |id: &Json| id.as_u64().is_some_and(|i| i < VOCAB_KEEP as u64);
    if let Some(Json::Object(vocab)) = model.get_mut("vocab") {
        // BPE and WordPiece: a map from piece to id.
        vocab.retain(|_, id| keep(id) || id.as_u64().is_some_and(|i| moved.contains_key(&i)));
        for id in vocab.values_mut() {
            if let Some(&new) = id.as_u64().and_then(|i| moved.get(&i)) {
                *id = Json::from(new);
            }
        }
        let kept: std::collections::HashSet<String> = vocab.keys().cloned().collect();
        if let Some(Json::Array(merges)) = model.get_mut("merges") {
            merges.retain(|m| {
                let (a, b) = match m {
                    Json::String(s) => match s.split_once(' ') {
                        Some((a, b)) => (a.to_owned(), b.to_owned()),
                        None => return false,
                    },
                    Json::Array(p) => match (p.first(), p.get(1)) {
                        (Some(Json::String(a)), Some(Json::String(b))) => (a.clone(), b.clone()),
                        _ => return false,
                    },
                    _ => return false,
                };
                let ab = format!("{a}{b}");
                kept.contains(&a) && kept.contains(&b) && kept.contains(&ab)
            });
        }
    } else if let Some(Json::Array(vocab)) = model.get_mut("vocab") {
        // Unigram: a list of [piece, score], the id its place.
        let mut moved_by_new: Vec<(u64, u64)> = moved.iter().map(|(&o, &n)| (n, o)).collect();
        moved_by_new.sort_unstable();
        let tail: Vec<Json> = moved_by_new
            .iter()
            .filter_map(|&(_, old)| {
                usize::try_from(old)
                    .ok()
                    .and_then(|o| vocab.get(o))
                    .cloned()
            })
            .collect();
        vocab.truncate(VOCAB_KEEP);
        vocab.extend(tail);
        if let Some(unk) = model.get("unk_id").and_then(Json::as_u64) {
            if unk >= VOCAB_KEEP as u64 {
                model["unk_id"] = Json::from(0);
            }
        }
    } else {
        return None;
    }
    serde_json::to_vec(&json).ok()
}

/// Every id inside an `"ids"` array under `v` (the post-processor's
/// special tokens) mapped through `moved`.
fn renumber(v: &mut Json, moved: &std::collections::HashMap<u64, u64>) {
    match v {
        Json::Object(map) => {
            for (k, x) in map.iter_mut() {
                match (k.as_str(), x) {
                    ("ids", Json::Array(ids)) => {
                        for id in ids.iter_mut() {
                            if let Some(&new) = id.as_u64().and_then(|i| moved.get(&i)) {
                                *id = Json::from(new);
                            }
                        }
                    }
                    (_, x) => renumber(x, moved),
                }
            }
        }
        Json::Array(items) => items.iter_mut().for_each(|x| renumber(x, moved)),
        _ => {}
    }
}
