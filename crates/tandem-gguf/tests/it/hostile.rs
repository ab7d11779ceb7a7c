//! Hand-made hostile files, each rejected with a specific error.

use tandem_gguf::{Array, GgmlType, GgufError, GgufFile, GgufWriter, Value};

use crate::common::*;

/// A header with one tensor info and enough data bytes after it.
fn one_tensor(name: &str, dims: &[u64], ty: u32, offset: u64, data_len: usize) -> Raw {
    let mut r = Raw::header(3, 1, 0);
    r.tensor_info(name, dims, ty, offset)
        .pad(32)
        .zeros(data_len);
    r
}

#[test]
fn valid_handmade_file_parses() {
    // Sanity check of the builder used below.
    let f = one_tensor("w", &[8, 2], 0, 0, 64).parse().unwrap();
    assert_eq!(f.tensors()[0].n_bytes, 64);
    assert_eq!(f.tensors()[0].offset, 96);
}

#[test]
fn truncated_at_every_offset() {
    let bytes = sample_writer().to_bytes();
    let full = GgufFile::from_bytes(bytes.clone()).unwrap();
    let data_end = full
        .tensors()
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    for len in 0..bytes.len() {
        match GgufFile::from_bytes(bytes[..len].to_vec()) {
            Ok(_) => assert!(len >= data_end, "prefix of {len} bytes parsed"),
            Err(e) => {
                assert!(len < data_end, "prefix {len} >= {data_end} failed: {e}");
                assert!(
                    matches!(
                        e,
                        GgufError::Truncated { .. }
                            | GgufError::StringTooLong { .. }
                            | GgufError::ArrayTooLong { .. }
                            | GgufError::TooManyKvs { .. }
                            | GgufError::TooManyTensors { .. }
                            | GgufError::TensorOutOfBounds { .. }
                    ),
                    "prefix {len}: unexpected {e:?}"
                );
                assert!(!e.to_string().contains('\n'));
            }
        }
    }
}

#[test]
fn truncation_error_names_offset() {
    let e = parse_err(&Raw::header(3, 0, 0).0[..10]);
    match e {
        GgufError::Truncated {
            ref what,
            offset,
            needed,
            available,
        } => {
            assert_eq!(
                (what.as_str(), offset, needed, available),
                ("tensor_count", 8, 8, 2)
            );
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(
        e.to_string(),
        "truncated file: tensor_count at offset 8 needs 8 bytes but only 2 remain"
    );
}

#[test]
fn huge_key_string_length() {
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX).zeros(16);
    let e = parse_err(&r.0);
    assert!(
        matches!(
            e,
            GgufError::StringTooLong {
                len: u64::MAX,
                offset: 24,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("metadata key #0"), "{e}");
}

#[test]
fn huge_value_string_length() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(T_STRING).u64(1 << 62).zeros(8);
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::StringTooLong { len, .. } if len == 1 << 62),
        "{e:?}"
    );
    assert!(e.to_string().contains("'k'"), "{e}");
}

#[test]
fn huge_array_count() {
    for (elem, count) in [
        (T_U32, u64::MAX),
        (T_U8, 1 << 40),
        (T_STRING, 1 << 30),
        (T_ARRAY, 1 << 20),
    ] {
        let mut r = Raw::header(3, 0, 1);
        r.str("arr").u32(T_ARRAY).u32(elem).u64(count).zeros(64);
        let e = parse_err(&r.0);
        assert!(
            matches!(e, GgufError::ArrayTooLong { ref key, count: c, .. } if key == "arr" && c == count),
            "{e:?}"
        );
    }
    // 16 strings need at least 128 bytes of length prefixes: 100 bytes is not enough.
    let mut r = Raw::header(3, 0, 1);
    r.str("arr").u32(T_ARRAY).u32(T_STRING).u64(16).zeros(100);
    assert!(matches!(
        parse_err(&r.0),
        GgufError::ArrayTooLong { needed: 128, .. }
    ));
}

#[test]
fn huge_tensor_count() {
    let mut r = Raw::header(3, u64::MAX, 0);
    r.zeros(64);
    let e = parse_err(&r.0);
    assert!(
        matches!(
            e,
            GgufError::TooManyTensors {
                count: u64::MAX,
                offset: 8,
                ..
            }
        ),
        "{e:?}"
    );
    // 3 tensor infos need at least 96 bytes.
    let mut r = Raw::header(3, 3, 0);
    r.zeros(95);
    assert!(matches!(
        parse_err(&r.0),
        GgufError::TooManyTensors { count: 3, .. }
    ));
}

