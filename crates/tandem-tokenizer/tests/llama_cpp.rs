//! Token for token against llama.cpp.
//!
//! * llama.cpp's own tokenizer tests (`models/ggml-vocab-*.gguf` with their
//!   `.inp`/`.out` cases, copied to fixtures/vocab): every case, with
//!   `add_special = false, parse_special = false` as `test-tokenizer-0` runs
//!   them. The small vocabularies are committed; the others are read from
//!   the llama.cpp tree of tools/fixtures/setup.sh when present, and are
//!   reported as skipped otherwise.
//! * Every pre-tokenizer on one small BPE vocabulary (fixtures/vocab/
//!   synth-bpe.gguf) with ids recorded from `llama-tokenize` by
//!   tools/tokenizer/make_vocab_fixtures.py, both with the model's BOS and
//!   special-token parsing and without.

mod common;

use serde_json::Value;
use tandem_tokenizer::Tokenizer;

/// llama.cpp's test vocabularies tandem tokenizes (bert-bge is WordPiece:
/// not supported).
const LLAMA_VOCABS: &[&str] = &[
    "llama-spm",
    "phi-3",
    "deepseek-coder",
    "deepseek-llm",
    "falcon",
    "starcoder",
    "qwen35",
    "qwen2",
    "llama-bpe",
    "gpt-2",
    "mpt",
    "refact",
    "command-r",
    "gemma-4",
];

fn diff(text: &str, want: &[u32], got: &[u32]) -> String {
    format!("{text:?}\n  llama.cpp: {want:?}\n  tandem:    {got:?}")
}

#[test]
fn llama_cpp_vocab_test_cases() {
    let dir = common::root().join("fixtures/vocab");
    let (mut passed, mut failed, mut skipped) = (0, Vec::new(), Vec::new());
    for name in LLAMA_VOCABS {
        let Some(gguf) = common::find_vocab(&format!("ggml-vocab-{name}.gguf")) else {
            skipped.push(*name);
            continue;
        };
        let inp = dir.join(format!("ggml-vocab-{name}.gguf.inp"));
        let out = dir.join(format!("ggml-vocab-{name}.gguf.out"));
        let tok = Tokenizer::from_gguf_vocab(&common::vocab(&gguf))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for (text, want) in common::llama_cases(&inp, &out) {
            let got = tok.encode_with(&text, false, false).unwrap();
            if got == want {
                passed += 1;
            } else {
                failed.push(format!("{name}: {}", diff(&text, &want, &got)));
            }
        }
    }
    if !skipped.is_empty() {
        eprintln!(
            "skipped llama.cpp vocabularies {skipped:?}: their .gguf is not committed and no \
             llama.cpp tree was found (run tools/fixtures/setup.sh)"
        );
    }
    eprintln!(
        "llama.cpp vocabulary cases: {passed} equal, {} different",
        failed.len()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(passed > 0);
}

#[test]
fn every_pre_tokenizer_on_the_synthetic_vocab() {
    let dir = common::root().join("fixtures/vocab");
    let base = common::vocab(&dir.join("synth-bpe.gguf"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("synth-bpe.") && n.ends_with(".json")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 4, "no recorded cases in {}", dir.display());
    let (mut passed, mut failed) = (0, Vec::new());
    for f in files {
        let rec: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let pre = rec["pre"].as_str().unwrap();
        let mut v = base.clone();
        v.pre = Some(pre.to_string());
        let tok = Tokenizer::from_gguf_vocab(&v).unwrap_or_else(|e| panic!("{pre}: {e}"));
        for case in rec["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids = |k: &str| -> Vec<u32> {
                case[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            };
            // As llama-tokenize: add_special = the model's add_bos.
            for (key, add_special, parse_special) in
                [("ids", tok.adds_bos(), true), ("ids_plain", false, false)]
            {
                let want = ids(key);
                let got = tok.encode_with(text, add_special, parse_special).unwrap();
                if got == want {
                    passed += 1;
                } else {
                    failed.push(format!("{pre} ({key}): {}", diff(text, &want, &got)));
                }
            }
        }
    }
    eprintln!(
        "synthetic vocabulary cases: {passed} equal, {} different",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} cases differ:\n{}",
        failed.len(),
        failed
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
