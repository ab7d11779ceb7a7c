//! The streaming writer: same bytes as the in-memory writer, and misuse is an
//! error rather than a corrupt file.

use tandem_gguf::{GgmlType, GgufFile, GgufWriter, Value};

use crate::common::*;

/// Tensors of several types and sizes (some not multiples of the alignment).
fn tensors() -> Vec<(String, Vec<u64>, GgmlType, Vec<u8>)> {
    [
        GgmlType::F32,
        GgmlType::Q4_K,
        GgmlType::Q8_0,
        GgmlType::F16,
        GgmlType::Q6_K,
    ]
    .iter()
    .enumerate()
    .map(|(i, &ty)| {
        let dims = vec![ty.block_len() * (i as u64 + 1), 3];
        let n = ty.bytes_for(dims[0], dims[0] * 3).unwrap() as usize;
        (format!("t{i}"), dims, ty, pattern(n, i as u8))
    })
    .collect()
}

fn base() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::from("llama"));
    w.add_metadata("x", Value::U32(7));
    w
}

#[test]
fn streaming_matches_in_memory_bytes() {
    let ts = tensors();
    let mut mem = base();
    for (n, d, ty, data) in &ts {
        mem.add_tensor(n.clone(), d.clone(), *ty, data.clone())
            .unwrap();
    }
    let want = mem.to_bytes();

    // All tensors streamed, in odd-sized chunks; and a mix where every other
    // tensor comes with its data.
    for mixed in [false, true] {
        let mut w = base();
        for (i, (n, d, ty, data)) in ts.iter().enumerate() {
            if mixed && i % 2 == 0 {
                w.add_tensor(n.clone(), d.clone(), *ty, data.clone())
                    .unwrap();
            } else {
                w.add_tensor_info(n.clone(), d.clone(), *ty).unwrap();
            }
        }
        let mut s = w.stream(Vec::new()).unwrap();
        for (i, (n, _, _, data)) in ts.iter().enumerate() {
            if mixed && i % 2 == 0 {
                continue;
            }
            assert_eq!(s.pending().map(|p| p.0), Some(n.as_str()));
            for chunk in data.chunks(7) {
                s.write_data(chunk).unwrap();
            }
        }
        assert_eq!(s.pending(), None);
        let got = s.finish().unwrap();
        assert_eq!(got, want, "mixed={mixed}");
    }
    let f = GgufFile::from_bytes(want).unwrap();
    assert_eq!(f.tensor_data(f.tensor("t3").unwrap()), &ts[3].3[..]);
}

#[test]
fn streaming_misuse_is_an_error() {
    let mut w = base();
    w.add_tensor_info("a", vec![32], GgmlType::F32).unwrap();
    // Declared-only tensors cannot be written in one go.
    assert!(w.write(&mut Vec::new()).is_err());
    assert!(w.to_bytes().is_empty());
    // Too many bytes for the tensor.
    let mut s = w.stream(Vec::new()).unwrap();
    assert!(s.write_data(&[0u8; 129]).is_err());
    // Too few.
    s.write_data(&[0u8; 100]).unwrap();
    assert_eq!(s.pending(), Some(("a", 28)));
    assert!(s.finish().is_err());
    // Data after the last tensor.
    let mut s = w.stream(Vec::new()).unwrap();
    s.write_data(&[0u8; 128]).unwrap();
    assert!(s.write_data(&[1]).is_err());
    assert!(s.finish().is_ok());
    // Size and shape validation as for add_tensor.
    assert!(w.add_tensor_info("a", vec![32], GgmlType::F32).is_err());
    assert!(w.add_tensor_info("b", vec![31], GgmlType::Q8_0).is_err());
}
