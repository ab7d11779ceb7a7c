//! Property tests: valid generated files survive a write/read/write cycle, and
//! randomly mutated files never panic the parser; whatever parses is fully in bounds.

use proptest::collection::vec;
use proptest::prelude::*;

use tandem_gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};

fn arb_array() -> impl Strategy<Value = Array> {
    let leaf = prop_oneof![
        vec(any::<u8>(), 0..4).prop_map(Array::U8),
        vec(any::<i8>(), 0..4).prop_map(Array::I8),
        vec(any::<u16>(), 0..4).prop_map(Array::U16),
        vec(any::<i16>(), 0..4).prop_map(Array::I16),
        vec(any::<u32>(), 0..4).prop_map(Array::U32),
        vec(any::<i32>(), 0..4).prop_map(Array::I32),
        vec(any::<u64>(), 0..4).prop_map(Array::U64),
        vec(any::<i64>(), 0..4).prop_map(Array::I64),
        vec(any::<f32>(), 0..4).prop_map(Array::F32),
        vec(any::<f64>(), 0..4).prop_map(Array::F64),
        vec(any::<bool>(), 0..4).prop_map(Array::Bool),
        vec("\\PC{0,6}", 0..4).prop_map(Array::String),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| vec(inner, 0..3).prop_map(Array::Array))
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        any::<f32>().prop_map(Value::F32),
        any::<f64>().prop_map(Value::F64),
        any::<bool>().prop_map(Value::Bool),
        "\\PC{0,12}".prop_map(Value::String),
        arb_array().prop_map(Value::Array),
    ]
}

#[derive(Debug, Clone)]
struct TensorSpec {
    ty: GgmlType,
    dims: Vec<u64>,
    seed: u8,
}

fn arb_tensor() -> impl Strategy<Value = TensorSpec> {
    (
        proptest::sample::select(GgmlType::ALL),
        1u64..3,
        vec(1u64..4, 0..3),
        any::<u8>(),
    )
        .prop_map(|(ty, blocks, rest, seed)| {
            let mut dims = vec![ty.block_len() * blocks];
            dims.extend(rest);
            TensorSpec { ty, dims, seed }
        })
}

#[derive(Debug, Clone)]
struct FileSpec {
    version: u32,
    alignment: Option<u64>,
    metadata: Vec<Value>,
    tensors: Vec<TensorSpec>,
}

fn arb_file() -> impl Strategy<Value = FileSpec> {
    (
        prop_oneof![Just(2u32), Just(3u32)],
        prop_oneof![Just(None), Just(Some(1u64)), Just(Some(32)), Just(Some(64))],
        vec(arb_value(), 0..6),
        vec(arb_tensor(), 0..5),
    )
        .prop_map(|(version, alignment, metadata, tensors)| FileSpec {
            version,
            alignment,
            metadata,
            tensors,
        })
}