#[test]
fn huge_kv_count() {
    let mut r = Raw::header(3, 0, 1 << 50);
    r.zeros(64);
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::TooManyKvs { count, offset: 16, .. } if count == 1 << 50),
        "{e:?}"
    );
}

#[test]
fn dims_overflow() {
    let e = parse_err(&one_tensor("big", &[1 << 40, 1 << 40], 0, 0, 64).0);
    assert!(
        matches!(e, GgufError::ZeroOrOverflowDims { ref tensor, .. } if tensor == "big"),
        "{e:?}"
    );
    // Element count fits in u64 but not i64.
    let e = parse_err(&one_tensor("big", &[1 << 32, 1 << 31], 24, 0, 64).0);
    assert!(matches!(e, GgufError::ZeroOrOverflowDims { .. }), "{e:?}");
    // Element count fits, byte count overflows (F64: 8 bytes each).
    let e = parse_err(&one_tensor("big", &[1 << 31, 1 << 31], 28, 0, 64).0);
    assert!(
        matches!(e, GgufError::ZeroOrOverflowDims { reason, .. } if reason.contains("byte size")),
        "{e:?}"
    );
    // Huge but representable: out of bounds.
    let e = parse_err(&one_tensor("big", &[1 << 20, 1 << 20], 0, 0, 64).0);
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e:?}");
}

#[test]
fn zero_dim() {
    let e = parse_err(&one_tensor("z", &[4, 0], 0, 0, 64).0);
    assert!(
        matches!(e, GgufError::ZeroOrOverflowDims { ref tensor, ref dims, .. } if tensor == "z" && dims == &[4, 0]),
        "{e:?}"
    );
}

#[test]
fn bad_n_dims() {
    let e = parse_err(&one_tensor("five", &[1, 1, 1, 1, 1], 0, 0, 64).0);
    assert!(
        matches!(e, GgufError::TooManyDims { ref tensor, n: 5, .. } if tensor == "five"),
        "{e:?}"
    );
    let e = parse_err(&one_tensor("zero", &[], 0, 0, 64).0);
    assert!(matches!(e, GgufError::TooManyDims { n: 0, .. }), "{e:?}");
    let mut r = Raw::header(3, 1, 0);
    r.str("huge").u32(u32::MAX).zeros(64);
    assert!(matches!(
        parse_err(&r.0),
        GgufError::TooManyDims { n: u32::MAX, .. }
    ));
}

#[test]
fn unknown_tensor_type() {
    for id in [4, 5, 31, 33, 36, 38, 40, 99, u32::MAX] {
        let e = parse_err(&one_tensor("t", &[32], id, 0, 256).0);
        assert!(
            matches!(e, GgufError::UnknownTensorType { ref tensor, id: i, .. } if tensor == "t" && i == id),
            "{e:?}"
        );
    }
}

