//! # tandem-bench: measuring decode speed against the machine's limit
//!
//! CPU decode is memory-bound: every generated token streams all weights
//! from DRAM once. A tok/s figure alone does not say how close to the limit
//! an engine is, so `tandem bench` reports, from one run:
//!
//! * [`measure`]: prefill (`pp N`), decode (`tg N`) and batched decode
//!   tok/s, with llama-bench's mean ± stddev over repetitions, and the
//!   effective GB/s (bytes read per token × tok/s);
//! * [`probe`]: the read bandwidth a plain, multi-threaded scan of a large
//!   buffer achieves on the same threads, and hence the % of it decode gets;
//! * [`report`]: a llama-bench-like table or one JSON document;
//! * [`restore`]: turn 2 of a conversation on its cached turn 1, and
//!   restoring a prefix from the KV disk tier against recomputing it.
//!
//! [`synthetic`] writes GGUF files with random weights in the shapes of real
//! models (Llama 3.x, Qwen 2.5, a slice of Llama 3.1 405B) and a valid
//! byte-level BPE tokenizer, so speed can be measured without downloads and
//! llama.cpp can run the very same file.

mod error;
pub mod measure;
pub mod probe;
pub mod report;
pub mod restore;
pub mod synthetic;

pub use error::BenchError;
