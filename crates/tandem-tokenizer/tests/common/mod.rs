//! Reading a GGUF vocabulary for the tests, as the model crate does
//! (this crate itself does not know the GGUF format).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tandem_gguf::{GgufFile, Metadata};
use tandem_tokenizer::GgufVocab;

fn strings(m: &Metadata, key: &str) -> Option<Vec<String>> {
    m.get_array(key).ok()??.as_strings().map(<[String]>::to_vec)
}

/// The `tokenizer.ggml.*` metadata of a GGUF file.
pub fn vocab(path: &Path) -> GgufVocab {
    let file = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m = file.metadata();
    let types = m
        .get_array("tokenizer.ggml.token_type")
        .ok()
        .flatten()
        .and_then(|a| a.to_i64s())
        .map(|v| v.into_iter().map(|x| x as i32).collect());
    GgufVocab {
        model: m
            .get_str("tokenizer.ggml.model")
            .unwrap()
            .unwrap()
            .to_string(),
        pre: m.get_str("tokenizer.ggml.pre").unwrap().map(str::to_owned),
        tokens: strings(m, "tokenizer.ggml.tokens").unwrap(),
        scores: m
            .get_array("tokenizer.ggml.scores")
            .ok()
            .flatten()
            .and_then(|a| a.as_f32s().map(<[f32]>::to_vec)),
        token_types: types,
        merges: strings(m, "tokenizer.ggml.merges"),
        bos_id: m.get_u32("tokenizer.ggml.bos_token_id").unwrap(),
        eos_id: m.get_u32("tokenizer.ggml.eos_token_id").unwrap(),
        eot_id: m.get_u32("tokenizer.ggml.eot_token_id").unwrap(),
        eom_id: m.get_u32("tokenizer.ggml.eom_token_id").unwrap(),
        unk_id: m.get_u32("tokenizer.ggml.unknown_token_id").unwrap(),
        add_bos: m.get_bool("tokenizer.ggml.add_bos_token").unwrap(),
        add_eos: m.get_bool("tokenizer.ggml.add_eos_token").unwrap(),
        add_space_prefix: m.get_bool("tokenizer.ggml.add_space_prefix").unwrap(),
        chat_template: None,
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A vocabulary file: committed under fixtures/vocab, or in the llama.cpp
/// tree that tools/fixtures/setup.sh unpacks (its models/ directory).
pub fn find_vocab(file: &str) -> Option<PathBuf> {
    let mut dirs = vec![root().join("fixtures/vocab")];
    if let Ok(d) = std::env::var("TANDEM_LLAMA_CPP_MODELS") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(root().join(".cache/llama.cpp/src/models"));
    dirs.into_iter().map(|d| d.join(file)).find(|p| p.is_file())
}

/// llama.cpp's `test-tokenizer-0` case files: inputs separated by
/// `\n__ggml_vocab_test__\n`, one line of ids per input.
pub fn llama_cases(inp: &Path, out: &Path) -> Vec<(String, Vec<u32>)> {
    let raw = std::fs::read_to_string(inp).unwrap();
    let sep = "\n__ggml_vocab_test__\n";
    let mut texts = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        match raw[pos..].find(sep) {
            Some(n) => {
                texts.push(raw[pos..pos + n].to_string());
                pos += n + sep.len();
            }
            None => {
                texts.push(raw[pos..].to_string());
                break;
            }
        }
    }
    let outs: Vec<Vec<u32>> = std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), outs.len(), "{}", inp.display());
    texts.into_iter().zip(outs).collect()
}
