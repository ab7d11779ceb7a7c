//! Models: opening GGUF files and Hugging Face directories into one
//! format-free description ([`ModelFiles`]), and the decoder forward pass
//! ([`Model`]) that runs it.
//!
//! Code map:
//! - [`source`]: file formats, split GGUF, safetensors shards, tokenizer metadata.
//! - [`config`]: hyperparameters from either format.
//! - [`arch`]: the families: config → per-layer [`spec`]s, and their HF
//!   tensor-name maps (canonical names are GGUF's).
//! - [`tensor`]: zero-copy views of weights in the mapped files.
//! - [`model`]: the forward pass; [`linear`] its matmul driver; [`ops`] the
//!   element-wise parts; [`kv_cache`] the model's view of the paged KV store (`tandem-kv`).
//! - [`MoeTensors`]: a layer's experts, router and biases as stored (both
//!   the CPU model and the GPU prefill load them through it).
//! - [`inspect`]: what `tandem inspect` reports.
//!
//! This crate does not sample, template chats or stream text: that is the
//! engine's job. It does not know how kernels are vectorised either.

pub mod arch;
mod attention;
pub mod config;
mod error;
pub mod inspect;
pub mod kv_cache;
pub mod linear;
mod mla;
mod mla_expanded;
pub mod model;
mod moe;
mod moe_tensors;
pub mod ops;
mod parallel;
pub mod shard;
pub mod source;
pub mod spec;
pub mod tensor;
mod workspace;

pub use arch::{Arch, RopeLayout};
pub use config::{Gating, ModelConfig, MoeConfig, RopeConfig};
pub use error::ModelError;
pub use kv_cache::{KvCache, KvFormat, KvOptions, KvStore};
pub use mla::k_b_v_b;
pub use mla_expanded::{worth_expanding as mla_prefill_expands, MlaPrefill};
pub use model::{LoadOptions, Logits, Model, SeqInput, TensorParallel};
/// MoE routing of one token (the GPU prefill routes on the host with it).
pub use moe::route_token;
pub use moe_tensors::{ExpertTensors, MoeTensors};
pub use source::{ModelFiles, SourceFormat};
pub use tandem_kv::{DiskStats, DiskTier, ModelIdentity};
pub use tandem_numa::{NumaMode, Pool, SyncStats};
pub use tensor::Tensor;
