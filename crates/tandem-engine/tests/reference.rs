//! tandem against software nobody here wrote.
//!
//! `fixtures/refs/<model>.json` holds what transformers and llama.cpp
//! computed for the fixture models (`tools/fixtures/make_refs.py`). These
//! tests load the same files with tandem and compare:
//!
//! - token ids: transformers' for HF directories, llama.cpp's for GGUF files;
//! - transformers' float32 logits, within 1e-4 relative;
//! - perplexity: llama.cpp's `llama-perplexity` for every GGUF type, within
//!   0.3%; transformers' (same procedure) for HF directories;
//! - greedy continuations: identical to llama.cpp's up to the first step
//!   where llama.cpp's own top-2 margin is too small to call.

mod oracle_support;
use oracle_support::{argmax, ids, load, read_f32, rel_max_diff, root};

use std::path::PathBuf;

use serde_json::Value;
use tandem_engine::perplexity::perplexity;
use tandem_model::{Logits, ModelFiles};
use tandem_tokenizer::Tokenizer;

const MODELS: &[&str] = &[
    "tandem-tiny",
    "tiny-llama3",
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-mixtral",
    "tiny-qwen3moe",
    "tiny-gemma3",
    "tiny-glm4moe",
    "tiny-deepseek3",
    "tiny-gpt-oss",
];

