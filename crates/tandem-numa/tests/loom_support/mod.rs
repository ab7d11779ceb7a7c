//! What the loom models share: small pools, a `Sync` wrapper for loom's
//! checked cells, a quiet panic hook for intended panics, and the checker
//! with this crate's default bounds.
#![allow(dead_code)] // each model file uses its part

use loom::cell::UnsafeCell;
use tandem_numa::{Layout, NodePlan, Pool};

/// A pool with `nodes[i]` workers on node `i`, unpinned (pinning means
/// nothing to loom's threads).
pub fn pool(nodes: &[usize]) -> Pool {
    let layout = Layout {
        nodes: nodes
            .iter()
            .map(|&n| NodePlan {
                memory_node: None,
                worker_cpus: vec![0; n],
            })
            .collect(),
        pin: false,
    };
    Pool::with_layout(layout).expect("a pool of loom threads")
}

/// Loom's `UnsafeCell` (which records every access and fails the model
/// on two that are not ordered by happens-before, one being a write),
/// shareable with the pool's jobs.
pub struct Cells<T>(pub Vec<UnsafeCell<T>>);

// SAFETY: the models access the cells only as their protocols allow;
// loom checks exactly that (an unordered conflicting access fails).
unsafe impl<T: Send> Sync for Cells<T> {}

impl<T: Copy> Cells<T> {
    pub fn new(n: usize, v: T) -> Cells<T> {
        Cells((0..n).map(|_| UnsafeCell::new(v)).collect())
    }

    pub fn get(&self, i: usize) -> T {
        // SAFETY: loom checks that no write races this read.
        self.0[i].with(|p| unsafe { *p })
    }

    pub fn set(&self, i: usize, v: T) {
        // SAFETY: loom checks that no access races this write.
        self.0[i].with_mut(|p| unsafe { *p = v })
    }
}

/// The payload of panics a model causes on purpose.
pub const INTENDED: &str = "loom model: intended panic";

/// The pool's re-raise of a worker's panic.
const RERAISED: &str = "a tandem pool worker panicked";

/// Keeps intended panics and their re-raise by the pool out of the output
/// (one each per explored execution); any other panic is reported by the
/// previous hook.
pub fn quiet_intended_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info.payload().downcast_ref::<&str>().copied();
            if msg != Some(INTENDED) && msg != Some(RERAISED) {
                previous(info);
            }
        }));
    });
}

/// Explores `f` with loom, at most `LOOM_MAX_PREEMPTIONS` preemptions per
/// execution (default 5 here: the executions grow about fourfold per
/// extra preemption, and 5 keeps `tools/loom.sh` within CI's budget;
/// bugs that need more preemptions than that are rare).
/// Prints how many executions loom explored (seen with `--nocapture`).
pub fn check(f: impl Fn() + Sync + Send + 'static) {
    check_bounded(5, f);
}

/// [`check`] with a default bound of `bound` preemptions, for models
/// with more threads (each extra thread multiplies the executions).
pub fn check_bounded(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(bound);
    }
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&runs);
    builder.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        f();
    });
    eprintln!(
        "loom: {} executions explored (preemption bound {:?})",
        runs.load(Ordering::Relaxed),
        builder.preemption_bound
    );
}