#[test]
fn row_not_block_aligned() {
    // Q4_K has 256-element blocks.
    let e = parse_err(&one_tensor("q", &[128, 2], 12, 0, 256).0);
    assert!(
        matches!(
            e,
            GgufError::RowNotBlockAligned {
                ggml_type: GgmlType::Q4_K,
                row_len: 128,
                block_len: 256,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn misaligned_offset() {
    let e = parse_err(&one_tensor("m", &[4], 0, 16, 64).0);
    assert!(
        matches!(e, GgufError::MisalignedTensor { ref tensor, offset: 16, alignment: 32, .. } if tensor == "m"),
        "{e:?}"
    );
}

#[test]
fn out_of_bounds_offset() {
    let e = parse_err(&one_tensor("o", &[4], 0, 1024, 64).0);
    assert!(
        matches!(e, GgufError::TensorOutOfBounds { ref tensor, size: 16, .. } if tensor == "o"),
        "{e:?}"
    );
    // Offset so large that offset + data_start overflows.
    let off = !31u64;
    let e = parse_err(&one_tensor("o", &[4], 0, off, 64).0);
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e:?}");
    // Data ends one byte past the end of the file.
    let e = parse_err(&one_tensor("o", &[4], 0, 0, 15).0);
    assert!(
        matches!(e, GgufError::TensorOutOfBounds { file_len, .. } if file_len == 64 + 15),
        "{e:?}"
    );
    // Padding before the data section is missing.
    let mut r = Raw::header(3, 1, 0);
    r.tensor_info("o", &[1], 24, 0);
    let e = parse_err(&r.0);
    assert!(matches!(e, GgufError::Truncated { .. }), "{e:?}");
}

#[test]
fn overlapping_tensors() {
    let mut r = Raw::header(3, 2, 0);
    r.tensor_info("a", &[16], 0, 0)
        .tensor_info("b", &[16], 0, 32)
        .pad(32)
        .zeros(128);
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::OverlappingTensors { ref a, ref b, .. } if a == "a" && b == "b"),
        "{e:?}"
    );
    // Same start.
    let mut r = Raw::header(3, 2, 0);
    r.tensor_info("a", &[1], 0, 64)
        .tensor_info("b", &[1], 0, 64)
        .pad(32)
        .zeros(128);
    assert!(matches!(
        parse_err(&r.0),
        GgufError::OverlappingTensors { .. }
    ));
    // Out of order but disjoint is fine.
    let mut r = Raw::header(3, 2, 0);
    r.tensor_info("a", &[8], 0, 32)
        .tensor_info("b", &[8], 0, 0)
        .pad(32)
        .zeros(64);
    let f = r.parse().unwrap();
    assert_eq!(
        f.tensor("b").unwrap().offset + 32,
        f.tensor("a").unwrap().offset
    );
}

#[test]
fn duplicate_key() {
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("dup", 1).kv_str("dup", "x");
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::DuplicateKey { ref key, offset: 43 } if key == "dup"),
        "{e:?}"
    );
    assert!(e.to_string().contains("'dup'") && e.to_string().contains("43"));
}

#[test]
fn empty_key() {
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("", 1);
    assert!(matches!(
        parse_err(&r.0),
        GgufError::EmptyKey {
            index: 0,
            offset: 24
        }
    ));
}

#[test]
fn duplicate_tensor_name() {
    let mut r = Raw::header(3, 2, 0);
    r.tensor_info("w", &[8], 0, 0)
        .tensor_info("w", &[8], 0, 32)
        .pad(32)
        .zeros(64);
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::DuplicateTensor { ref tensor, .. } if tensor == "w"),
        "{e:?}"
    );
}

#[test]
fn tensor_name_length_limit() {
    let name63 = "x".repeat(63);
    one_tensor(&name63, &[1], 24, 0, 32).parse().unwrap();
    let e = parse_err(&one_tensor(&"x".repeat(64), &[1], 24, 0, 32).0);
    assert!(
        matches!(
            e,
            GgufError::TensorNameTooLong {
                len: 64,
                max: 63,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48, 100, u32::MAX] {
        let mut r = Raw::header(3, 0, 1);
        r.kv_u32("general.alignment", a);
        let e = parse_err(&r.0);
        assert!(
            matches!(e, GgufError::BadAlignment(x) if x == u64::from(a)),
            "{a}: {e:?}"
        );
    }
    // Wrong type.
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment").u32(T_U64).u64(32);
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::WrongType { ref key, expected: "u32", .. } if key == "general.alignment"),
        "{e:?}"
    );
    // Via the writer, as a metadata value it does not interpret.
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", Value::U32(24));
    assert!(matches!(
        parse_err(&w.to_bytes()),
        GgufError::BadAlignment(24)
    ));
}

#[test]
fn invalid_utf8() {
    // In a key.
    let mut r = Raw::header(3, 0, 1);
    r.str_bytes(b"ab\xffcd").u32(T_U8).u8(0);
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::InvalidUtf8 { ref what, offset: 34 } if what.contains("key #0")),
        "{e:?}"
    );
    // In a string value.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(T_STRING).str_bytes(b"\xc3");
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::InvalidUtf8 { ref what, .. } if what.contains("'k'")),
        "{e:?}"
    );
    // In a string array element.
    let mut r = Raw::header(3, 0, 1);
    r.str("k")
        .u32(T_ARRAY)
        .u32(T_STRING)
        .u64(2)
        .str("ok")
        .str_bytes(b"\xed\xa0\x80"); // a surrogate
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::InvalidUtf8 { ref what, .. } if what.contains("element 1")),
        "{e:?}"
    );
    // In a tensor name.
    let mut r = Raw::header(3, 1, 0);
    r.str_bytes(b"\x80")
        .u32(1)
        .u64(1)
        .u32(24)
        .u64(0)
        .pad(32)
        .zeros(32);
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::InvalidUtf8 { ref what, .. } if what.contains("tensor #0")),
        "{e:?}"
    );
}

