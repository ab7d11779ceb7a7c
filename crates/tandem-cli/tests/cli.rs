//! The `tandem` binary end to end: the README's first command, and bad input
//! ending with one clear line and a non-zero exit code (never a panic, whose
//! exit code would be 101).

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use tandem_gguf::{GgufWriter, Value};

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("run tandem")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir.join(name)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails unless the command failed cleanly with one `error:` line naming `needle`.
fn assert_clean_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    assert!(
        lines[0].contains(needle),
        "error should mention {needle:?}: {err}"
    );
}

#[test]
fn bundled_model_generates_text() {
    let o = tandem(&[
        "run",
        "--prompt",
        "The Python language",
        "--max-tokens",
        "24",
        "--seed",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("The Python language"));
    assert!(
        out.trim().len() > "The Python language".len() + 10,
        "too little text: {out:?}"
    );
    assert!(stderr(&o).contains("tokens/s"));
}

#[test]
fn greedy_is_deterministic_and_seeded_sampling_repeats() {
    let a = tandem(&[
        "run",
        "--temperature",
        "0",
        "-n",
        "16",
        "--prompt",
        "A list",
    ]);
    let b = tandem(&[
        "run",
        "--temperature",
        "0",
        "-n",
        "16",
        "--prompt",
        "A list",
    ]);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(a.stdout, b.stdout);
    let c = tandem(&["run", "--seed", "7", "-n", "16", "--prompt", "A list"]);
    let d = tandem(&["run", "--seed", "7", "-n", "16", "--prompt", "A list"]);
    assert_eq!(c.stdout, d.stdout);
}

#[test]
fn chat_mode_applies_the_template() {
    let o = tandem(&[
        "run",
        "--chat",
        "--prompt",
        "What is a list?",
        "-n",
        "8",
        "--seed",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn perplexity_json_on_the_bundled_model() {
    let text = root().join("fixtures/text/eval.txt");
    let o = tandem(&[
        "perplexity",
        "--file",
        text.to_str().expect("path"),
        "--ctx",
        "128",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let ppl = v["ppl"].as_f64().expect("ppl");
    assert!(ppl > 1.0 && ppl < 1000.0, "{ppl}");
    assert!(v["chunks"].as_u64().expect("chunks") >= 2);
    assert!(v["tokens"].as_u64().expect("tokens") >= 256);
}

#[test]
fn inspect_reports_architecture_and_types() {
    let path = root().join("fixtures/models/tandem-tiny/gguf/tandem-tiny-Q4_K_M.gguf");
    let o = tandem(&["inspect", path.to_str().expect("path")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("architecture   llama"), "{out}");
    assert!(out.contains("Q4_K"), "{out}");
    let o = tandem(&["inspect", "--json", path.to_str().expect("path")]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["parameters"].as_u64().expect("params") > 1_000_000);
}

#[test]
fn missing_path_is_a_clean_error() {
    let o = tandem(&["run", "--model", "/nonexistent/model.gguf", "--prompt", "x"]);
    assert_clean_error(&o, "/nonexistent/model.gguf");
}

#[test]
fn unknown_format_is_a_clean_error() {
    let p = tmp("notes.txt");
    std::fs::write(&p, "hello").expect("write");
    let o = tandem(&["inspect", p.to_str().expect("path")]);
    assert_clean_error(&o, "not a .gguf file");
    let o = tandem(&[
        "run",
        "--model",
        std::env::temp_dir().to_str().expect("tmp"),
        "--prompt",
        "x",
    ]);
    assert_clean_error(&o, "not a .gguf file or a Hugging Face model directory");
}

#[test]
fn unsupported_architecture_is_named() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("gptneox".into()));
    w.add_metadata("gptneox.block_count", Value::U32(1));
    let p = tmp("neox.gguf");
    std::fs::write(&p, w.to_bytes()).expect("write");
    let o = tandem(&["run", "--model", p.to_str().expect("path"), "--prompt", "x"]);
    assert_clean_error(&o, "unsupported architecture 'gptneox'");
}

#[test]
fn truncated_model_file_is_a_clean_error() {
    let src = root().join("fixtures/models/tandem-tiny/gguf/tandem-tiny-Q8_0.gguf");
    let bytes = std::fs::read(src).expect("read");
    let p = tmp("truncated.gguf");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
    let o = tandem(&["run", "--model", p.to_str().expect("path"), "--prompt", "x"]);
    assert_clean_error(&o, "truncated.gguf");
}

#[test]
fn prompt_longer_than_context_is_a_clean_error() {
    let o = tandem(&[
        "run",
        "--ctx-size",
        "8",
        "--prompt",
        "a long prompt that certainly has more than eight tokens in it",
    ]);
    assert_clean_error(&o, "context");
}

#[test]
fn bad_sampling_parameters_are_refused() {
    let o = tandem(&["run", "--top-p", "1.5", "--prompt", "x"]);
    assert_clean_error(&o, "top_p");
    // A negative value reaches tandem's own check, not the parser's
    // "unexpected argument".
    let o = tandem(&["run", "--temperature", "-1", "--prompt", "x"]);
    assert_clean_error(&o, "temperature");
    let o = tandem(&["run", "--min-p", "-0.5", "--prompt", "x"]);
    assert_clean_error(&o, "min_p");
    // Checked before the model loads.
    for pace in ["-1", "0.5", "inf"] {
        let o = tandem(&["serve", "--prefill-pace", pace]);
        assert_clean_error(&o, "--prefill-pace must be 0 (off) or above 1");
    }
}

#[test]
fn every_model_command_takes_model() {
    let path = root().join("fixtures/models/tandem-tiny/gguf/tandem-tiny-Q8_0.gguf");
    let p = path.to_str().expect("path");
    let text_path = root().join("fixtures/text/eval.txt");
    let text = text_path.to_str().expect("text");
    for args in [
        vec!["inspect", "--model", p],
        vec!["inspect", "-m", p],
        vec![
            "bench",
            "--model",
            p,
            "-p",
            "8",
            "-n",
            "2",
            "-r",
            "1",
            "-b",
            "1",
            "--probe-mib",
            "0",
        ],
        vec!["tokenize", "--model", p, "--prompt", "hi"],
        vec!["perplexity", "--model", p, "--ctx", "64", "--file", text],
    ] {
        let o = tandem(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn impossible_context_size_is_a_clean_error() {
    let o = tandem(&["run", "--ctx-size", "100000000000000", "--prompt", "x"]);
    assert_clean_error(&o, "out of memory");
}

/// Runs `tandem` with `input` on stdin.
fn tandem_stdin(args: &[&str], input: &str) -> Output {
    support::run_with_stdin(Command::new(env!("CARGO_BIN_EXE_tandem")).args(args), input)
}

/// `(prompt tokens, from cache, prefilled)` of each `[turn N]` line.
fn turn_stats(err: &str) -> Vec<(usize, usize, usize)> {
    err.lines()
        .filter(|l| l.starts_with("[turn "))
        .map(|l| {
            let num = |after: &str| -> usize {
                let i = l.find(after).expect(after) + after.len();
                let digits: String = l[i..].chars().take_while(|c| c.is_ascii_digit()).collect();
                digits.parse().expect("number")
            };
            (num("prompt "), num("tokens: "), num("from disk), "))
        })
        .collect()
}

#[test]
fn chat_turns_prefill_only_what_the_cache_lacks() {
    let o = tandem_stdin(
        &[
            "chat",
            "--temperature",
            "0",
            "-n",
            "12",
            "--kv-memory",
            "4MiB",
            "--system",
            "You are a helpful assistant who answers in one sentence.",
        ],
        "What is a list in Python?\n\nAnd a tuple?\nThanks.\n",
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("KV cache: 4.0 MiB f16"), "{err}");
    let turns = turn_stats(&err);
    assert_eq!(turns.len(), 3, "{err}");
    assert_eq!(turns[0].1, 0, "nothing is cached before turn 1: {err}");
    for w in turns.windows(2) {
        let ((p1, _, _), (p2, cached, prefilled)) = (w[0], w[1]);
        assert_eq!(cached + prefilled, p2, "{err}");
        assert!(p2 > p1, "the conversation grows: {err}");
        // Reused: at least every full page of the previous prompt, less the
        // page a template's rewrite of the reply may touch.
        assert!(cached >= (p1 / 16).saturating_sub(1) * 16, "{err}");
        assert!(cached > 0, "{err}");
    }
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().filter(|l| !l.is_empty()).count() >= 3, "{out}");
}

#[test]
fn chat_refuses_a_conversation_larger_than_its_pool_and_goes_on() {
    // One 16-token page: every turn is too long, and each says so.
    let o = tandem_stdin(
        &[
            "chat",
            "--temperature",
            "0",
            "-n",
            "4",
            "--kv-memory",
            "1KiB",
        ],
        "Hello, how are you today, my dear friend?\n/reset\nHi again, my friend, how are things?\n",
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("the context holds 16").count(), 2, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_kv_memory_is_refused() {
    let o = tandem(&["chat", "--kv-memory", "lots"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--kv-memory"), "{}", stderr(&o));
}

#[test]
fn a_chat_resumed_after_a_restart_reuses_its_saved_pages() {
    let dir = tmp("kv-disk");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("utf-8 path");
    let args = ["chat", "--temperature", "0", "-n", "10", "--kv-disk", d];
    let talk = "Tell me about lists in Python.\nAnd tuples?\n";
    let first = tandem_stdin(&args, talk);
    let err1 = stderr(&first);
    assert!(first.status.success(), "{err1}");
    assert!(err1.contains("saved"), "{err1}");
    let second = tandem_stdin(&args, talk);
    let err2 = stderr(&second);
    assert!(second.status.success(), "{err2}");
    // The second process finds turn 1's pages on disk ...
    let line = err2
        .lines()
        .find(|l| l.starts_with("[turn 1]"))
        .expect("turn line");
    assert!(!line.contains("(0 from disk)"), "{err2}");
    let t1 = turn_stats(&err2)[0];
    assert!(t1.1 >= 16, "{err2}");
    // ... and, greedy, says exactly what the first one said.
    assert_eq!(first.stdout, second.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}
