//! Vocabulary loading scales with the vocabulary's size, not with the
//! square of its longest token: a SentencePiece vocabulary holding a 1 MB
//! token loads at once (it took minutes when every split of every token was
//! looked up), and a byte-level BPE vocabulary of DeepSeek-V3's / Kimi-K2's
//! size (160k tokens) loads and tokenizes correctly. The timings are in
//! `examples/vocab_load.rs`; these tests check correctness and stay fast.

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
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        ..GgufVocab::default()
    }
}

#[test]
fn spm_vocab_with_a_one_megabyte_token() {
    let v = spm_with_long_token(1 << 20);
    let tok = Tokenizer::from_gguf_vocab(&v).expect("loads");
    let id = |s: &str| v.tokens.iter().position(|t| t == s).unwrap() as u32;
    assert_eq!(tok.encode("ab", false).unwrap(), vec![id("▁ab")]);
    // By score, "aa" (the best) first, then "aaaa"; "▁a" never forms.
    assert_eq!(
        tok.encode("aaaaa", false).unwrap(),
        vec![id("▁"), id("aaaa"), id("a")]
    );
}

/// GPT-2's byte-to-unicode character for a byte.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap()
}

/// 256 byte tokens, then two- and three-letter words over a-z/A-Z
/// (prefixed or not by the space character Ġ) up to 160k tokens, with the
/// merges that build them.
fn big_bpe(pre: &str) -> GgufVocab {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut merges = Vec::new();
    let letters: Vec<char> = ('a'..='z').chain('A'..='Z').collect();
    let sp = byte_char(b' ');
    for &a in &letters {
        tokens.push(format!("{sp}{a}"));
        merges.push(format!("{sp} {a}"));
    }
    for &a in &letters {
        for &b in &letters {
            tokens.push(format!("{a}{b}"));
            merges.push(format!("{a} {b}"));
            tokens.push(format!("{sp}{a}{b}"));
            merges.push(format!("{sp}{a} {b}"));
        }
    }
    'outer: for &a in &letters {
        for &b in &letters {
            for &c in &letters {
                if tokens.len() >= 160_000 {
                    break 'outer;
                }
                tokens.push(format!("{a}{b}{c}"));
                merges.push(format!("{a}{b} {c}"));
                tokens.push(format!("{sp}{a}{b}{c}"));
                merges.push(format!("{sp}{a}{b} {c}"));
            }
        }
    }
    tokens.push("<|endoftext|>".into());
    let mut types = vec![1; tokens.len()];
    *types.last_mut().unwrap() = 3;
    GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        token_types: Some(types),
        tokens,
        merges: Some(merges),
        ..GgufVocab::default()
    }
}

#[test]
fn bpe_vocab_of_160k_tokens() {
    for pre in ["deepseek-v3", "kimi-k2"] {
        let v = big_bpe(pre);
        assert!(v.tokens.len() > 160_000);
        let tok = Tokenizer::from_gguf_vocab(&v).expect("loads");
        let id = |s: &str| v.tokens.iter().position(|t| t == s).unwrap() as u32;
        let sp = byte_char(b' ');
        assert_eq!(
            tok.encode("abc Hi ZZZ<|endoftext|>", false).unwrap(),
            vec![
                id("abc"),
                id(&format!("{sp}Hi")),
                id(&format!("{sp}Z")),
                id("ZZ"),
                id("<|endoftext|>")
            ],
            "{pre}"
        );
    }
}