fn refs(name: &str) -> Value {
    let path = root().join("fixtures/refs").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

fn eval_text() -> String {
    std::fs::read_to_string(root().join("fixtures/text/eval.txt")).expect("eval text")
}

fn hf_dir(name: &str) -> PathBuf {
    root().join("fixtures/models").join(name).join("hf")
}

fn gguf_path(name: &str, key: &str) -> PathBuf {
    root()
        .join("fixtures/models")
        .join(name)
        .join("gguf")
        .join(key)
}

#[test]
fn hf_tokenizers_match_transformers() {
    for name in MODELS {
        let r = refs(name);
        let tok = Tokenizer::from_hf_dir(&hf_dir(name)).expect("HF tokenizer");
        for case in r["tokenize"]["cases"].as_array().expect("cases") {
            let text = case["text"].as_str().expect("text");
            let ours = tok.encode(text, true).expect("encode");
            assert_eq!(
                ours,
                ids(&case["hf_ids"]),
                "{name}: HF tokenization of {text:?}"
            );
        }
    }
}

#[test]
fn gguf_tokenizers_match_llama_cpp() {
    for name in MODELS {
        let r = refs(name);
        let key = r["tokenize"]["llamacpp_recorded_from"]
            .as_str()
            .expect("key");
        let files = ModelFiles::open(&gguf_path(name, key)).expect("gguf");
        for case in r["tokenize"]["cases"].as_array().expect("cases") {
            let text = case["text"].as_str().expect("text");
            let ours = files.tokenizer.encode(text, true).expect("encode");
            assert_eq!(
                ours,
                ids(&case["llamacpp_ids"]),
                "{name}: llama.cpp tokenization of {text:?}"
            );
        }
        let eval = files
            .tokenizer
            .encode_with(&eval_text(), true, false)
            .expect("encode");
        assert_eq!(
            eval.len() as u64,
            r["eval_tokenization"]["llamacpp_tokens"]
                .as_u64()
                .expect("count"),
            "{name}: token count of the eval text"
        );
    }
}

#[test]
fn hf_logits_match_transformers() {
    for name in MODELS {
        let r = refs(name);
        let dir = hf_dir(name);
        if !dir.join("model.safetensors").is_file() {
            continue; // tandem-tiny ships GGUF only
        }
        let model = load(&dir);
        let prompt = ids(&r["hf"]["prompt_ids"]);
        let mut cache = model.new_cache(prompt.len()).expect("cache");
        let ours = model
            .forward(&prompt, &mut cache, Logits::All)
            .expect("forward");
        let theirs = read_f32(r["hf"]["logits_file"].as_str().expect("file"));
        let d = rel_max_diff(&ours, &theirs);
        eprintln!("{name}: HF logits rel max diff {d:.2e}");
        assert!(
            d < 1e-4,
            "{name}: logits differ from transformers by {d:.2e} (relative)"
        );

        let ppl = perplexity(&model, &eval_text(), 128, |_, _, _| {}).expect("ppl");
        let want = r["hf"]["hf_ppl"]["ppl"].as_f64().expect("ppl");
        eprintln!(
            "{name}: HF ppl tandem {:.4} transformers {want:.4}",
            ppl.ppl
        );
        assert!(
            (ppl.ppl / want - 1.0).abs() < 1e-4,
            "{name}: ppl {} vs transformers {want}",
            ppl.ppl
        );
    }
}

#[test]
fn gguf_perplexity_and_greedy_match_llama_cpp() {
    let text = eval_text();
    let mut failures: Vec<String> = Vec::new();
    for name in MODELS {
        let r = refs(name);
        for (key, entry) in r["gguf"].as_object().expect("gguf entries") {
            let model = load(&gguf_path(name, key));
            let ppl = perplexity(&model, &text, 128, |_, _, _| {}).expect("ppl");
            let want = entry["llama_perplexity"]["ppl"].as_f64().expect("ppl");
            let rel = ppl.ppl / want - 1.0;
            eprintln!(
                "{name} {key}: ppl tandem {:.4} llama.cpp {want:.4} ({:+.3}%)",
                ppl.ppl,
                rel * 100.0
            );
            if rel.abs() >= 0.003 {
                failures.push(format!("{name} {key}: ppl {} vs llama.cpp {want}", ppl.ppl));
            }

            if let Some(file) = entry["logits_file"].as_str() {
                // llama.cpp's logits for the same prompt (float32 KV cache there).
                let prompt = ids(&r["hf"]["prompt_ids"]);
                let mut cache = model.new_cache(prompt.len()).expect("cache");
                let ours = model
                    .forward(&prompt, &mut cache, Logits::All)
                    .expect("forward");
                let d = rel_max_diff(&ours, &read_f32(file));
                let tol = logits_tolerance(key);
                eprintln!(
                    "{name} {key}: logits vs llama.cpp rel max diff {d:.2e} (tolerance {tol:.0e})"
                );
                if d >= tol {
                    failures.push(format!(
                        "{name} {key}: logits differ from llama.cpp by {d:.2e}"
                    ));
                }
            }

            let g = &entry["greedy"];
            let prompt = ids(&g["prompt_ids"]);
            let want_toks = ids(&g["tokens"]);
            let margins: Vec<f64> = g["margins"]
                .as_array()
                .expect("margins")
                .iter()
                .map(|m| m.as_f64().unwrap_or(0.0))
                .collect();
            let mut cache = model
                .new_cache(prompt.len() + want_toks.len() + 1)
                .expect("cache");
            let mut logits = model
                .forward(&prompt, &mut cache, Logits::Last)
                .expect("prefill");
            for (step, (&want_tok, &margin)) in want_toks.iter().zip(&margins).enumerate() {
                if margin < GREEDY_MARGIN {
                    break; // llama.cpp itself could have gone either way
                }
                let ours = argmax(&logits);
                if ours != want_tok {
                    failures.push(format!(
                        "{name} {key}: greedy step {step}: {ours} vs llama.cpp {want_tok} (margin {margin:.3})"
                    ));
                    break;
                }
                logits = model
                    .forward(&[ours], &mut cache, Logits::Last)
                    .expect("decode");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Below this top-1/top-2 logit gap in llama.cpp's own run, a greedy step is
/// a coin toss between implementations and the comparison stops.
const GREEDY_MARGIN: f64 = 0.05;

/// How close our logits must be to llama.cpp's for the same file.
///
/// F32 agrees to ~3e-7. Quantized types: with the AVX2 kernels (ggml's own
/// float order) most files agree to ~3e-7 (Q8_0 bit for bit). But two
/// correct implementations of a quantized dot product that sum in different
/// orders differ by ulps, and on these tiny models an ulp can move an
/// activation across a rounding boundary of the next layer's 8-bit
/// quantization, which then shows in the logits. Measured: tandem-tiny Q8_0
/// 1.9e-3 even with the AVX2 kernels (llama.cpp itself sums in another order
/// there, e.g. its sgemm/repack paths for prompt batches), tiny-qwen2 Q8_0
/// 5.2e-3 with the AVX-512 kernels (0 with AVX2), tandem-tiny Q4_K_M 1.6e-3
/// with AVX-512. So the bound for quantized types is 1e-2: a real error (a
/// wrong scale, a misplaced head) is orders of magnitude larger, and
/// perplexity (0.3%) and greedy output hold the numbers tight. For the
/// 16-bit types llama.cpp's logits on the Llama-layout fixtures differ from
/// ours by up to 2.8e-4 (F16) and 1.3e-3 (BF16), the size of rounding
/// activations to 16 bits once more or less somewhere.
fn logits_tolerance(key: &str) -> f32 {
    if key.contains("-F32") {
        1e-4
    } else if key.contains("-F16") || key.contains("-BF16") {
        2e-3
    } else {
        1e-2
    }
}
