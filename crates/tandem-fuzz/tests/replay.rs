//! Replays every input kept under `fuzz/regressions/<target>/` (what the
//! fuzzers once crashed, hung or ran out of memory on) through its target,
//! and the fixtures the fuzzers are seeded from: on stable, in CI. Each
//! must return, well within a second in a release build.
//!
//! `cargo test -p tandem-fuzz --test replay -- --ignored write_corpus`
//! writes the seed corpora to `fuzz/corpus/<target>/` (see fuzz/README.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"));
    out.sort();
    out
}

fn run(target: &str, f: fn(&[u8]), path: &Path) -> Duration {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let t0 = Instant::now();
    f(&data);
    let took = t0.elapsed();
    // A debug build on a loaded machine is far slower than the fuzzers'
    // 1 s; this catches hangs, not speed.
    assert!(
        took < Duration::from_secs(20),
        "{target} {}: {took:?}",
        path.display()
    );
    took
}

#[test]
fn regressions_replay() {
    let mut n = 0;
    let mut slowest = (Duration::ZERO, PathBuf::new());
    for &(target, f) in tandem_fuzz::TARGETS {
        let dir = root().join("fuzz/regressions").join(target);
        assert!(dir.is_dir(), "no {}", dir.display());
        for path in files(&dir) {
            let took = run(target, f, &path);
            if took > slowest.0 {
                slowest = (took, path);
            }
            n += 1;
        }
    }
    eprintln!(
        "{n} regression inputs replayed; slowest {:?} ({})",
        slowest.0,
        slowest.1.display()
    );
}