#[test]
fn invalid_bool() {
    let mut r = Raw::header(3, 0, 1);
    r.str("b").u32(T_BOOL).u8(2);
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::InvalidBool { ref key, value: 2, offset: 37 } if key == "b"),
        "{e:?}"
    );
    let mut r = Raw::header(3, 0, 1);
    r.str("b")
        .u32(T_ARRAY)
        .u32(T_BOOL)
        .u64(3)
        .bytes(&[1, 0, 255]);
    assert!(matches!(
        parse_err(&r.0),
        GgufError::InvalidBool { value: 255, .. }
    ));
}

#[test]
fn invalid_value_type() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(13).u64(0);
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::InvalidValueType { ref key, id: 13, offset: 33 } if key == "k"),
        "{e:?}"
    );
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(T_ARRAY).u32(u32::MAX).u64(0);
    assert!(matches!(
        parse_err(&r.0),
        GgufError::InvalidValueType { id: u32::MAX, .. }
    ));
}

#[test]
fn deeply_nested_arrays() {
    fn nest(depth: usize) -> Array {
        let mut a = Array::U8(vec![1]);
        for _ in 1..depth {
            a = Array::Array(vec![a]);
        }
        a
    }
    let write = |depth| {
        let mut w = GgufWriter::new();
        w.add_metadata("deep", Value::Array(nest(depth)));
        w.to_bytes()
    };
    let f = GgufFile::from_bytes(write(tandem_gguf::MAX_ARRAY_DEPTH)).unwrap();
    assert_eq!(
        f.metadata().get("deep"),
        Some(&Value::Array(nest(tandem_gguf::MAX_ARRAY_DEPTH)))
    );
    let e = parse_err(&write(tandem_gguf::MAX_ARRAY_DEPTH + 1));
    assert!(
        matches!(e, GgufError::NestingTooDeep { ref key, max: 8, .. } if key == "deep"),
        "{e:?}"
    );
    // A million levels of hand-made nesting: rejected at depth 9, no stack overflow.
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(T_ARRAY);
    for _ in 0..1_000_000 {
        r.u32(T_ARRAY).u64(1);
    }
    assert!(matches!(parse_err(&r.0), GgufError::NestingTooDeep { .. }));
}

#[test]
fn v1_and_other_versions() {
    // GGUF v1 used u32 counts.
    let mut r = Raw(b"GGUF".to_vec());
    r.u32(1).u32(0).u32(0);
    let e = parse_err(&r.0);
    assert!(matches!(e, GgufError::UnsupportedVersion(1)), "{e:?}");
    assert!(e.to_string().contains("v1"), "{e}");
    for v in [0, 4, 0xFFFF] {
        let e = parse_err(&Raw::header(v, 0, 0).0);
        assert!(
            matches!(e, GgufError::UnsupportedVersion(x) if x == v),
            "{e:?}"
        );
    }
}

#[test]
fn big_endian_file() {
    let mut r = Raw(b"GGUF".to_vec());
    r.bytes(&3u32.to_be_bytes())
        .bytes(&0u64.to_be_bytes())
        .bytes(&0u64.to_be_bytes());
    let e = parse_err(&r.0);
    assert!(
        matches!(e, GgufError::BigEndian { swapped: 3, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("big-endian GGUF is not supported"),
        "{e}"
    );
    // Magic written big-endian as well.
    let mut r = Raw(b"FUGG".to_vec());
    r.bytes(&2u32.to_be_bytes());
    assert!(matches!(
        parse_err(&r.0),
        GgufError::BigEndian { swapped: 2, .. }
    ));
}

#[test]
fn bad_magic() {
    let e = parse_err(b"GGML\x03\x00\x00\x00");
    assert!(
        matches!(e, GgufError::BadMagic { found } if &found == b"GGML"),
        "{e:?}"
    );
    assert!(matches!(parse_err(b""), GgufError::Truncated { .. }));
    assert!(matches!(parse_err(b"GGU"), GgufError::Truncated { .. }));
}

#[test]
fn messages_are_single_line_and_specific() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor_info("blk.0.attn_q.weight", &[4], 0, 16)
        .pad(32)
        .zeros(64);
    let msg = parse_err(&r.0).to_string();
    assert!(
        msg.contains("blk.0.attn_q.weight") && msg.contains("16"),
        "{msg}"
    );
}
