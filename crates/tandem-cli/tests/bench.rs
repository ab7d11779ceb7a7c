//! `tandem bench` end to end: write a synthetic model, measure it, parse the
//! JSON; bad arguments end with one `error:` line and exit code 1.

use std::path::PathBuf;
use std::process::{Command, Output};

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("run tandem")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-cli-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir.join(name)
}

fn assert_clean_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    assert!(
        lines[0].contains(needle),
        "error should mention {needle:?}: {err}"
    );
}

#[test]
fn synthetic_then_bench_json() {
    let path = tmp("tiny-q4km.gguf");
    let p = path.to_str().unwrap();
    let o = tandem(&[
        "bench",
        "--synthetic",
        "tiny",
        "--quant",
        "Q4_K_M",
        "--out",
        p,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = tandem(&[
        "bench",
        p,
        "-p",
        "8",
        "-n",
        "4",
        "--batch",
        "2",
        "--reps",
        "1",
        "--json",
        "--probe-mib",
        "16",
        "--threads",
        "2",
        "--verbose",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(j["schema"], "tandem-bench/1");
    assert_eq!(j["threads"], 2);
    assert_eq!(j["model"]["arch"], "llama");
    assert!(j["model"]["size_bytes"].as_u64().unwrap() > 0);
    assert!(j["token_bytes"]["weights"].as_u64().unwrap() > 0);
    assert!(j["probe"]["gbps"].as_f64().unwrap() > 0.0);
    let tests = j["tests"].as_array().unwrap();
    let names: Vec<&str> = tests.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pp8", "tg4", "tg4@b2"]);
    for t in tests {
        assert!(t["avg_ts"].as_f64().unwrap() > 0.0);
        assert!(t["stddev_ts"].as_f64().is_some());
        assert_eq!(t["samples_ts"].as_array().unwrap().len(), 1);
        if t["kind"] == "tg" {
            assert!(t["gbps"].as_f64().unwrap() > 0.0);
            assert!(t["pct_of_probe"].as_f64().unwrap() > 0.0);
        } else {
            assert!(t["gbps"].is_null());
        }
    }
    assert!(j["sync"].is_object());
    // The human table names the tests too.
    let o = tandem(&[
        "bench",
        p,
        "-p",
        "4",
        "-n",
        "2",
        "--batch",
        "1",
        "--reps",
        "1",
        "--probe-mib",
        "0",
    ]);
    assert!(o.status.success());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| pp4") && table.contains("| tg2"),
        "{table}"
    );
    // Decode after a context: the KV rows it reads count in the bytes.
    let deep = |ctx: &str| -> Vec<serde_json::Value> {
        let o = tandem(&[
            "bench",
            p,
            "-p",
            "0",
            "-n",
            "2",
            "--batch",
            "1",
            "--reps",
            "1",
            "--json",
            "--probe-mib",
            "0",
            "--ctx",
            ctx,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        j["tests"].as_array().expect("tests").clone()
    };
    let (short, long) = (deep("0").remove(0), deep("300").remove(0));
    // A list of depths: one test each, in order.
    let names: Vec<String> = deep("16,48")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ["tg2@d16", "tg2@d48"]);
    assert_eq!(long["name"], "tg2@d300");
    assert_eq!(long["ctx"], 300);
    let kv = j["token_bytes"]["kv_per_position"].as_f64().unwrap();
    let extra =
        long["bytes_per_step"].as_f64().unwrap() - short["bytes_per_step"].as_f64().unwrap();
    assert!(
        (extra - 300.0 * kv).abs() < 1.0,
        "{extra} vs {}",
        300.0 * kv
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bad_arguments_exit_1() {
    let out = tmp("never.gguf");
    let o_ = out.to_str().unwrap();
    assert_clean_error(
        &tandem(&[
            "bench",
            "--synthetic",
            "gpt9",
            "--quant",
            "Q8_0",
            "--out",
            o_,
        ]),
        "unknown shape",
    );
    assert_clean_error(
        &tandem(&[
            "bench",
            "--synthetic",
            "tiny",
            "--quant",
            "Q3_K_XL",
            "--out",
            o_,
        ]),
        "unknown quantization",
    );
    assert_clean_error(
        &tandem(&["bench", "--synthetic", "tiny", "--quant", "Q8_0"]),
        "--out",
    );
    assert_clean_error(
        &tandem(&[
            "bench",
            "--synthetic",
            "tiny",
            "--quant",
            "Q8_0",
            "--out",
            "/nonexistent-dir/x.gguf",
        ]),
        "cannot write",
    );
    assert_clean_error(&tandem(&["bench"]), "MODEL");
    assert_clean_error(
        &tandem(&["bench", "/nonexistent-model.gguf"]),
        "nonexistent-model",
    );
    assert_clean_error(
        &tandem(&["bench", "Cargo.toml", "--quant", "Q8_0"]),
        "--synthetic",
    );
    assert!(!out.exists());
}