/// The fixture files each target is seeded from, by target.
fn seeds() -> Vec<(&'static str, PathBuf)> {
    let root = root();
    let mut out = Vec::new();
    for model in std::fs::read_dir(root.join("fixtures/models"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    {
        for gguf in files(&model.join("gguf")) {
            out.push(("gguf_header", gguf.clone()));
            out.push(("gguf_model", gguf));
        }
        let hf = model.join("hf");
        if hf.join("config.json").is_file() {
            out.push(("hf_config", hf.join("config.json")));
        }
        if hf.join("tokenizer.json").is_file() {
            out.push(("tokenizer_json", hf.join("tokenizer.json")));
        }
    }
    for t in files(&root.join("crates/tandem-engine/tests/data/templates")) {
        out.push(("chat_template", t));
    }
    out
}

#[test]
fn fixtures_replay() {
    let seeds = seeds();
    assert!(seeds.len() > 10);
    for (target, path) in seeds {
        let f = tandem_fuzz::TARGETS
            .iter()
            .find(|t| t.0 == target)
            .map(|t| t.1)
            .expect("target");
        run(target, f, &path);
    }
    tandem_fuzz::kv_page(&tandem_fuzz::kv_page_seed());
    for seed in tandem_fuzz::request_body_seeds() {
        tandem_fuzz::request_body(&seed);
    }
}

/// The request seeds reach the engine's door: each is accepted by
/// `check_request` (a seed the server refused would fuzz only its
/// error paths).
#[test]
fn request_seeds_are_accepted() {
    let st = tandem_fuzz::request_body_state().expect("fixture server");
    for seed in tandem_fuzz::request_body_seeds() {
        let all = tandem_server::Endpoint::ALL;
        let r = tandem_server::check_request(st, all[seed[0] as usize % all.len()], &seed[1..]);
        assert!(
            r.is_ok(),
            "{}: {:?}",
            String::from_utf8_lossy(&seed),
            r.err()
        );
    }
}

/// Writes `fuzz/corpus/<target>/` from the fixtures (run by hand).
#[test]
#[ignore]
fn write_corpus() {
    let corpus = root().join("fuzz/corpus");
    let mut n = 0;
    for (target, path) in seeds() {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let name = path.to_string_lossy().replace(['/', '.'], "_");
        std::fs::copy(&path, dir.join(name)).expect("copy");
        n += 1;
    }
    // The same files without their bulk (`small_seeds`: the fuzzers
    // run with a short `-max_len`).
    for (target, path) in seeds() {
        let data = std::fs::read(&path).expect("read");
        let small = match target {
            "gguf_header" => tandem_fuzz::small_seeds::shrink_gguf(&data),
            "tokenizer_json" => tandem_fuzz::small_seeds::shrink_tokenizer_json(&data),
            _ => None,
        };
        if let Some(small) = small {
            let name = path.to_string_lossy().replace(['/', '.'], "_");
            std::fs::write(corpus.join(target).join(format!("small-{name}")), small)
                .expect("write");
            n += 1;
        }
    }
    let every = tandem_fuzz::small_seeds::every_type_gguf().expect("every type");
    std::fs::write(corpus.join("gguf_header/every-type"), every).expect("write");
    // Conversations for the templates: template, NUL, messages.
    let dir = corpus.join("chat_template");
    for path in files(&root().join("crates/tandem-engine/tests/data/templates")) {
        let mut data = std::fs::read(&path).expect("read");
        data.extend_from_slice(b"\0Be brief.\0Hi\0Hello!\0What is 2+2?");
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        std::fs::write(dir.join(format!("{name}-conversation")), data).expect("write");
        n += 1;
    }
    // Vocabularies: the first byte picks the model and options.
    let dir = corpus.join("gguf_vocab");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let words = "<unk>\n<s>\n</s>\n\u{2581}the\n\u{2581}a\nhe\nll\no\n<0x0A>\n\u{120}w\nor\nld\n!";
    for pick in [0u8, 1, 0x19, 0x29, 0x3a, 0x7b, 0xff] {
        let mut data = vec![pick];
        data.extend_from_slice(words.as_bytes());
        std::fs::write(dir.join(format!("vocab-{pick:02x}")), data).expect("write");
        n += 1;
    }
    let dir = corpus.join("kv_page");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("page"), tandem_fuzz::kv_page_seed()).expect("write");
    let dir = corpus.join("request_body");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (i, seed) in tandem_fuzz::request_body_seeds().into_iter().enumerate() {
        std::fs::write(dir.join(format!("request-{i}")), seed).expect("write");
        n += 1;
    }
    eprintln!("{} seeds written under {}", n + 1, corpus.display());
}

/// The small seeds keep what the fuzzers need: every fixture shrinks to
/// a few KiB that still parses (a GGUF file with every key and tensor; a
/// tokenizer that loads and encodes), and the every-type file holds one
/// tensor of each ggml type.
#[test]
fn small_seeds_still_parse() {
    use tandem_fuzz::small_seeds::{every_type_gguf, shrink_gguf, shrink_tokenizer_json};
    let mut n = 0;
    for (target, path) in seeds() {
        let data = std::fs::read(&path).expect("read");
        match target {
            "gguf_header" => {
                let small = shrink_gguf(&data).expect("a fixture shrinks");
                assert!(
                    small.len() < 64 << 10,
                    "{}: {}",
                    path.display(),
                    small.len()
                );
                let (a, b) = (
                    tandem_gguf::GgufFile::from_bytes(data).expect("fixture"),
                    tandem_gguf::GgufFile::from_bytes(small).expect("small"),
                );
                assert_eq!(a.metadata().iter().count(), b.metadata().iter().count());
                assert_eq!(a.tensors().len(), b.tensors().len());
            }
            "tokenizer_json" => {
                let small = shrink_tokenizer_json(&data).expect("a fixture shrinks");
                assert!(small.len() < data.len() / 4, "{}", path.display());
                let dir = std::env::temp_dir()
                    .join(format!("tandem-small-seed-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("mkdir");
                std::fs::write(dir.join("tokenizer.json"), &small).expect("write");
                let tok = tandem_tokenizer::Tokenizer::from_hf_dir(&dir);
                let _ = std::fs::remove_dir_all(&dir);
                let tok = tok.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(!tok.encode("Hello world", false).expect("encode").is_empty());
            }
            _ => continue,
        }
        n += 1;
    }
    assert!(n > 10, "{n} fixtures shrunk");
    let every = every_type_gguf().expect("every type");
    let every = tandem_gguf::GgufFile::from_bytes(every).expect("parse");
    assert_eq!(every.tensors().len(), tandem_gguf::GgmlType::ALL.len());
}
