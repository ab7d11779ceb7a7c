//! What the oracle tests (`reference.rs`, `quant_types.rs`) share: the
//! fixture root, recorded logits and token ids, loading a model with an
//! f32 KV cache (as the references were recorded), and the comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use tandem_model::{KvFormat, KvOptions, LoadOptions, Model, ModelFiles};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn read_f32(file: &str) -> Vec<f32> {
    let bytes = std::fs::read(root().join("fixtures/refs").join(file)).expect("logits file");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Loads with an f32 KV cache: the references (transformers, and
/// llama.cpp with `type_k`/`type_v` F32 in `tools/fixtures/make_refs.py`)
/// keep keys and values in f32, and
/// rounding them to f16 alone moves logits by up to ~1e-2 on these tiny
/// models, more than the bounds below.
pub fn load(path: &Path) -> Model {
    let files = ModelFiles::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opts = LoadOptions {
        kv: KvOptions {
            format: KvFormat::F32,
            ..KvOptions::default()
        },
        ..LoadOptions::default()
    };
    Model::load_with(files, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// max |a - b| / max |b|.
pub fn rel_max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}
