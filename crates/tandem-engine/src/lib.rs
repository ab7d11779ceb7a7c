//! The engine: what turns a model into answers. Sampling, chat templates,
//! generation and perplexity, shared by the CLI and the server; the
//! scheduler (continuous batching) and the engine thread that runs it.
//!
//! The engine knows nothing of file formats, kernels or threads: it sees a
//! [`tandem_model::Model`] and its tokenizer.

mod error;
pub mod generate;
pub mod perplexity;

pub use error::EngineError;
pub mod chat;
pub mod engine;
pub mod logprobs;
pub mod penalties;
pub mod prefill;
pub mod sampler;
pub mod scheduler;
