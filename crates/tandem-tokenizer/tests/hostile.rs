//! Hostile `tokenizer.json` files: each is an error naming the file, never
//! a panic (the `tokenizers` crate panics on all of these when called
//! directly). The CLI's view (one line on stderr) is tested in tandem-cli.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tandem_tokenizer::Tokenizer;

fn base() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/tiny-llama3/hf/tokenizer.json");
    std::fs::read_to_string(p).unwrap()
}

/// A model directory holding only `tokenizer.json` with `text`.
fn dir_with(name: &str, text: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tandem-hostile-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("tokenizer.json"), text).unwrap();
    d
}

fn with(f: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(&base()).unwrap();
    f(&mut v);
    v.to_string()
}

/// Loading fails with an error that names the file; no panic escapes.
fn rejects(name: &str, text: &str, expect: &str) {
    let d = dir_with(name, text);
    let r = std::panic::catch_unwind(|| Tokenizer::from_hf_dir(&d));
    let _ = std::fs::remove_dir_all(&d);
    let r = r.unwrap_or_else(|_| panic!("{name}: panicked"));
    let e = match r {
        Ok(_) => panic!("{name}: loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("tokenizer.json"), "{name}: {e}");
    assert!(e.contains(expect), "{name}: {e}");
    assert!(!e.contains('\n'), "{name}: not one line: {e}");
}

#[test]
fn the_unmodified_file_loads() {
    let d = dir_with("ok", &base());
    let t = Tokenizer::from_hf_dir(&d);
    let _ = std::fs::remove_dir_all(&d);
    assert!(t.unwrap().encode("hello", true).is_ok());
}

#[test]
fn cut_off_after_the_decoder_key() {
    let text = base();
    let at = text.find("\"decoder\":").unwrap() + "\"decoder\":".len();
    rejects("cut", &text[..at], "EOF");
    // Cut anywhere else, too.
    for frac in [1, 3, 5, 7, 9] {
        rejects("cut-any", &text[..text.len() * frac / 10], "tokenizer.json");
    }
}

#[test]
fn malformed_precompiled_charsmaps() {
    use base64::encode;
    let cases: Vec<(&str, String)> = vec![
        ("not-base64", "@@@".to_string()),
        ("short", encode([1u8, 2])),
        ("trie-beyond-data", encode([64u8, 0, 0, 0, 1, 2, 3, 4])),
        ("bad-utf8", encode([0u8, 0, 0, 0, 0xff, 0xfe])),
        // One trie unit whose offset sends lookups out of the trie.
        ("lookup-outside", encode([4u8, 0, 0, 0, 0, 4, 0, 0])),
    ];
    for (name, b64) in cases {
        let text = with(|v| {
            v["normalizer"] = json!({"type": "Precompiled", "precompiled_charsmap": b64});
        });
        rejects(name, &text, "Precompiled");
        // Nested in a Sequence, too.
        let text = with(|v| {
            v["normalizer"] = json!({"type": "Sequence", "normalizers": [
                {"type": "Precompiled", "precompiled_charsmap": b64}
            ]});
        });
        rejects(name, &text, "Precompiled");
    }
}

#[test]
fn template_naming_an_undefined_special_token() {
    let text = with(|v| {
        v["post_processor"] = json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<missing>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}
        });
    });
    rejects("template-missing", &text, "<missing>");
    // Inside a Sequence of processors, and with an id outside the vocabulary.
    let text = with(|v| {
        v["post_processor"]["processors"][1]["special_tokens"]["<|begin_of_text|>"]["ids"] =
            json!([99999999]);
    });
    rejects("template-id", &text, "99999999");
}

#[test]
fn single_template_reading_the_second_input() {
    // `tokenizers` indexes the inputs by the template's sequence ids: `B`
    // in the single template panics on the first encode (found by the
    // tokenizer_json fuzzer), alone or inside a Sequence of processors.
    let single_b = json!([{"Sequence": {"id": "B", "type_id": 0}}]);
    let text = with(|v| {
        v["post_processor"] = json!({
            "type": "TemplateProcessing",
            "single": single_b.clone(),
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}
        });
    });
    rejects("template-single-b", &text, "sequence B");
    let text = with(|v| v["post_processor"]["processors"][1]["single"] = single_b);
    rejects("template-single-b-nested", &text, "sequence B");
}

#[test]
fn strip_decoder_cutting_the_end_of_tokens() {
    // `tokenizers` indexes past a token shorter than `stop` (found by the
    // tokenizer_json fuzzer); the leading-space strip real files use loads.
    let strip = |stop: u64| json!({"type": "Strip", "content": " ", "start": 1, "stop": stop});
    let text = with(|v| v["decoder"] = strip(5));
    rejects("strip-stop", &text, "Strip decoder");
    let text = with(|v| v["decoder"] = json!({"type": "Sequence", "decoders": [strip(1)]}));
    rejects("strip-stop-nested", &text, "Strip decoder");
    // `tokenizers` reads decoders untagged: a wrong `type` is still a Strip.
    let text = with(|v| {
        v["decoder"] = json!({"type": "Sequence", "decoders": [
            {"content": " ", "start": 1, "stop": 2, "type": "contenStrip"}
        ]})
    });
    rejects("strip-stop-mistyped", &text, "Strip decoder");
    let d = dir_with("strip-start", &with(|v| v["decoder"] = strip(0)));
    let t = Tokenizer::from_hf_dir(&d);
    let _ = std::fs::remove_dir_all(&d);
    let ids = t
        .expect("a leading-space strip loads")
        .encode("hello world", false);
    assert!(ids.is_ok());
}