fn build(spec: &FileSpec) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_version(spec.version).unwrap();
    if let Some(a) = spec.alignment {
        w.set_alignment(a).unwrap();
    }
    for (i, v) in spec.metadata.iter().enumerate() {
        w.add_metadata(format!("key.{i}"), v.clone());
    }
    for (i, t) in spec.tensors.iter().enumerate() {
        let n = t.ty.bytes_for(t.dims[0], t.dims.iter().product()).unwrap() as usize;
        let data = (0..n).map(|j| (j as u8) ^ t.seed).collect();
        w.add_tensor(format!("t{i}"), t.dims.clone(), t.ty, data)
            .unwrap();
    }
    w.to_bytes()
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR the byte at a position (taken modulo the length).
    Flip(usize, u8),
    /// Overwrite 8 bytes at a position with an extreme value.
    SetU64(usize, u64),
    /// Overwrite 4 bytes at a position with an extreme value.
    SetU32(usize, u32),
    /// Keep only a prefix (length taken modulo the length + 1).
    Truncate(usize),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
    /// Delete up to n bytes at a position.
    Delete(usize, usize),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let extreme64 = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 31),
        Just(i64::MAX as u64),
        Just(1 << 32),
        Just(1 << 40),
        Just(1 << 63),
        any::<u64>(),
        0u64..300,
    ];
    let extreme32 = prop_oneof![
        Just(0u32),
        Just(u32::MAX),
        Just(1 << 31),
        0u32..45,
        any::<u32>(),
    ];
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(p, x)| Mutation::Flip(p, x)),
        3 => (any::<usize>(), extreme64).prop_map(|(p, v)| Mutation::SetU64(p, v)),
        3 => (any::<usize>(), extreme32).prop_map(|(p, v)| Mutation::SetU32(p, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), vec(any::<u8>(), 1..9)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => (any::<usize>(), 1usize..9).prop_map(|(p, n)| Mutation::Delete(p, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    if len == 0 {
        if let Mutation::Insert(_, b) = m {
            bytes.extend_from_slice(b);
        }
        return;
    }
    match m {
        Mutation::Flip(p, x) => bytes[p % len] ^= x,
        Mutation::SetU64(p, v) => {
            let p = p % len;
            let end = (p + 8).min(len);
            bytes[p..end].copy_from_slice(&v.to_le_bytes()[..end - p]);
        }
        Mutation::SetU32(p, v) => {
            let p = p % len;
            let end = (p + 4).min(len);
            bytes[p..end].copy_from_slice(&v.to_le_bytes()[..end - p]);
        }
        Mutation::Truncate(n) => bytes.truncate(n % (len + 1)),
        Mutation::Insert(p, b) => {
            let p = p % (len + 1);
            bytes.splice(p..p, b.iter().copied());
        }
        Mutation::Delete(p, n) => {
            let p = p % len;
            let end = (p + n).min(len);
            bytes.drain(p..end);
        }
    }
}

/// Everything a successfully parsed file promises.
fn check_invariants(f: &GgufFile, file_len: u64) {
    let align = f.alignment();
    assert!(align.is_power_of_two());
    let mut ranges = Vec::new();
    for t in f.tensors() {
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, t.n_bytes, "{}", t.name);
        assert!(t.offset.checked_add(t.n_bytes).unwrap() <= file_len);
        assert_eq!(t.offset % align, 0);
        assert!((1..=4).contains(&t.dims.len()));
        assert!(t.dims.iter().all(|&d| d >= 1));
        assert_eq!(t.n_elements, t.dims.iter().product::<u64>());
        assert_eq!(
            Some(t.n_bytes),
            t.ggml_type.bytes_for(t.dims[0], t.n_elements)
        );
        assert!(t.name.len() <= tandem_gguf::MAX_TENSOR_NAME_LEN);
        assert_eq!(f.tensor(&t.name), Some(t));
        ranges.push((t.offset, t.offset + t.n_bytes));
    }
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap {:?}", w);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// write -> read -> write reproduces the bytes exactly (NaN-safe, order-preserving).
    #[test]
    fn generated_files_roundtrip(spec in arb_file()) {
        let bytes = build(&spec);
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        check_invariants(&f, bytes.len() as u64);
        prop_assert_eq!(f.version(), spec.version);
        prop_assert_eq!(f.tensors().len(), spec.tensors.len());
        prop_assert_eq!(crate::roundtrip::rewrite(&f, spec.version), bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Mutated files parse to Ok or Err, never panic; Ok results keep every promise.
    #[test]
    fn mutated_files_never_panic(
        spec in arb_file(),
        mutations in vec(arb_mutation(), 1..6),
    ) {
        let mut bytes = build(&spec);
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let len = bytes.len() as u64;
        match GgufFile::from_bytes(bytes) {
            Ok(f) => check_invariants(&f, len),
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 5_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random bytes after a plausible header.
    #[test]
    fn random_bodies_never_panic(
        version in prop_oneof![Just(2u32), Just(3u32)],
        n_tensors in prop_oneof![0u64..4, any::<u64>()],
        n_kv in prop_oneof![0u64..4, any::<u64>()],
        body in vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&n_tensors.to_le_bytes());
        bytes.extend_from_slice(&n_kv.to_le_bytes());
        bytes.extend_from_slice(&body);
        let len = bytes.len() as u64;
        if let Ok(f) = GgufFile::from_bytes(bytes) {
            check_invariants(&f, len);
        }
    }
}
