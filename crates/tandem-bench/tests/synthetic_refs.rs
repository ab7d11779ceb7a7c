//! Synthetic models against llama.cpp: `tools/synthetic_refs/make_refs.py`
//! ran llama.cpp on files `--synthetic` writes (random weights in a real
//! architecture's layout, fixed seed) and committed its logits; this test
//! writes the same file again and compares tandem's logits. It pins
//! architectures whose trained fixtures are still to come, and the writer's
//! layout (llama.cpp reads what tandem writes the way tandem does).

use std::path::PathBuf;

use serde_json::Value;
use tandem_bench::synthetic::{self, Quant, Shape};
use tandem_model::{KvFormat, KvOptions, LoadOptions, Logits, Model, ModelFiles, NumaMode};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn synthetic_moe_and_mla_logits_match_llama_cpp() {
    let dir = tempfile::tempdir().expect("tmp");
    // Bounds, relative to the largest logit: F16 weights take f16
    // activations, where the ulps by which tandem's online softmax differs
    // from llama.cpp's two-pass one move the logits by ~3e-4; on Q8_0 an
    // ulp can flip an 8-bit activation rounding, which moves every later
    // position by ~1e-2 (measured 1.2e-2; position 0, whose softmax is
    // exact in both, agrees to 1e-7). Routing or layout mistakes show as
    // differences of order one.
    //
    // Position 0 agrees to 1e-7 everywhere but on the MLA file in F16,
    // where it is 6.3e-5: not yet explained (at position 0 the attention
    // is the cached latent itself, so neither the absorbed query nor the
    // score scale can enter; the Q8_0 file, same graph, agrees to 1e-7).
    for (case, bound, bound0) in [
        ("tiny-qwen3moe-F16", 1e-3f32, 1e-5f32),
        ("tiny-qwen3moe-Q8_0", 2e-2, 1e-5),
        // MLA with YaRN, sigmoid grouped routing, a shared expert.
        ("tiny-deepseek3-F16", 1e-3, 1e-4),
        ("tiny-deepseek3-Q8_0", 2e-2, 1e-5),
        // Sinks, alternating windows, biased experts (softmax after
        // top-k, clamped SwiGLU), YaRN; MXFP4 experts with Q8_0 elsewhere.
        // Position 0 of the F16 file differs by 3.1e-4 (absolute), like
        // the MLA F16 file's 6.3e-5 not yet explained; the MXFP4 file,
        // same graph, agrees to 1e-5.
        ("tiny-gpt-oss-F16", 1e-3, 1e-3),
        ("tiny-gpt-oss-MXFP4", 2e-2, 1e-5),
    ] {
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(root().join(format!("fixtures/synthetic/{case}.json")))
                .expect("meta"),
        )
        .expect("json");
        let shape = Shape::named(meta["shape"].as_str().expect("shape"), None).expect("shape");
        let quant = Quant::parse(meta["quant"].as_str().expect("quant")).expect("quant");
        let seed = meta["seed"].as_u64().expect("seed");
        let ids: Vec<u32> = meta["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let path = dir.path().join(format!("{case}.gguf"));
        synthetic::write_model(&shape, quant, &path, seed, &mut |_, _| {}).expect("write");
        let bytes = std::fs::read(root().join(format!("fixtures/synthetic/{case}.logits.bin")))
            .expect("logits");
        let want: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for numa in [NumaMode::Off, NumaMode::Virtual(2)] {
            let opts = LoadOptions {
                numa,
                threads: Some(2),
                // llama.cpp runs MLA absorbed for the split k_b/v_b layout;
                // the bounds above assume the same rounding graph. The
                // expanded prefill rounds elsewhere (latents into f16 and
                // Q8_0 for the decompression): on this random-weight Q8_0
                // file that flips a near tie at one position (position 3:
                // 0.249, the others 0.013-0.020 as absorbed), while both
                // forms stay as far from llama.cpp's F16 logits (1.659 and
                // 1.658; llama.cpp's own Q8_0: 1.661). Expanded is checked
                // against absorbed in tandem-model's tests/mla_prefill.rs and
                // against transformers and llama.cpp on the trained fixtures
                // (`TANDEM_MLA_PREFILL=expanded`, tandem-engine's reference
                // tests).
                mla_prefill: tandem_model::MlaPrefill::Absorbed,
                kv: KvOptions {
                    format: KvFormat::F32,
                    ..KvOptions::default()
                },
                ..LoadOptions::default()
            };
            let m = Model::load_with(ModelFiles::open(&path).expect("open"), &opts).expect("load");
            let mut cache = m.new_cache(64).expect("cache");
            let got = m.forward(&ids, &mut cache, Logits::All).expect("forward");
            assert_eq!(got.len(), want.len());
            let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
            let d = got
                .iter()
                .zip(&want)
                .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                d / scale < bound,
                "{case} {numa:?}: max |Δ| {d} (scale {scale})"
            );
            // Position 0 (no mixing across positions) agrees to rounding.
            let v = want.len() / ids.len();
            let d0 = got[..v]
                .iter()
                .zip(&want[..v])
                .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                d0 / scale < bound0,
                "{case} {numa:?}: position 0 max |Δ| {d0} (scale {scale})"
            );
        }
    }
}
