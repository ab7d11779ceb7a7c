//! Loading a model for a command, with a progress bar on a terminal.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tandem_model::{LoadOptions, Model, ModelFiles};

use crate::bundled;

pub fn open_files(path: Option<&Path>) -> anyhow::Result<ModelFiles> {
    match path {
        Some(p) => ModelFiles::open(p).with_context(|| format!("cannot load {}", p.display())),
        None => {
            ModelFiles::from_static_gguf(bundled::GGUF).context("cannot load the bundled model")
        }
    }
}

/// Opens and loads a model, touching every weight page once so that reading
/// from disk happens here, under a progress bar, and not in the first token.
pub fn load_model(path: Option<&Path>, opts: &LoadOptions) -> anyhow::Result<Model> {
    load_files(open_files(path)?, path, opts)
}

/// [`load_model`] for files already opened (by a caller that needs them first).
pub fn load_files(
    files: ModelFiles,
    path: Option<&Path>,
    opts: &LoadOptions,
) -> anyhow::Result<Model> {
    let t0 = Instant::now();
    let total: u64 = files.tensors().map(|t| t.n_bytes() as u64).sum();
    let bar = ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut sink = 0u8;
    for t in files.tensors() {
        for page in t.bytes().chunks(1 << 16) {
            sink ^= page.first().copied().unwrap_or(0);
            bar.inc(page.len() as u64);
        }
    }
    std::hint::black_box(sink);
    bar.finish_and_clear();
    let model = Model::load_with(files, opts).context("invalid model")?;
    let name = model.name.clone().unwrap_or_else(|| match path {
        Some(p) => p.display().to_string(),
        None => bundled::NAME.to_string(),
    });
    tracing::info!("loaded {name} in {:.2}s", t0.elapsed().as_secs_f64());
    Ok(model)
}
