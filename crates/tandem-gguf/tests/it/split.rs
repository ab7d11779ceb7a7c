//! Multi-file (gguf-split) models.

use std::path::{Path, PathBuf};

use tandem_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value};

use crate::common::*;

struct ShardSpec {
    split_no: Option<u16>,
    split_count: Option<u16>,
    tensors: Vec<String>,
}

/// Writes `specs.len()` shards named `model-0000i-of-0000N.gguf` into `dir`.
/// Shard 1 also gets regular metadata and `split.tensors.count = tensors_count`.
fn write_shards(dir: &Path, specs: &[ShardSpec], tensors_count: Option<i32>) -> Vec<PathBuf> {
    let n = specs.len();
    let mut paths = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let mut w = GgufWriter::new();
        if i == 0 {
            w.add_metadata("general.architecture", Value::from("llama"));
            w.add_metadata("llama.block_count", Value::U32(3));
        }
        if let Some(no) = spec.split_no {
            w.add_metadata("split.no", Value::U16(no));
        }
        if let Some(c) = spec.split_count {
            w.add_metadata("split.count", Value::U16(c));
        }
        if i == 0 {
            if let Some(t) = tensors_count {
                w.add_metadata("split.tensors.count", Value::I32(t));
            }
        }
        for (j, name) in spec.tensors.iter().enumerate() {
            let ty = [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q6_K][j % 3];
            let dims = small_dims(ty);
            let len = ty.bytes_for(dims[0], dims.iter().product()).unwrap() as usize;
            w.add_tensor(name.clone(), dims, ty, data_for(name, len))
                .unwrap();
        }
        let path = dir.join(format!("model-{:05}-of-{:05}.gguf", i + 1, n));
        std::fs::write(&path, w.to_bytes()).unwrap();
        paths.push(path);
    }
    paths
}

fn data_for(name: &str, len: usize) -> Vec<u8> {
    pattern(len, name.len() as u8 ^ name.as_bytes()[name.len() - 1])
}

fn good_specs() -> Vec<ShardSpec> {
    (0..3u16)
        .map(|i| ShardSpec {
            split_no: Some(i),
            split_count: Some(3),
            tensors: (0..(i + 2))
                .map(|j| format!("blk.{i}.t{j}.weight"))
                .collect(),
        })
        .collect()
}

