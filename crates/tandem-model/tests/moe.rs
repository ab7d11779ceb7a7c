//! The mixture-of-experts block against the dense FFN it must reduce to.
//!
//! A Mixtral-style file (GGUF architecture `llama` with experts, as
//! llama.cpp's converter writes Mixtral) is built from the tiny-llama3
//! fixture (F32, so no activation rounding hides a mistake) by stacking
//! copies of each layer's dense FFN as experts, with a random router:
//! whatever the router picks, renormalised weights sum to one, so the MoE
//! output is the dense output (up to rounding), for prefill (tokens
//! grouped by expert) and decode (one token), unsharded and over two
//! virtual nodes. A shared expert equal to the dense FFN adds one more
//! copy: the result equals the dense model with `ffn_down` doubled. The routing arithmetic itself is tested in `moe.rs`'s unit
//! tests and against transformers and llama.cpp by the reference tests.

use std::path::{Path, PathBuf};

use tandem_gguf::{GgmlType, GgufFile, GgufWriter, Value};
use tandem_model::{LoadOptions, Logits, Model, ModelFiles, NumaMode};

const EXPERTS: usize = 4;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/tiny-llama3/gguf/tiny-llama3-F32.gguf")
}

/// Doubles every F32 value of `bytes` (exact).
fn doubled_f32(bytes: &[u8]) -> Vec<u8> {
    bytes
        .chunks_exact(4)
        .flat_map(|b| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * 2.0).to_le_bytes())
        .collect()
}

/// Rewrites the fixture: `moe` turns each FFN into `EXPERTS` copies (and a
/// shared copy if `shared`), else `double_down` doubles `ffn_down`.
fn rewrite(src: &Path, dst: &Path, moe: bool, shared: bool, double_down: bool) {
    rewrite_with(src, dst, moe, shared, double_down, &[]);
}

