//! Writer -> reader round trips and API behaviour.

use tandem_gguf::{Array, GgmlType, GgufError, GgufFile, GgufWriter, Value};

use crate::common::*;

fn check_roundtrip(version: u32, alignment: Option<u64>) {
    let mut w = GgufWriter::new();
    w.set_version(version).unwrap();
    if let Some(a) = alignment {
        w.set_alignment(a).unwrap();
    }
    let values = all_values();
    for (k, v) in &values {
        w.add_metadata(k.clone(), v.clone());
    }
    // Every tensor type, plus a few shapes.
    let mut expected = Vec::new();
    for (i, &ty) in GgmlType::ALL.iter().enumerate() {
        let dims = match i % 4 {
            0 => vec![ty.block_len()],
            1 => small_dims(ty),
            2 => vec![ty.block_len() * 3, 2, 2],
            _ => vec![ty.block_len(), 1, 2, 3],
        };
        let n = ty.bytes_for(dims[0], dims.iter().product()).unwrap() as usize;
        let data = pattern(n, i as u8);
        let name = format!("tensor.{i}.{}", ty.name().to_lowercase());
        w.add_tensor(name.clone(), dims.clone(), ty, data.clone())
            .unwrap();
        expected.push((name, dims, ty, data));
    }
    let bytes = w.to_bytes();
    let align = alignment.unwrap_or(32);
    assert_eq!(bytes.len() as u64 % align, 0);

    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.version(), version);
    assert_eq!(f.alignment(), align);
    assert_eq!(f.n_files(), 1);
    assert_eq!(f.total_bytes(), bytes.len() as u64);

    // Metadata: same pairs in the same order (plus general.alignment when set).
    let got: Vec<(String, Value)> = f
        .metadata()
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let mut want = Vec::new();
    if let Some(a) = alignment {
        want.push(("general.alignment".to_string(), Value::U32(a as u32)));
    }
    want.extend(values);
    assert_eq!(got, want);
    assert_eq!(f.metadata().len(), want.len());

    // Tensors.
    assert_eq!(f.tensors().len(), expected.len());
    let data_start = f.data_offset(0).unwrap();
    assert_eq!(data_start % align, 0);
    for (t, (name, dims, ty, data)) in f.tensors().iter().zip(&expected) {
        assert_eq!(&t.name, name);
        assert_eq!(&t.dims, dims);
        assert_eq!(t.ggml_type, *ty);
        assert_eq!(t.n_elements, dims.iter().product::<u64>());
        assert_eq!(t.n_bytes, data.len() as u64);
        assert_eq!(t.offset % align, 0, "{name} misaligned");
        assert_eq!(t.file_index, 0);
        assert_eq!(f.tensor_data(t), &data[..]);
        assert_eq!(f.tensor(name), Some(t));
    }
    assert!(f.tensor("nope").is_none());

    // Rewriting what was read gives identical bytes.
    assert_eq!(rewrite(&f, version), bytes);
}

/// Builds a writer from a parsed file and serialises it.
pub fn rewrite(f: &GgufFile, version: u32) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_version(version).unwrap();
    for (k, v) in f.metadata().iter() {
        w.add_metadata(k, v.clone());
    }
    for t in f.tensors() {
        w.add_tensor(
            t.name.clone(),
            t.dims.clone(),
            t.ggml_type,
            f.tensor_data(t).to_vec(),
        )
        .unwrap();
    }
    w.to_bytes()
}

#[test]
fn roundtrip_v3_default_alignment() {
    check_roundtrip(3, None);
}

#[test]
fn roundtrip_v3_alignment_32() {
    check_roundtrip(3, Some(32));
}

#[test]
fn roundtrip_v3_alignment_64() {
    check_roundtrip(3, Some(64));
}

#[test]
fn roundtrip_v2_alignment_64() {
    check_roundtrip(2, Some(64));
}

#[test]
fn roundtrip_v2_default_alignment() {
    check_roundtrip(2, None);
}

