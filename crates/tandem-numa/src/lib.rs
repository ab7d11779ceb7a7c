//! # tandem-numa
//!
//! Where the decode engine's threads run and where its weights live.
//!
//! * [`Topology`]: the machine's NUMA nodes and CPUs from
//!   `/sys/devices/system/node`, restricted to this process's affinity.
//! * [`NumaMode`] (`--numa auto|off|virtual:N`) and [`Layout`]: the engine's
//!   nodes and the CPU each worker is pinned to. `virtual:N` splits a
//!   one-node machine into N engine nodes so the sharded path is tested
//!   everywhere.
//! * [`Pool`]: persistent pinned workers running fork-join jobs at about a
//!   microsecond per run (protocol in `pool.rs`).
//! * [`Arrivals`]: "the last part to finish merges" counters for work
//!   split across a run's workers (flash-decoding).
//! * [`NodeMemory`]: anonymous memory bound to a node, and [`page_node`] to
//!   check where a page really is.
//!
//! This crate does not know about models, matrices or kernels: the model
//! crate decides how to shard and what each worker computes.

mod arrivals;
mod cpuset;
mod memory;
mod pool;
mod sync;
mod topology;

pub use arrivals::Arrivals;

pub use cpuset::{current_affinity, parse_cpulist, pin_current_thread};
pub use memory::{page_node, release_file_pages, NodeMemory};
pub use pool::{Pool, SyncStats, Worker, SPIN, YIELD};
pub use topology::{Layout, Node, NodePlan, NumaMode, Topology, MAX_VIRTUAL_NODES};

/// Errors of topology detection, planning, pinning and mapping.
#[derive(Debug, thiserror::Error)]
pub enum NumaError {
    #[error("malformed CPU list {text:?}: {why}")]
    BadCpuList { text: String, why: String },
    #[error("cannot read {path}: {source}")]
    Sysfs {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid --numa value {0:?} (expected auto, off or virtual:N with N in 1..=64)")]
    BadMode(String),
    #[error("--threads must be at least 1")]
    ZeroThreads,
    #[error("cannot pin a thread to CPUs {cpus:?}: {source}")]
    Pin {
        cpus: Vec<usize>,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a worker thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("out of memory: cannot map {bytes} bytes: {source}")]
    Map {
        bytes: usize,
        #[source]
        source: std::io::Error,
    },
}
