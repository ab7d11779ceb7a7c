//! The synchronisation primitives of the worker pool and of [`Arrivals`],
//! swappable for [loom]'s models of them.
//!
//! Built normally these are `std`'s. Built with `RUSTFLAGS="--cfg loom"`
//! (`tools/loom.sh`) they are loom's, so the loom tests
//! (`tests/loom_*.rs`) check the pool's real hand-off code under every
//! interleaving and every memory-model-allowed value of each load, not a
//! copy of it. Only the primitives that carry the protocol come from here;
//! statistics counters stay `std`'s (loom would branch on them for nothing).
//!
//! [loom]: https://docs.rs/loom
//! [`Arrivals`]: crate::Arrivals

#[cfg(not(loom))]
pub(crate) use std::{
    hint::spin_loop,
    sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicUsize},
        Arc, Mutex,
    },
    thread::{self, park, yield_now, JoinHandle, Thread},
};

#[cfg(loom)]
pub(crate) use loom::{
    hint::spin_loop,
    sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicUsize},
        Arc, Mutex,
    },
    thread::{self, park, yield_now, JoinHandle, Thread},
};

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `std::cell::UnsafeCell` with loom's access API (`with`, `with_mut`),
/// through which loom checks that every access is ordered after the
/// accesses it may conflict with.
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Reads through `*const T`.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Writes through `*mut T`.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
