//! llama.cpp's tokenization rules on small hand-made vocabularies. The full
//! comparison with llama.cpp's own output on real vocabularies is in
//! `tandem-engine/tests/reference.rs`.

use tandem_tokenizer::{GgufVocab, Tokenizer, TokenizerError};

/// A SentencePiece-style vocabulary: <unk>, <s>, </s>, byte tokens, pieces.
fn spm_vocab() -> GgufVocab {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u32 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let pieces = [
        "▁", "a", "b", "c", "h", "e", "l", "o", "▁h", "el", "lo", "▁hel", "▁hello", "ab", "abc",
        "[X]",
    ];
    for p in pieces {
        tokens.push(p.to_string());
        types.push(if p == "[X]" { 4 } else { 1 });
    }
    let n = tokens.len();
    // Scores: later pieces are preferred merges (as BPE-trained SentencePiece writes -id).
    let scores = (0..n).map(|i| -(i as f32)).collect();
    GgufVocab {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        ..GgufVocab::default()
    }
}

fn id(v: &GgufVocab, piece: &str) -> u32 {
    v.tokens.iter().position(|t| t == piece).expect(piece) as u32
}

#[test]
fn spm_merges_by_score_and_prefixes_space() {
    let v = spm_vocab();
    let tok = Tokenizer::from_gguf_vocab(&v).expect("tokenizer");
    let ids = tok.encode("hello", true).expect("encode");
    assert_eq!(ids, vec![1, id(&v, "▁hello")]);
    assert!(tok.adds_bos());
    assert_eq!(tok.decode(&ids).expect("decode"), "hello");
}

#[test]
fn spm_byte_fallback_for_unknown_characters() {
    let v = spm_vocab();
    let tok = Tokenizer::from_gguf_vocab(&v).expect("tokenizer");
    let ids = tok.encode("é", false).expect("encode");
    // "▁" then the two UTF-8 bytes of é.
    assert_eq!(ids, vec![id(&v, "▁"), id(&v, "<0xC3>"), id(&v, "<0xA9>")]);
    assert_eq!(tok.decode(&ids).expect("decode"), "é");
}

#[test]
fn special_tokens_split_text_and_reset_the_space_prefix() {
    let v = spm_vocab();
    let tok = Tokenizer::from_gguf_vocab(&v).expect("tokenizer");
    // llama.cpp: "<s>" in the text is BOS (parse_special); the fragment after a
    // special token gets a space prefix again.
    let ids = tok.encode("abc</s>hello", false).expect("encode");
    assert_eq!(ids, vec![id(&v, "▁"), id(&v, "abc"), 2, id(&v, "▁hello")]);
    // Without parse_special, control tokens are plain text but user-defined ones still split.
    let plain = tok.encode_with("a</s>", false, false).expect("encode");
    assert!(!plain.contains(&2));
    let user = tok.encode_with("a[X]b", false, false).expect("encode");
    assert!(user.contains(&id(&v, "[X]")));
    // Control tokens are hidden when decoding.
    assert_eq!(tok.decode(&[1, id(&v, "▁hello")]).expect("decode"), "hello");
}

#[test]
fn eos_ends_generation() {
    let tok = Tokenizer::from_gguf_vocab(&spm_vocab()).expect("tokenizer");
    assert!(tok.is_eog(2));
    assert!(!tok.is_eog(1));
}

fn byte_level_vocab(pre: &str) -> GgufVocab {
    // GPT-2 byte-level: "Ġ" is the space byte.
    let tokens: Vec<String> = [
        "h", "e", "l", "o", "Ġ", "w", "r", "d", "1", "2", "3", "4", "he", "ll", "llo", "hello",
        "Ġw", "Ġwor", "or", "<|end|>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut types = vec![1; tokens.len()];
    *types.last_mut().expect("nonempty") = 3;
    GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        merges: Some(
            ["h e", "l l", "ll o", "he llo", "Ġ w", "o r", "Ġw or"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        token_types: Some(types),
        bos_id: None,
        eos_id: Some(19),
        tokens,
        ..GgufVocab::default()
    }
}

#[test]
fn byte_level_bpe_with_pre_tokenizer() {
    let v = byte_level_vocab("llama-bpe");
    let tok = Tokenizer::from_gguf_vocab(&v).expect("tokenizer");
    let ids = tok.encode("hello wor<|end|>", false).expect("encode");
    assert_eq!(ids, vec![id(&v, "hello"), id(&v, "Ġwor"), 19]);
    assert_eq!(tok.decode(&ids).expect("decode"), "hello wor");
}

#[test]
fn digit_splitting_follows_the_pre_tokenizer() {
    // llama-bpe groups up to 3 digits; qwen2 splits every digit.
    let llama = Tokenizer::from_gguf_vocab(&byte_level_vocab("llama-bpe")).expect("tokenizer");
    let qwen = Tokenizer::from_gguf_vocab(&byte_level_vocab("qwen2")).expect("tokenizer");
    let a = llama.encode("1234", false).expect("encode");
    let b = qwen.encode("1234", false).expect("encode");
    // No digit merges exist, so ids equal; the split shows in the pre-tokenizer only.
    assert_eq!(a, b);
    assert_eq!(a.len(), 4);
}

#[test]
fn unknown_pre_tokenizer_and_model_are_refused_by_name() {
    let err = Tokenizer::from_gguf_vocab(&byte_level_vocab("klingon")).expect_err("must fail");
    assert!(
        matches!(err, TokenizerError::Unsupported(ref m) if m.contains("klingon")),
        "{err}"
    );
    let mut v = spm_vocab();
    v.model = "bert".into();
    let err = Tokenizer::from_gguf_vocab(&v).expect_err("must fail");
    assert!(err.to_string().contains("bert"));
}

#[test]
fn inconsistent_metadata_is_an_error_not_a_panic() {
    let mut v = spm_vocab();
    v.scores = Some(vec![0.0; 3]);
    assert!(Tokenizer::from_gguf_vocab(&v).is_err());
    let mut v = spm_vocab();
    v.bos_id = Some(1_000_000);
    assert!(Tokenizer::from_gguf_vocab(&v).is_err());
    let mut v = byte_level_vocab("gpt-2");
    v.merges = Some(vec!["nospace".into()]);
    assert!(Tokenizer::from_gguf_vocab(&v).is_err());
    let v = GgufVocab {
        model: "llama".into(),
        ..GgufVocab::default()
    };
    assert!(Tokenizer::from_gguf_vocab(&v).is_err());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any text tokenizes without error, and byte fallback makes the
        /// SentencePiece round trip exact (the leading space prefix is
        /// stripped again by the decoder).
        #[test]
        fn spm_round_trips_any_text(s in "\\PC{0,40}") {
            let tok = Tokenizer::from_gguf_vocab(&spm_vocab()).expect("tokenizer");
            let ids = tok.encode_with(&s, false, false).expect("encode");
            prop_assert_eq!(tok.decode(&ids).expect("decode"), s);
        }

        /// Byte-level BPE never fails on any text, special-token text included.
        #[test]
        fn byte_level_never_fails(s in "(\\PC|<\\|end\\|>){0,30}") {
            let tok = Tokenizer::from_gguf_vocab(&byte_level_vocab("qwen2")).expect("tokenizer");
            let _ = tok.encode(&s, true).expect("encode");
        }
    }
}
