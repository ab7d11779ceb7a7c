//! The error type: everything a user or a file can get wrong, as one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("unknown shape '{0}' (known: {known})", known = crate::synthetic::Shape::NAMES.join(", "))]
    UnknownShape(String),
    #[error("unknown quantization '{0}' (known: {known})", known = crate::synthetic::Quant::NAMES.join(", "))]
    UnknownQuant(String),
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] tandem_gguf::GgufError),
    #[error(transparent)]
    Model(#[from] tandem_model::ModelError),
    #[error("{0}")]
    Invalid(String),
}

impl BenchError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> BenchError {
        BenchError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
