//! The fixture model the generation tests run on: tandem-tiny Q4_K_M on
//! two unpinned threads.

use std::path::PathBuf;

use tandem_model::{LoadOptions, Model, ModelFiles};

pub fn tiny_model() -> Model {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/tandem-tiny/gguf/tandem-tiny-Q4_K_M.gguf");
    let files = ModelFiles::open(&path).expect("fixture");
    let opts = LoadOptions {
        threads: Some(2),
        pin: false,
        ..LoadOptions::default()
    };
    Model::load_with(files, &opts).expect("load")
}
