//! Loading paths that the reference fixtures do not cover on their own:
//! sharded safetensors with an index, and broken HF directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use tandem_model::{Logits, Model, ModelError, ModelFiles};

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(p)
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tandem-model-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn copy_side_files(from: &Path, to: &Path) {
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        if from.join(f).is_file() {
            std::fs::copy(from.join(f), to.join(f)).expect("copy");
        }
    }
}

fn logits(path: &Path, ids: &[u32]) -> Vec<f32> {
    let model = Model::load(ModelFiles::open(path).expect("open")).expect("load");
    let mut cache = model.new_cache(ids.len()).expect("cache");
    model
        .forward(ids, &mut cache, Logits::All)
        .expect("forward")
}

#[test]
fn sharded_safetensors_with_index_equal_the_single_file() {
    let src = fixture("tiny-qwen3/hf");
    let bytes = std::fs::read(src.join("model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let dir = tmp_dir("sharded");
    copy_side_files(&src, &dir);
    let mut weight_map = BTreeMap::new();
    let half = names.len() / 2;
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).expect("tensor")))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).expect("write shard");
        for n in part {
            weight_map.insert(n.clone(), file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");

    let ids = [283, 69, 286, 7, 87, 8, 25];
    assert_eq!(logits(&dir, &ids), logits(&src, &ids));
    let files = ModelFiles::open(&dir).expect("open");
    assert_eq!(
        files.format,
        tandem_model::SourceFormat::Safetensors { files: 2 }
    );
}

#[test]
fn broken_hf_directories_are_clear_errors() {
    let src = fixture("tiny-qwen3/hf");
    // No weights at all.
    let dir = tmp_dir("noweights");
    copy_side_files(&src, &dir);
    assert!(matches!(
        ModelFiles::open(&dir),
        Err(ModelError::UnknownFormat(_))
    ));

    // A truncated safetensors file.
    let bytes = std::fs::read(src.join("model.safetensors")).expect("read");
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 3]).expect("write");
    let err = ModelFiles::open(&dir).err().expect("must fail");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // An index pointing outside the directory.
    let dir = tmp_dir("escape");
    copy_side_files(&src, &dir);
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"lm_head.weight": "../../etc/passwd"}}"#,
    )
    .expect("index");
    let err = ModelFiles::open(&dir).err().expect("must fail");
    assert!(err.to_string().contains("not a file name"), "{err}");

    // An unknown architecture is named.
    let dir = tmp_dir("arch");
    copy_side_files(&src, &dir);
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).expect("copy");
    let cfg = std::fs::read_to_string(dir.join("config.json")).expect("cfg");
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"qwen3\"", "\"falcon\""),
    )
    .expect("cfg");
    let err = ModelFiles::open(&dir).err().expect("must fail");
    assert!(
        err.to_string()
            .contains("unsupported architecture 'falcon'"),
        "{err}"
    );

    // Malformed config.json.
    std::fs::write(dir.join("config.json"), "{ not json").expect("cfg");
    let err = ModelFiles::open(&dir).err().expect("must fail");
    assert!(err.to_string().contains("config.json"), "{err}");
}
