use std::path::PathBuf;

/// Everything that can go wrong opening a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Gguf(#[from] tandem_gguf::GgufError),
    #[error("{path}: invalid safetensors file: {detail}")]
    Safetensors { path: PathBuf, detail: String },
    #[error("{path}: invalid JSON: {detail}")]
    Json { path: PathBuf, detail: String },
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] tandem_tokenizer::TokenizerError),
    #[error("{0}: not a .gguf file or a Hugging Face model directory (config.json + safetensors)")]
    UnknownFormat(PathBuf),
    #[error("unsupported architecture '{0}' (supported: {supported})", supported = crate::arch::SUPPORTED)]
    UnsupportedArchitecture(String),
    #[error("missing hyperparameter {0}")]
    MissingHyperparameter(String),
    #[error("invalid hyperparameter {key}: {detail}")]
    InvalidHyperparameter { key: String, detail: String },
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name}: {detail}")]
    BadTensor { name: String, detail: String },
    #[error("unsupported weight type {ty} for tensor {name} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)")]
    UnsupportedWeightType { name: String, ty: String },
    #[error("context full: {needed} tokens needed, the context holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("token id {id} outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("out of memory: cannot allocate {bytes} bytes for {what}")]
    OutOfMemory { what: String, bytes: usize },
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("{0}")]
    Numa(#[from] tandem_numa::NumaError),
    #[error("batch: {0}")]
    BadBatch(String),
    /// The KV options do not fit the model (e.g. a Q8_0 KV cache for a head
    /// size that is not a multiple of 32), or the KV store refused them.
    #[error("{0}")]
    Kv(#[from] tandem_kv::KvError),
}

impl ModelError {
    pub(crate) fn bad_tensor(name: &str, detail: impl std::fmt::Display) -> Self {
        ModelError::BadTensor {
            name: name.to_string(),
            detail: detail.to_string(),
        }
    }
    pub(crate) fn invalid(key: &str, detail: impl std::fmt::Display) -> Self {
        ModelError::InvalidHyperparameter {
            key: key.to_string(),
            detail: detail.to_string(),
        }
    }
}
