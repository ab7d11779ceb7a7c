use std::path::PathBuf;

/// Everything that can go wrong building or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("tokenization failed: {0}")]
    Encode(String),
    #[error("detokenization failed: {0}")]
    Decode(String),
    /// The `tokenizers` library panicked; the file is at fault.
    #[error("{origin}: the tokenizer failed while {what} ({message})")]
    Panicked {
        origin: String,
        what: String,
        message: String,
    },
}

impl TokenizerError {
    pub(crate) fn invalid(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        TokenizerError::Invalid {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}