#[test]
fn roundtrip_odd_alignments() {
    check_roundtrip(3, Some(1));
    check_roundtrip(3, Some(4096));
}

#[test]
fn empty_file_roundtrips() {
    let bytes = GgufWriter::new().to_bytes();
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert!(f.metadata().is_empty());
    assert!(f.tensors().is_empty());
    // header-only file without trailing padding is fine when there are no tensors
    let f = Raw::header(3, 0, 0).parse().unwrap();
    assert_eq!(f.version(), 3);
}

#[test]
fn v2_and_v3_have_identical_layout() {
    let mut a = sample_writer();
    a.set_version(2).unwrap();
    let mut b = sample_writer().to_bytes();
    let a = a.to_bytes();
    assert_eq!(&a[4..8], &2u32.to_le_bytes());
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(a, b);
}

#[test]
fn alignment_via_metadata_is_honoured() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", Value::U32(128));
    w.add_tensor("a", vec![3], GgmlType::F32, vec![1; 12])
        .unwrap();
    w.add_tensor("b", vec![5], GgmlType::I8, vec![2; 5])
        .unwrap();
    assert_eq!(w.alignment(), 128);
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(f.alignment(), 128);
    for t in f.tensors() {
        assert_eq!(t.offset % 128, 0);
    }
    assert_eq!(f.tensor_data(f.tensor("b").unwrap()), &[2; 5]);
}

