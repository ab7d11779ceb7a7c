//! How long building a tokenizer takes (issue 13: vocabulary loading must
//! not be quadratic in token length, and a 160k-token vocabulary must load
//! in well under a second).
//!
//! `cargo run --release -p tandem-tokenizer --example vocab_load [GGUF...]`
//!
//! Times synthetic vocabularies (SentencePiece with one 160 KB and one 1 MB
//! token; byte-level BPE of 160k tokens) and, if given, the vocabularies of
//! GGUF files.

use std::time::Instant;

use tandem_tokenizer::{GgufVocab, Tokenizer};

fn spm_with_long_token(len: usize) -> GgufVocab {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u32 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for p in ["▁", "a", "b", "aa", "aaaa", "▁a", "ab", "▁ab"] {
        tokens.push(p.to_string());
        types.push(1);
    }
    tokens.push("a".repeat(len));
    types.push(1);
    let n = tokens.len();
    GgufVocab {
        model: "llama".into(),
        scores: Some((0..n).map(|i| -(i as f32)).collect()),
        token_types: Some(types),
        tokens,
        ..GgufVocab::default()
    }
}

fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

fn big_bpe(pre: &str, n: usize) -> GgufVocab {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut merges = Vec::new();
    let letters: Vec<char> = ('a'..='z').chain('A'..='Z').collect();
    let sp = byte_char(b' ');
    let mut words: Vec<String> = letters.iter().map(|c| c.to_string()).collect();
    words.extend(letters.iter().map(|c| format!("{sp}{c}")));
    for c in &letters {
        merges.push(format!("{sp} {c}"));
    }
    let mut i = 0;
    while tokens.len() + words.len() < n {
        let w = words[i].clone();
        for c in &letters {
            merges.push(format!("{w} {c}"));
            words.push(format!("{w}{c}"));
        }
        i += 1;
    }
    tokens.extend(words.into_iter().skip(52));
    tokens.truncate(n);
    let merges: Vec<String> = merges.into_iter().take(n - 256).collect();
    GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        token_types: Some(vec![1; tokens.len()]),
        tokens,
        merges: Some(merges),
        ..GgufVocab::default()
    }
}

/// This thread's time on a CPU (Linux), so that a busy machine's waiting
/// is not counted.
fn cpu_ms() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e6)
}

fn time(name: &str, v: &GgufVocab) {
    let t0 = Instant::now();
    let c0 = cpu_ms();
    match Tokenizer::from_gguf_vocab(v) {
        Ok(t) => {
            let load = t0.elapsed();
            let cpu = match (c0, cpu_ms()) {
                (Some(a), Some(b)) => format!("{:.1} ms", b - a),
                _ => "n/a".into(),
            };
            let t1 = Instant::now();
            let n = t
                .encode("Hello world, this is a test of 2025.", false)
                .map(|i| i.len());
            println!(
                "{name:<44} {:>8} tokens  load {:>8.1} ms (on CPU {cpu})  encode {:>6.3} ms ({n:?} ids)",
                v.tokens.len(),
                load.as_secs_f64() * 1e3,
                t1.elapsed().as_secs_f64() * 1e3
            );
        }
        Err(e) => println!("{name:<44} error: {e}"),
    }
}

fn main() {
    time("spm, one 160 KB token", &spm_with_long_token(160 << 10));
    time("spm, one 1 MB token", &spm_with_long_token(1 << 20));
    time(
        "bpe deepseek-v3, 160k tokens",
        &big_bpe("deepseek-v3", 160_000),
    );
    time("bpe kimi-k2, 160k tokens", &big_bpe("kimi-k2", 160_000));
    for path in std::env::args().skip(1) {
        match read_gguf(&path) {
            Ok(v) => time(&path, &v),
            Err(e) => println!("{path}: {e}"),
        }
    }
}

fn read_gguf(path: &str) -> Result<GgufVocab, String> {
    let f = tandem_gguf::GgufFile::open(std::path::Path::new(path)).map_err(|e| e.to_string())?;
    let m = f.metadata();
    let strings = |k: &str| -> Option<Vec<String>> {
        m.get_array(k).ok()??.as_strings().map(<[String]>::to_vec)
    };
    Ok(GgufVocab {
        model: m
            .get_str("tokenizer.ggml.model")
            .ok()
            .flatten()
            .unwrap_or("")
            .into(),
        pre: m
            .get_str("tokenizer.ggml.pre")
            .ok()
            .flatten()
            .map(str::to_owned),
        tokens: strings("tokenizer.ggml.tokens").unwrap_or_default(),
        scores: m
            .get_array("tokenizer.ggml.scores")
            .ok()
            .flatten()
            .and_then(|a| a.as_f32s().map(<[f32]>::to_vec)),
        token_types: m
            .get_array("tokenizer.ggml.token_type")
            .ok()
            .flatten()
            .and_then(|a| a.to_i64s())
            .map(|v| v.into_iter().map(|x| x as i32).collect()),
        merges: strings("tokenizer.ggml.merges"),
        bos_id: m.get_u32("tokenizer.ggml.bos_token_id").ok().flatten(),
        eos_id: m.get_u32("tokenizer.ggml.eos_token_id").ok().flatten(),
        add_bos: m.get_bool("tokenizer.ggml.add_bos_token").ok().flatten(),
        add_space_prefix: m.get_bool("tokenizer.ggml.add_space_prefix").ok().flatten(),
        ..GgufVocab::default()
    })
}