/// [`rewrite`], then metadata `overrides` on top.
fn rewrite_with(
    src: &Path,
    dst: &Path,
    moe: bool,
    shared: bool,
    double_down: bool,
    overrides: &[(&str, Value)],
) {
    let f = GgufFile::open(src).expect("fixture");
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata().iter() {
        w.add_metadata(k, v.clone());
    }
    if moe {
        // Mixtral's convention: the expert width is feed_forward_length.
        w.add_metadata("llama.expert_count", Value::U32(EXPERTS as u32));
        w.add_metadata("llama.expert_used_count", Value::U32(2));
        if shared {
            w.add_metadata("llama.expert_shared_count", Value::U32(1));
        }
    }
    for (k, v) in overrides {
        w.add_metadata(*k, v.clone());
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for t in f.tensors() {
        let data = f.tensor_data(t).to_vec();
        let stem = t.name.rsplit_once('.').map(|(s, _)| s).unwrap_or("");
        let ffn_part = ["ffn_gate", "ffn_up", "ffn_down"]
            .iter()
            .find(|p| stem.ends_with(*p));
        match (moe, ffn_part) {
            (true, Some(part)) => {
                let layer = stem.trim_end_matches(part);
                let mut dims = t.dims.clone();
                dims.push(EXPERTS as u64);
                let stacked = data.repeat(EXPERTS);
                w.add_tensor(
                    format!("{layer}{part}_exps.weight"),
                    dims,
                    t.ggml_type,
                    stacked,
                )
                .expect("experts");
                if shared {
                    w.add_tensor(
                        format!("{layer}{part}_shexp.weight"),
                        t.dims.clone(),
                        t.ggml_type,
                        data,
                    )
                    .expect("shared");
                }
                if *part == "ffn_gate" {
                    let hidden = t.dims[0];
                    let router: Vec<u8> = (0..hidden * EXPERTS as u64)
                        .flat_map(|_| {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_le_bytes()
                        })
                        .collect();
                    w.add_tensor(
                        format!("{layer}ffn_gate_inp.weight"),
                        vec![hidden, EXPERTS as u64],
                        GgmlType::F32,
                        router,
                    )
                    .expect("router");
                }
            }
            (false, Some(&"ffn_down")) if double_down => {
                assert_eq!(t.ggml_type, GgmlType::F32);
                w.add_tensor(
                    t.name.clone(),
                    t.dims.clone(),
                    t.ggml_type,
                    doubled_f32(&data),
                )
                .expect("down");
            }
            _ => w
                .add_tensor(t.name.clone(), t.dims.clone(), t.ggml_type, data)
                .expect("tensor"),
        }
    }
    std::fs::write(dst, w.to_bytes()).expect("write");
}

fn load(path: &Path, numa: NumaMode) -> Model {
    let opts = LoadOptions {
        numa,
        threads: Some(2),
        ..LoadOptions::default()
    };
    Model::load_with(ModelFiles::open(path).expect("open"), &opts).expect("load")
}

/// Logits of a 12-token prefill, then 4 decode steps.
fn run(m: &Model) -> Vec<f32> {
    let mut cache = m.new_cache(64).expect("cache");
    let prompt: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 500).collect();
    let mut out = m
        .forward(&prompt, &mut cache, Logits::All)
        .expect("prefill");
    let mut tok = 7u32;
    for _ in 0..4 {
        let l = m.forward(&[tok], &mut cache, Logits::Last).expect("decode");
        tok = (tok * 31 + 11) % 500;
        out.extend(l);
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn experts_that_copy_the_dense_ffn_give_the_dense_logits() {
    let dir = tempfile::tempdir().expect("tmp");
    let moe = dir.path().join("moe.gguf");
    rewrite(&fixture(), &moe, true, false, false);
    let dense = run(&load(&fixture(), NumaMode::Off));
    for numa in [NumaMode::Off, NumaMode::Virtual(2)] {
        let m = load(&moe, numa);
        let d = max_diff(&dense, &run(&m));
        assert!(d < 1e-4, "{numa:?}: max |Δ| {d}");
    }
    // Decode reads the router and two of four experts per layer.
    let (dm, mm) = (load(&fixture(), NumaMode::Off), load(&moe, NumaMode::Off));
    assert!(mm.weight_bytes_per_token() > dm.weight_bytes_per_token());
    assert!(mm.weight_bytes_per_token() < dm.weight_bytes_per_token() * 2);
}

#[test]
fn a_shared_expert_adds_to_the_routed_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let (moe, doubled) = (dir.path().join("moe.gguf"), dir.path().join("x2.gguf"));
    rewrite(&fixture(), &moe, true, true, false);
    rewrite(&fixture(), &doubled, false, false, true);
    let want = run(&load(&doubled, NumaMode::Off));
    for numa in [NumaMode::Off, NumaMode::Virtual(2)] {
        let d = max_diff(&want, &run(&load(&moe, numa)));
        assert!(d < 1e-4, "{numa:?}: max |Δ| {d}");
    }
}

#[test]
fn expert_counts_and_shapes_that_disagree_are_refused_naming_the_key_or_tensor() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases: [(&str, Value, &str); 3] = [
        // More experts used than exist.
        (
            "llama.expert_used_count",
            Value::U32(9),
            "expert_used_count",
        ),
        // The stacked tensors hold 4 experts, the file says 8.
        ("llama.expert_count", Value::U32(8), "ffn_gate_exps"),
        // A shared expert the file has no tensors for.
        ("llama.expert_shared_count", Value::U32(1), "ffn_gate_shexp"),
    ];
    for (i, (key, value, named)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.gguf"));
        rewrite_with(&fixture(), &path, true, false, false, &[(key, value)]);
        let err = ModelFiles::open(&path)
            .and_then(|f| Model::load_with(f, &LoadOptions::default()))
            .err()
            .unwrap_or_else(|| panic!("{key}: loaded"));
        let msg = err.to_string();
        assert!(msg.contains(named), "{key}: {msg}");
    }
}

/// The routed-expert byte counter (what `tandem bench` counts for the
/// experts of a decode step): one token reads its two experts per layer,
/// each once; a batch whose tokens pick the same experts reads each once.
#[test]
fn routed_expert_bytes_count_each_selected_expert_once_per_pass() {
    let dir = tempfile::tempdir().expect("tmp");
    let moe = dir.path().join("moe.gguf");
    rewrite(&fixture(), &moe, true, false, false);
    // Every expert is a copy of its layer's dense FFN (F32, unrepacked).
    let f = GgufFile::open(&fixture()).expect("fixture");
    let ffn: u64 = f
        .tensors()
        .iter()
        .filter(|t| {
            ["ffn_gate", "ffn_up", "ffn_down"]
                .iter()
                .any(|s| t.name.contains(s))
        })
        .map(|t| t.n_bytes)
        .sum();
    let m = load(&moe, NumaMode::Off);
    let mut cache = m.new_cache(64).expect("cache");
    let b0 = m.routed_expert_bytes();
    m.forward(&[7], &mut cache, Logits::Last).expect("decode");
    assert_eq!(
        m.routed_expert_bytes() - b0,
        2 * ffn,
        "top 2 of every layer"
    );
    // The same token twice in one pass: the same two experts, read once.
    let b1 = m.routed_expert_bytes();
    m.forward(&[9, 9], &mut cache, Logits::Last).expect("pair");
    let pair = m.routed_expert_bytes() - b1;
    assert!(pair >= 2 * ffn && pair <= 4 * ffn, "{pair} for {ffn}");
}
