//! Every weight type `llama-quantize` produces, against llama.cpp, under
//! every kernel family this CPU has.
//!
//! `fixtures/models/tiny-quant` is a one-layer model whose matrices are all
//! 256 wide, so the k- and IQ-quants really land (llama-quantize silently
//! falls back to 32-block types for other widths); `tools/fixtures/
//! make_models.py` quantized it to 19 file types (importance matrix from
//! `llama-imatrix` for the IQ types; Q1_0 and Q2_0, ggml's 1- and 2-bit
//! types, plain) and checked with gguf-py which types landed, and
//! `make_refs.py` recorded llama.cpp's perplexity, logits and greedy output
//! for each (`fixtures/refs/tiny-quant.json`). Q8_0, Q4_0, Q4_K, Q5_K and
//! Q6_K are covered by tandem-tiny's files in `reference.rs`.
//!
//! The kernel family is chosen once per process (`TANDEM_ISA`), so
//! [`every_type_matches_llama_cpp_on_every_family`] runs
//! [`every_type_under_this_process_isa`] again in a child process per
//! family; a family the CPU lacks is reported as skipped. Perplexity runs
//! under the best family only (it is the slow part); logits, greedy output
//! and tensor types under every family. Measured here: perplexity within
//! 0.05% of llama-perplexity and logits within 4e-7 relative, for every
//! file and family (avx512, avx2, scalar); Q1_0 and Q2_0 (perplexity 63.1
//! and 42.7 against 24.1 for the float model, as lossy as TQ1_0's 68.5)
//! need no other bound: within 0.01% and 2e-7.

mod oracle_support;
use oracle_support::{argmax, ids, load, read_f32, rel_max_diff, root};

use std::process::Command;

use serde_json::Value;
use tandem_engine::perplexity::perplexity;
use tandem_gguf::GgufFile;
use tandem_kernels::{detected_isa, Isa};
use tandem_model::Logits;

const MODEL: &str = "tiny-quant";
/// Set in the child processes: run the checks under this process's ISA.
const CHILD: &str = "TANDEM_QUANT_TYPES_CHILD";
/// Set for the first (best) family only: perplexity over the whole eval
/// text costs ~2 s per file; the other families check logits and greedy
/// output (which agree with llama.cpp to ~4e-7 relative on every family).
const WITH_PPL: &str = "TANDEM_QUANT_TYPES_PPL";

fn refs() -> Value {
    let path = root().join("fixtures/refs").join(format!("{MODEL}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

/// Perplexity bound relative to `llama-perplexity` (which keeps an f16 KV
/// cache: the recorded `ppl_recomputed`, with an f32 cache like ours,
/// differs from it by up to ~0.03% here).
const PPL_TOL: f64 = 0.003;
/// Logits bound, relative to the largest logit: as `reference.rs` explains
/// for the quantized types, an ulp of difference in a dot product can move
/// an 8-bit activation rounding of the next matmul; a wrong scale, codebook
/// entry or sign is orders of magnitude larger.
const LOGITS_TOL: f32 = 1e-2;
/// Greedy steps where llama.cpp's own top-1/top-2 gap is below this stop the
/// comparison (a coin toss between implementations).
const GREEDY_MARGIN: f64 = 0.05;

#[test]
fn every_type_under_this_process_isa() {
    if std::env::var_os(CHILD).is_none() {
        eprintln!("every_type_under_this_process_isa: run per kernel family by every_type_matches_llama_cpp_on_every_family");
        return;
    }
    let isa = detected_isa();
    let with_ppl = std::env::var_os(WITH_PPL).is_some();
    let r = refs();
    let text = std::fs::read_to_string(root().join("fixtures/text/eval.txt")).expect("eval text");
    let mut failures = Vec::new();
    let entries = r["gguf"].as_object().expect("gguf entries");
    assert!(entries.len() >= 19, "{} files in the refs", entries.len());
    for t in ["Q1_0", "Q2_0"] {
        assert!(
            entries.contains_key(&format!("{MODEL}-{t}.gguf")),
            "no {t} file in the refs"
        );
    }
    for (key, entry) in entries {
        let path = root()
            .join("fixtures/models")
            .join(MODEL)
            .join("gguf")
            .join(key);
        // The types llama-quantize wrote are the ones tandem reads.
        let gguf = GgufFile::open(&path).expect("gguf");
        for (name, ty) in entry["tensor_types"].as_object().expect("tensor_types") {
            let ours = gguf
                .tensor(name)
                .unwrap_or_else(|| panic!("{key}: no tensor {name}"))
                .ggml_type
                .name();
            assert_eq!(ours, ty.as_str().expect("type"), "{key}: {name}");
        }
        let model = load(&path);
        if with_ppl {
            let ppl = perplexity(&model, &text, 128, |_, _, _| {}).expect("ppl");
            let want = entry["llama_perplexity"]["ppl"].as_f64().expect("ppl");
            let rel = ppl.ppl / want - 1.0;
            eprintln!(
                "[{isa}] {key}: ppl tandem {:.4} llama.cpp {want:.4} ({:+.3}%)",
                ppl.ppl,
                rel * 100.0
            );
            if rel.abs() >= PPL_TOL {
                failures.push(format!("{key}: ppl {} vs llama.cpp {want}", ppl.ppl));
            }
        }

        let prompt = ids(&r["hf"]["prompt_ids"]);
        let mut cache = model.new_cache(prompt.len()).expect("cache");
        let ours = model
            .forward(&prompt, &mut cache, Logits::All)
            .expect("forward");
        let d = rel_max_diff(
            &ours,
            &read_f32(entry["logits_file"].as_str().expect("logits file")),
        );
        eprintln!("[{isa}] {key}: logits vs llama.cpp rel max diff {d:.2e}");
        if d >= LOGITS_TOL {
            failures.push(format!("{key}: logits differ from llama.cpp by {d:.2e}"));
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
                break;
            }
            let ours = argmax(&logits);
            if ours != want_tok {
                failures.push(format!(
                    "{key}: greedy step {step}: {ours} vs llama.cpp {want_tok} (margin {margin:.3})"
                ));
                break;
            }
            logits = model
                .forward(&[ours], &mut cache, Logits::Last)
                .expect("decode");
        }
    }
    assert!(failures.is_empty(), "[{isa}]\n{}", failures.join("\n"));
}

#[test]
fn every_type_matches_llama_cpp_on_every_family() {
    let exe = std::env::current_exe().expect("test binary");
    let mut ran = 0;
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Scalar] {
        if !isa.is_available() {
            eprintln!("{isa}: skipped, this CPU lacks it");
            continue;
        }
        let mut cmd = Command::new(&exe);
        if ran == 0 {
            cmd.env(WITH_PPL, "1");
        }
        let out = cmd
            .args([
                "--exact",
                "every_type_under_this_process_isa",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("TANDEM_ISA", isa.name())
            .output()
            .expect("run the test binary");
        let log = String::from_utf8_lossy(&out.stderr);
        eprintln!("---- {isa}\n{log}");
        assert!(out.status.success(), "{isa}: failed (see above)");
        assert!(
            log.contains(&format!("[{isa}] ")),
            "{isa}: the child did not run under {isa}"
        );
        ran += 1;
    }
    assert!(ran >= 1);
}
