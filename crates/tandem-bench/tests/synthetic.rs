//! Synthetic models: the random blocks dequantize to sensible weights, and
//! every quant type of the test shapes is a model tandem loads, runs and
//! tokenizes with.

use std::path::PathBuf;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tandem_bench::synthetic::{self, fill, Quant, Shape, WEIGHT_STD};
use tandem_gguf::{GgmlType, GgufFile};
use tandem_kernels::{dequantize_row, WeightFormat};
use tandem_model::{Logits, Model, ModelFiles};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn random_blocks_have_the_intended_std() {
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ3_S,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::Q1_0,
        GgmlType::Q2_0,
    ];
    let mut rng = SmallRng::seed_from_u64(7);
    for ty in types {
        let n = 256 * 64;
        let mut raw = vec![0u8; ty.bytes_for(n, n).unwrap() as usize];
        fill(ty, &mut rng, &mut raw).unwrap();
        let fmt = WeightFormat::from_ggml_type(ty.id()).unwrap();
        let mut w = vec![0f32; n as usize];
        dequantize_row(fmt, &raw, &mut w).unwrap();
        assert!(w.iter().all(|x| x.is_finite()), "{ty}");
        let mean = w.iter().sum::<f32>() / w.len() as f32;
        let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
        // Q4_0 codes (q − 8) average −0.5: a bias of 0.1 std, as in ggml;
        // TQ2_0's and Q2_0's codes are −1..=2 (mean 0.5: 0.45 std).
        let bias = if matches!(ty, GgmlType::TQ2_0 | GgmlType::Q2_0) {
            0.5
        } else {
            0.15
        };
        assert!(mean.abs() < bias * WEIGHT_STD, "{ty}: mean {mean}");
        // MXFP4's scale is a power of two: within a factor √2.
        let tol = if ty == GgmlType::MXFP4 { 0.42 } else { 0.1 };
        assert!((std / WEIGHT_STD - 1.0).abs() < tol, "{ty}: std {std}");
    }
}

#[test]
fn use_more_bits_matches_llama_cpp() {
    // 28 layers (Llama 3.2 3B): layers 0..3, 24..28 and every third between.
    let picked: Vec<usize> = (0..28)
        .filter(|&i| synthetic::use_more_bits(i, 28))
        .collect();
    assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
}

#[test]
fn mixtures_follow_llama_quantize() {
    let s = Shape::named("llama3.2-3b", None).unwrap();
    let plan = synthetic::plan(&s, Quant::Q4_K_M);
    let ty = |n: &str| plan.iter().find(|t| t.name == n).unwrap().ty;
    assert_eq!(ty("token_embd.weight"), GgmlType::Q6_K); // tied: the output
    assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q6_K);
    assert_eq!(ty("blk.3.attn_v.weight"), GgmlType::Q4_K);
    assert_eq!(ty("blk.3.ffn_down.weight"), GgmlType::Q4_K);
    assert_eq!(ty("blk.5.ffn_down.weight"), GgmlType::Q6_K);
    assert_eq!(ty("blk.5.ffn_up.weight"), GgmlType::Q4_K);
    assert!(plan.iter().all(|t| t.name != "output.weight"));
    // Real Llama-3.2-3B-Instruct-Q4_K_M.gguf holds 2.02 GB of tensors.
    let gb = synthetic::data_bytes(&plan) as f64 / 1e9;
    assert!((1.9..2.1).contains(&gb), "{gb} GB");
    let s8 = Shape::named("llama3-8b", None).unwrap();
    let p8 = synthetic::plan(&s8, Quant::Q4_K_M);
    assert!(p8
        .iter()
        .any(|t| t.name == "output.weight" && t.ty == GgmlType::Q6_K));
    assert!(p8
        .iter()
        .any(|t| t.name == "token_embd.weight" && t.ty == GgmlType::Q4_K));
    let s405 = Shape::named("llama3.1-405b", None).unwrap();
    assert_eq!(s405.n_layers, 2);
    assert!(Shape::named("gpt5", None).is_err());
    assert!(Quant::parse("q4_k_m").is_ok() && Quant::parse("Q3_K_XL").is_err());
}