#[test]
fn from_static_and_open() {
    // A `'static` image without leaking it (LeakSanitizer, tools/asan.sh,
    // reports a leaked box): a static owns it.
    static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let bytes = IMAGE.get_or_init(|| sample_writer().to_bytes());
    let a = GgufFile::from_static(bytes).unwrap();
    let dir = temp_dir("open");
    let path = dir.join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    let b = GgufFile::open(&path).unwrap();
    assert_eq!(b.path(0), Some(path.as_path()));
    assert_eq!(a.metadata(), b.metadata());
    assert_eq!(a.tensors(), b.tensors());
    for t in a.tensors() {
        assert_eq!(a.tensor_data(t), b.tensor_data(t));
        assert_eq!(a.tensor_data(t).len() as u64, t.n_bytes);
    }
    // Errors from open() name the file.
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, &bytes[..20]).unwrap();
    let e = GgufFile::open(&bad).unwrap_err();
    assert!(e.to_string().contains("bad.gguf"), "{e}");
    assert!(matches!(e.root(), GgufError::Truncated { .. }), "{e}");
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&empty).unwrap_err().root(),
        GgufError::Truncated { .. }
    ));
    let missing = dir.join("missing.gguf");
    let e = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e}");
    assert!(e.to_string().contains("missing.gguf"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn foreign_tensor_info_gives_empty_slice() {
    let f = GgufFile::from_bytes(sample_writer().to_bytes()).unwrap();
    let mut t = f.tensors()[0].clone();
    t.offset = u64::MAX - 3;
    assert!(f.tensor_data(&t).is_empty());
    t.file_index = 7;
    assert!(f.tensor_data(&t).is_empty());
}

#[test]
fn typed_getters() {
    let f = GgufFile::from_bytes(sample_writer().to_bytes()).unwrap();
    let m = f.metadata();
    assert_eq!(m.get_u64("t.u8").unwrap(), Some(200));
    assert_eq!(m.get_u64("t.u64").unwrap(), Some(u64::MAX));
    assert_eq!(m.get_u32("t.u32").unwrap(), Some(4_000_000_000));
    assert_eq!(m.get_u32("t.u16").unwrap(), Some(60000));
    assert_eq!(m.get_u32("missing").unwrap(), None);
    assert!(matches!(
        m.get_u32("t.u64"),
        Err(GgufError::WrongType { ref key, .. }) if key == "t.u64"
    ));
    assert!(matches!(
        m.get_u64("t.i8"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        m.get_u64("t.string"),
        Err(GgufError::WrongType { .. })
    ));
    assert_eq!(m.get_i64("t.i64").unwrap(), Some(i64::MIN));
    assert!(m.get_i64("t.u64").is_err());
    assert_eq!(m.get_f32("t.f32").unwrap(), Some(1.5));
    assert_eq!(m.get_f32("t.i16").unwrap(), Some(-30000.0));
    assert_eq!(m.get_f64("t.f64").unwrap(), Some(-2.25e300));
    assert!(m.get_f32("t.bool_true").is_err());
    assert_eq!(m.get_bool("t.bool_true").unwrap(), Some(true));
    assert!(m.get_bool("t.u8").is_err());
    assert_eq!(m.get_str("t.string").unwrap(), Some("héllo wörld ✓"));
    assert!(m.get_str("a.string").is_err());
    let a = m.get_array("a.string").unwrap().unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a.type_name(), "array<string>");
    assert_eq!(a.as_strings().unwrap()[2], "日本");
    assert!(m.get_array("t.u8").is_err());
    let e = m.get_str("t.u32").unwrap_err();
    assert_eq!(
        e.to_string(),
        "metadata key 't.u32': expected a string, found u32 4000000000"
    );

    let ints = m.get_array("a.i32").unwrap().unwrap();
    assert_eq!(ints.as_i32s(), Some(&[-7, 8, -9][..]));
    assert_eq!(ints.to_u64s(), None);
    assert_eq!(
        m.get_array("a.u32").unwrap().unwrap().to_u64s(),
        Some(vec![7, 8, 9])
    );
    assert_eq!(
        m.get_array("a.u8").unwrap().unwrap().to_u64s(),
        Some(vec![0, 1, 255])
    );
    assert_eq!(
        m.get_array("a.f32").unwrap().unwrap().as_f32s(),
        Some(&[0.5, -1.0, f32::INFINITY][..])
    );
    assert!(m.get_array("a.empty").unwrap().unwrap().is_empty());
    assert_eq!(m.get("a.nested").unwrap().type_name(), "array<array>");
    assert_eq!(Value::I32(-1).as_u64(), None);
    assert_eq!(Value::U64(u64::MAX).as_i64(), None);
    assert_eq!(Value::I8(-3).as_i64(), Some(-3));
    assert_eq!(Value::U16(3).as_f64(), Some(3.0));
    assert_eq!(Value::from("x").as_str(), Some("x"));
    assert_eq!(Value::Bool(true).type_name(), "bool");
    assert!(Value::from(vec![1u32]).as_array().is_some());
    assert_eq!(Array::from(vec![true]).type_name(), "array<bool>");
}

#[test]
fn ggml_type_table() {
    for &t in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(t.id()), Some(t));
        assert_eq!(t.to_string(), t.name());
        assert!(t.block_len() >= 1 && t.block_bytes() >= 1);
    }
    assert_eq!(GgmlType::ALL.len(), 34);
    for id in [4, 5, 31, 32, 33, 36, 37, 38, 40, 1000, u32::MAX] {
        assert_eq!(GgmlType::from_id(id), None, "{id}");
    }
    assert_eq!(GgmlType::Q4_K.name(), "Q4_K");
    assert_eq!(GgmlType::Q4_K.id(), 12);
    assert_eq!(GgmlType::MXFP4.id(), 39);
    // ggml-common.h: block_q1_0 { f16 d; u8 qs[QK1_0 / 8] }, QK1_0 = 128;
    // block_q2_0 { f16 d; u8 qs[QK2_0 / 4] }, QK2_0 = 64
    assert_eq!(GgmlType::from_id(41), Some(GgmlType::Q1_0));
    assert_eq!(
        (GgmlType::Q1_0.block_len(), GgmlType::Q1_0.block_bytes()),
        (128, 18)
    );
    assert_eq!(GgmlType::from_id(42), Some(GgmlType::Q2_0));
    assert_eq!(
        (GgmlType::Q2_0.block_len(), GgmlType::Q2_0.block_bytes()),
        (64, 18)
    );
    assert_eq!(GgmlType::Q1_0.bytes_for(64, 128), None);
    assert_eq!(GgmlType::IQ4_XS.block_bytes(), 136);
    assert_eq!(
        GgmlType::Q6_K.bytes_for(4096, 4096 * 32),
        Some(32 * 16 * 210)
    );
    assert_eq!(GgmlType::Q4_0.bytes_for(16, 16), None);
    assert_eq!(GgmlType::F32.bytes_for(3, 6), Some(24));
    assert_eq!(GgmlType::F64.bytes_for(1, u64::MAX), None);
}