#[test]
fn open_three_shards() {
    let dir = temp_dir("split-ok");
    let specs = good_specs();
    let total: usize = specs.iter().map(|s| s.tensors.len()).sum();
    let paths = write_shards(&dir, &specs, Some(total as i32));
    let f = GgufFile::open(&paths[0]).unwrap();
    assert_eq!(f.n_files(), 3);
    assert_eq!(f.tensors().len(), total);
    assert_eq!(
        f.metadata().get_str("general.architecture").unwrap(),
        Some("llama")
    );
    assert_eq!(f.metadata().get_u32("split.count").unwrap(), Some(3));
    let sizes: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(f.total_bytes(), sizes);
    for (i, spec) in specs.iter().enumerate() {
        assert_eq!(f.path(i), Some(paths[i].as_path()));
        for name in &spec.tensors {
            let t = f.tensor(name).unwrap();
            assert_eq!(t.file_index, i, "{name}");
            let data = f.tensor_data(t);
            assert_eq!(data.len() as u64, t.n_bytes);
            assert_eq!(data, &data_for(name, data.len())[..], "{name}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn split_keys_are_optional() {
    let dir = temp_dir("split-nokeys");
    let mut specs = good_specs();
    for s in specs.iter_mut().skip(1) {
        s.split_no = None;
        s.split_count = None;
    }
    let paths = write_shards(&dir, &specs, None);
    let f = GgufFile::open(&paths[0]).unwrap();
    assert_eq!(f.n_files(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_shard() {
    let dir = temp_dir("split-missing");
    let paths = write_shards(&dir, &good_specs(), Some(9));
    std::fs::remove_file(&paths[2]).unwrap();
    let e = GgufFile::open(&paths[0]).unwrap_err();
    assert!(matches!(e, GgufError::Split(_)), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("model-00003-of-00003.gguf"), "{msg}");
    assert!(msg.contains("missing shard 3 of 3"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn opening_a_later_shard_names_the_first() {
    let dir = temp_dir("split-second");
    let paths = write_shards(&dir, &good_specs(), Some(9));
    let e = GgufFile::open(&paths[1]).unwrap_err();
    assert!(matches!(e, GgufError::Split(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&paths[0].display().to_string()),
        "message should name the first shard: {msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inconsistent_split_count() {
    let dir = temp_dir("split-count");
    let mut specs = good_specs();
    specs[1].split_count = Some(2);
    let paths = write_shards(&dir, &specs, Some(9));
    let e = GgufFile::open(&paths[0]).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, GgufError::Split(_)), "{e:?}");
    assert!(msg.contains("split.count is 2"), "{msg}");
    assert!(msg.contains("model-00002-of-00003.gguf"), "{msg}");

    // In the first shard as well.
    let dir2 = temp_dir("split-count1");
    let mut specs = good_specs();
    specs[0].split_count = Some(4);
    let paths = write_shards(&dir2, &specs, Some(9));
    let msg = GgufFile::open(&paths[0]).unwrap_err().to_string();
    assert!(msg.contains("split.count is 4"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[test]
fn inconsistent_split_no_and_tensor_count() {
    let dir = temp_dir("split-no");
    let mut specs = good_specs();
    specs[2].split_no = Some(1);
    let paths = write_shards(&dir, &specs, Some(9));
    let msg = GgufFile::open(&paths[0]).unwrap_err().to_string();
    assert!(msg.contains("split.no is 1"), "{msg}");

    let dir2 = temp_dir("split-tcount");
    let paths = write_shards(&dir2, &good_specs(), Some(8));
    let e = GgufFile::open(&paths[0]).unwrap_err();
    assert!(e.to_string().contains("split.tensors.count is 8"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[test]
fn duplicate_tensor_across_shards() {
    let dir = temp_dir("split-dup");
    let mut specs = good_specs();
    specs[2].tensors[0] = specs[0].tensors[1].clone();
    let paths = write_shards(&dir, &specs, Some(9));
    let e = GgufFile::open(&paths[0]).unwrap_err();
    assert!(
        matches!(e, GgufError::DuplicateTensor { ref tensor, .. } if tensor == "blk.0.t1.weight"),
        "{e:?}"
    );
    assert!(e.to_string().contains("model-00003-of-00003.gguf"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_shard_is_named() {
    let dir = temp_dir("split-corrupt");
    let paths = write_shards(&dir, &good_specs(), Some(9));
    let bytes = std::fs::read(&paths[1]).unwrap();
    std::fs::write(&paths[1], &bytes[..bytes.len() / 2]).unwrap();
    let e = GgufFile::open(&paths[0]).unwrap_err();
    assert!(matches!(e, GgufError::InFile { .. }), "{e:?}");
    assert!(e.to_string().contains("model-00002-of-00003.gguf"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn single_file_claiming_split() {
    let dir = temp_dir("split-single");
    let mut w = GgufWriter::new();
    w.add_metadata("split.count", Value::U16(3));
    w.add_metadata("split.no", Value::U16(0));
    let path = dir.join("model.gguf");
    std::fs::write(&path, w.to_bytes()).unwrap();
    let e = GgufFile::open(&path).unwrap_err();
    assert!(matches!(e, GgufError::Split(_)), "{e:?}");

    // 1-of-1 with consistent keys is a plain single file.
    let mut w = GgufWriter::new();
    w.add_metadata("split.count", Value::U16(1));
    w.add_metadata("split.no", Value::U16(0));
    w.add_tensor("x", vec![2], GgmlType::F16, vec![1, 2, 3, 4])
        .unwrap();
    let path = dir.join("model-00001-of-00001.gguf");
    std::fs::write(&path, w.to_bytes()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.n_files(), 1);
    assert_eq!(f.tensor_data(f.tensor("x").unwrap()), &[1, 2, 3, 4]);
    let _ = std::fs::remove_dir_all(&dir);
}
