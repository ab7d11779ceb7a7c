//! [`Arrivals`]: "publish, then the last to arrive merges" for work split
//! into parts inside one [`Pool`](crate::Pool) run.
//!
//! Flash-decoding splits one head's context into parts run by different
//! workers; each part leaves a partial result, and the head is finished by
//! whichever part ends last, with no extra fork-join and no waiting. This
//! type is that hand-off and nothing else (the caller owns the partial
//! results' memory), kept apart so `tools/loom.sh` checks it
//! (`tests/loom_arrivals.rs`): the merger sees every part's data, and
//! exactly one part merges.
//!
//! ## Protocol
//!
//! 1. Before a run, the driver [`reset`](Arrivals::reset)s the counters
//!    (relaxed stores: the run's start orders them before every worker's
//!    first access, step 1 of the pool's protocol).
//! 2. A part writes its partial result (plain stores), then calls
//!    [`arrive`](Arrivals::arrive), which increments its key's counter
//!    (`AcqRel`).
//! 3. The call that brings the counter to `parts` returns `true`: its
//!    acquire half sees every other part's result, because their release
//!    increments precede it in the counter's modification order (an RMW
//!    reads the latest value, so the increments form one release sequence).
//!    Every other call returns `false`, and that part must not touch the
//!    results again this run.
//! 4. The run's end (the pool's barrier) orders the merge before the next
//!    run's reset and writes.

use std::sync::atomic::Ordering;

use crate::sync::AtomicUsize;

/// One arrival counter per key (for flash-decoding: per sequence × KV
/// head), reused across runs.
#[derive(Default)]
pub struct Arrivals {
    counts: Vec<AtomicUsize>,
}

impl Arrivals {
    /// `n` counters at zero.
    pub fn new(n: usize) -> Arrivals {
        let mut a = Arrivals::default();
        a.grow(n);
        a
    }

    /// Ensures at least `n` counters (new ones at zero).
    pub fn grow(&mut self, n: usize) {
        if self.counts.len() < n {
            self.counts.resize_with(n, AtomicUsize::default);
        }
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Zeroes every counter (step 1): call before the run whose parts
    /// arrive, outside it.
    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// One of `parts` parts of `key` has written its result (step 2).
    /// Returns `true` for exactly one call per key and run, the last one,
    /// which then sees every part's result (step 3).
    ///
    /// # Panics
    /// If `key` is not below [`len`](Self::len) (a caller's sizing bug).
    #[inline]
    pub fn arrive(&self, key: usize, parts: usize) -> bool {
        self.counts[key].fetch_add(1, Ordering::AcqRel) + 1 == parts
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_of_each_key_merges_and_reset_starts_over() {
        let mut a = Arrivals::new(2);
        a.grow(3);
        assert_eq!(a.len(), 3);
        for _round in 0..2 {
            a.reset();
            assert!(!a.arrive(0, 3));
            assert!(!a.arrive(2, 2));
            assert!(a.arrive(1, 1));
            assert!(!a.arrive(0, 3));
            assert!(a.arrive(2, 2));
            assert!(a.arrive(0, 3));
        }
    }
}