#[test]
fn writer_rejects_bad_tensors() {
    let mut w = GgufWriter::new();
    assert!(matches!(
        w.add_tensor("x", vec![31], GgmlType::Q4_0, vec![0; 18]),
        Err(GgufError::RowNotBlockAligned { .. })
    ));
    assert!(matches!(
        w.add_tensor("x", vec![4], GgmlType::F32, vec![0; 15]),
        Err(GgufError::DataSizeMismatch {
            expected: 16,
            actual: 15,
            ..
        })
    ));
    assert!(matches!(
        w.add_tensor("x", vec![], GgmlType::F32, vec![]),
        Err(GgufError::TooManyDims { n: 0, .. })
    ));
    assert!(matches!(
        w.add_tensor("x", vec![1; 5], GgmlType::F32, vec![0; 4]),
        Err(GgufError::TooManyDims { n: 5, .. })
    ));
    assert!(matches!(
        w.add_tensor("x", vec![4, 0], GgmlType::F32, vec![]),
        Err(GgufError::ZeroOrOverflowDims { .. })
    ));
    assert!(matches!(
        w.add_tensor("x", vec![1 << 40, 1 << 40], GgmlType::F32, vec![]),
        Err(GgufError::ZeroOrOverflowDims { .. })
    ));
    assert!(matches!(
        w.add_tensor("n".repeat(64), vec![1], GgmlType::I8, vec![0]),
        Err(GgufError::TensorNameTooLong { len: 64, .. })
    ));
    w.add_tensor("n".repeat(63), vec![1], GgmlType::I8, vec![0])
        .unwrap();
    assert!(matches!(
        w.add_tensor("n".repeat(63), vec![1], GgmlType::I8, vec![0]),
        Err(GgufError::DuplicateTensor { .. })
    ));
    assert!(matches!(
        w.set_alignment(48),
        Err(GgufError::BadAlignment(48))
    ));
    assert!(matches!(
        w.set_alignment(0),
        Err(GgufError::BadAlignment(0))
    ));
    assert!(w.set_alignment(1 << 32).is_err());
    assert!(matches!(
        w.set_version(1),
        Err(GgufError::UnsupportedVersion(1))
    ));
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(f.tensors().len(), 1);
}

#[test]
fn writer_to_file() {
    let dir = temp_dir("write");
    let path = dir.join("w.gguf");
    let w = sample_writer();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    w.write(&mut out).unwrap();
    drop(out);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors().len(), 4);
    assert_eq!(std::fs::read(&path).unwrap(), w.to_bytes());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn large_vocab_like_array() {
    let vocab: Vec<String> = (0..50_000).map(|i| format!("tok{i}")).collect();
    let scores: Vec<f32> = (0..50_000).map(|i| i as f32).collect();
    let mut w = GgufWriter::new();
    w.add_metadata("tokenizer.ggml.tokens", Value::from(vocab.clone()));
    w.add_metadata("tokenizer.ggml.scores", Value::from(scores.clone()));
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    let m = f.metadata();
    assert_eq!(
        m.get_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .as_strings(),
        Some(&vocab[..])
    );
    assert_eq!(
        m.get_array("tokenizer.ggml.scores")
            .unwrap()
            .unwrap()
            .as_f32s(),
        Some(&scores[..])
    );
}

#[test]
fn public_types_are_thread_safe() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GgufFile>();
    assert_send_sync::<GgufWriter>();
    assert_send_sync::<GgufError>();
    assert_send_sync::<tandem_gguf::Metadata>();
}
