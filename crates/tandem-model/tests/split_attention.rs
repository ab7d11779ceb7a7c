//! Flash-decoding: a decode step whose context is split into parts
//! attended by different workers and merged gives the logits of the
//! unsplit step, for one sequence and for a batch of sequences of
//! different lengths (some with fewer pages than parts), on one node and
//! on two, and with page sizes that do not divide the context.

use std::path::PathBuf;

use tandem_model::{
    KvCache, KvFormat, KvOptions, LoadOptions, Logits, Model, ModelFiles, NumaMode,
};

fn model(file: &str, numa: NumaMode, splits: Option<usize>, page_tokens: usize) -> Model {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(file);
    let files = ModelFiles::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opts = LoadOptions {
        numa,
        threads: Some(2),
        pin: false,
        kv: KvOptions {
            format: KvFormat::F32,
            page_tokens,
        },
        attention_splits: splits,
        ..LoadOptions::default()
    };
    Model::load_with(files, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tokens(m: &Model, n: usize, seed: u32) -> Vec<u32> {
    let v = m.config.vocab_size as u32;
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).wrapping_mul(40_503) % v)
        .collect()
}

/// max |a − b| / max |b|.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Logits of 4 decode steps of sequences prefilled with `lens` tokens.
fn decode_logits(m: &Model, lens: &[usize]) -> Vec<Vec<f32>> {
    let mut caches: Vec<KvCache> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut c = m.new_cache(n + 8).expect("cache");
            m.forward(&tokens(m, n, i as u32 + 1), &mut c, Logits::None)
                .expect("prefill");
            c
        })
        .collect();
    let mut toks: Vec<u32> = (0..lens.len() as u32).map(|i| 7 + i).collect();
    let mut out = Vec::new();
    let mut logits = Vec::new();
    for step in 0..4u32 {
        m.decode_batch(&toks, &mut caches, &mut logits)
            .expect("decode");
        out.push(logits.clone());
        toks.iter_mut().for_each(|t| *t = (*t + 13 * step + 1) % 97);
    }
    out
}

#[test]
fn split_decode_equals_unsplit_decode() {
    for file in [
        "tiny-llama3/gguf/tiny-llama3-F32.gguf",
        "tiny-qwen2/gguf/tiny-qwen2-Q8_0.gguf",
    ] {
        for numa in [NumaMode::Off, NumaMode::Virtual(2)] {
            for (page, lens) in [(16, vec![203]), (5, vec![203, 9, 77]), (32, vec![40, 300])] {
                let base = decode_logits(&model(file, numa, Some(1), page), &lens);
                for splits in [2, 3, 7] {
                    let split = decode_logits(&model(file, numa, Some(splits), page), &lens);
                    for (step, (a, b)) in split.iter().zip(&base).enumerate() {
                        let d = rel(a, b);
                        assert!(
                            d < 1e-5,
                            "{file} {numa:?} page {page} lens {lens:?} splits {splits} step {step}: {d:e}"
                        );
                    }
                }
            }
        }
    }
}