#[test]
fn named_mixtures_put_the_experts_low() {
    let s = Shape::named("tiny-qwen3moe", None).unwrap();
    let ty = |q: &str, n: &str| {
        let plan = synthetic::plan(&s, Quant::parse(q).unwrap());
        plan.iter().find(|t| t.name == n).unwrap().ty
    };
    for (q, gate, down) in [
        ("UD-Q2_K_XL", GgmlType::Q2_K, GgmlType::Q3_K),
        ("ud-iq2_xxs", GgmlType::IQ2_XXS, GgmlType::IQ2_XXS),
        ("UD-IQ1_S", GgmlType::IQ1_S, GgmlType::IQ1_M),
    ] {
        assert_eq!(ty(q, "blk.1.ffn_gate_exps.weight"), gate, "{q}");
        assert_eq!(ty(q, "blk.1.ffn_up_exps.weight"), gate, "{q}");
        assert_eq!(ty(q, "blk.1.ffn_down_exps.weight"), down, "{q}");
        assert_eq!(ty(q, "blk.0.attn_q.weight"), GgmlType::Q4_K, "{q}");
        assert_eq!(ty(q, "blk.0.attn_v.weight"), GgmlType::Q6_K, "{q}");
        assert_eq!(ty(q, "output.weight"), GgmlType::Q6_K, "{q}");
        assert_eq!(ty(q, "blk.0.ffn_gate_inp.weight"), GgmlType::F32, "{q}");
    }
    // MXFP4 is llama-quantize's MXFP4_MOE: experts MXFP4, the rest Q8_0.
    assert_eq!(ty("MXFP4", "blk.0.ffn_up_exps.weight"), GgmlType::MXFP4);
    assert_eq!(ty("MXFP4", "blk.0.attn_k.weight"), GgmlType::Q8_0);
    assert_eq!(ty("MXFP4", "output.weight"), GgmlType::Q8_0);
    // single types: every layer matrix in the type, output as llama-quantize
    assert_eq!(ty("IQ2_XXS", "blk.1.attn_v.weight"), GgmlType::IQ2_XXS);
    assert_eq!(ty("IQ2_XXS", "output.weight"), GgmlType::Q5_K);
    assert_eq!(ty("IQ2_XXS", "token_embd.weight"), GgmlType::Q2_K);
    assert_eq!(ty("Q2_K", "output.weight"), GgmlType::Q6_K);
    // ggml's Q1_0 / Q2_0: output Q6_K; an untied embedding Q4_K for Q2_0 (as
    // for TQ*), its own type for Q1_0 (llama_tensor_get_type)
    assert_eq!(ty("Q1_0", "blk.1.ffn_down_exps.weight"), GgmlType::Q1_0);
    assert_eq!(ty("Q1_0", "blk.0.attn_v.weight"), GgmlType::Q1_0);
    assert_eq!(ty("Q1_0", "output.weight"), GgmlType::Q6_K);
    assert_eq!(ty("Q1_0", "token_embd.weight"), GgmlType::Q1_0);
    assert_eq!(ty("q2_0", "blk.1.ffn_up_exps.weight"), GgmlType::Q2_0);
    assert_eq!(ty("Q2_0", "output.weight"), GgmlType::Q6_K);
    assert_eq!(ty("Q2_0", "token_embd.weight"), GgmlType::Q4_K);
}

#[test]
fn every_quant_of_the_test_shapes_loads_and_runs() {
    for shape in ["tiny", "tiny-qwen2", "tiny-qwen3moe", "tiny-gpt-oss"] {
        let s = Shape::named(shape, None).unwrap();
        for q in Quant::ALL {
            let path = tmp(&format!("{shape}-{}.gguf", q.name()));
            let mut last = (0, 0);
            synthetic::write_model(&s, q, &path, 42, &mut |d, t| last = (d, t)).unwrap();
            assert_eq!(last.0, last.1);
            let what = format!("{shape} {}", q.name());
            let f = GgufFile::open(&path).unwrap();
            assert_eq!(
                f.metadata().get_u32("general.file_type").unwrap(),
                Some(q.file_type())
            );
            let model = Model::load(ModelFiles::open(&path).unwrap()).unwrap();
            assert_eq!(model.config.vocab_size, 512, "{what}");
            let tok = &model.tokenizer;
            let ids = tok.encode("hello world", false).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), "hello world", "{what}");
            assert!(ids.len() <= 3, "merges apply: {ids:?}");
            if shape == "tiny" {
                // What llama.cpp's llama-tokenize printed for this file.
                assert_eq!(tok.encode("hello world", true).unwrap(), [507, 283, 286]);
            }
            let mut cache = model.new_cache(16).unwrap();
            let mut prompt = tok.encode("hello world", true).unwrap();
            prompt.push(7);
            let logits = model.forward(&prompt, &mut cache, Logits::Last).unwrap();
            assert_eq!(logits.len(), 512);
            assert!(logits.iter().all(|x| x.is_finite()), "{what}");
            let spread = logits.iter().fold(0f32, |a, &b| a.max(b.abs()));
            assert!(spread > 0.0, "{what}: logits all zero");
            let mut caches = vec![model.new_cache(4).unwrap(), model.new_cache(4).unwrap()];
            let mut out = vec![0f32; 2 * 512];
            model.decode_batch(&[1, 2], &mut caches, &mut out).unwrap();
            assert!(out.iter().all(|x| x.is_finite()));
            std::fs::remove_file(&path).unwrap();
        }
    }
}
