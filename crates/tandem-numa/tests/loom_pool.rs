//! Loom models of the worker pool's hand-off (`src/pool.rs`, "Protocol"),
//! run on the pool's own code with loom's primitives (`src/sync.rs`).
//!
//! Run by `tools/loom.sh` (`RUSTFLAGS="--cfg loom"`); in an ordinary build
//! the models are compiled out (loom's primitives work only inside a
//! model) and one test says they were skipped. What the models check,
//! under every interleaving (up to the preemption bound) and every value a
//! load may return:
//!
//! - publish (step 1): what the driver wrote before `run` is visible to
//!   every worker's job, and the job slot is never read while written;
//! - completion (steps 5–6): what every job wrote is visible to the driver
//!   when `run` returns, and `run` returns only after every worker is done;
//! - wake-up (steps 2 and 4): a worker that parks is woken by the next run
//!   or by the pool's drop (a lost wake-up leaves the driver waiting for
//!   it forever: loom fails the model, as a deadlock or as a spin past its
//!   branch limit);
//! - claims: each chunk number goes to exactly one worker per run, and the
//!   counters restart at 0 for the next run;
//! - a worker's panic reaches the driver, and the pool works afterwards.
//!
//! Sizes: pools of the driver and one worker (or two one-thread nodes)
//! over two runs and the drop, at most 5 preemptions; the driver and two
//! workers over one run, at most 2 (each thread multiplies the executions:
//! `tools/loom.sh` prints how many). Not covered: the spin and yield
//! *durations* (under loom an idle thread polls once, then parks, so both
//! paths are taken, but `Idle::Yield` never is: it only re-polls, like a
//! spin), pinning, the statistics counters, and what loom itself does not
//! model (SeqCst *accesses* are checked as AcqRel, hence the pool's
//! fences; some load-buffering outcomes are not explored).

/// In an ordinary build the models are compiled out; this says so.
#[cfg(not(loom))]
#[test]
fn loom_models_run_under_tools_loom_sh() {
    eprintln!("skipped: the loom models run only with `--cfg loom` (tools/loom.sh)");
}

#[cfg(loom)]
mod loom_support;

#[cfg(loom)]
mod models {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::loom_support::{check, check_bounded, pool, quiet_intended_panics, Cells, INTENDED};

    #[test]
    fn runs_publish_inputs_and_complete_outputs() {
        check(|| {
            let pool = pool(&[2]);
            let input = Cells::new(1, 0usize);
            let outputs = Cells::new(2, 0usize);
            for round in 1..=2 {
                input.set(0, round);
                pool.run(|w| {
                    let seen = input.get(0);
                    outputs.set(w.index, outputs.get(w.index) + seen);
                });
                for i in 0..2 {
                    assert_eq!(outputs.get(i), round * (round + 1) / 2, "worker {i}");
                }
            }
            drop(pool);
        });
    }

    #[test]
    fn two_workers_finish_before_the_driver_returns() {
        check_bounded(2, || {
            let pool = pool(&[3]);
            let input = Cells::new(1, 0usize);
            let outputs = Cells::new(3, 0usize);
            input.set(0, 5);
            pool.run(|w| outputs.set(w.index, input.get(0) + w.index));
            for i in 0..3 {
                assert_eq!(outputs.get(i), 5 + i, "worker {i}");
            }
        });
    }

    #[test]
    fn each_chunk_is_claimed_once_per_run() {
        check(|| {
            let pool = pool(&[2]);
            let n_chunks = 3;
            let hits = Cells::new(n_chunks, 0u32);
            for round in 1..=2 {
                pool.run(|w| loop {
                    let c = w.claim();
                    if c >= n_chunks {
                        break;
                    }
                    hits.set(c, hits.get(c) + 1);
                });
                for c in 0..n_chunks {
                    assert_eq!(hits.get(c), round, "chunk {c}");
                }
            }
        });
    }

    #[test]
    fn nodes_claim_their_own_chunks() {
        check(|| {
            let pool = pool(&[1, 1]);
            let hits = Cells::new(4, 0u32);
            pool.run(|w| loop {
                let c = w.claim();
                if c >= 2 {
                    break;
                }
                hits.set(w.node * 2 + c, hits.get(w.node * 2 + c) + 1);
            });
            for i in 0..4 {
                assert_eq!(hits.get(i), 1, "node {} chunk {}", i / 2, i % 2);
            }
        });
    }

    #[test]
    fn a_worker_panic_reaches_the_driver() {
        quiet_intended_panics();
        check(|| {
            let pool = pool(&[2]);
            let caught = catch_unwind(AssertUnwindSafe(|| {
                pool.run(|w| {
                    if w.index == 1 {
                        std::panic::panic_any(INTENDED);
                    }
                })
            }));
            assert!(caught.is_err(), "the worker's panic was lost");
            let outputs = Cells::new(2, 0u32);
            pool.run(|w| outputs.set(w.index, 1));
            assert_eq!((outputs.get(0), outputs.get(1)), (1, 1));
        });
    }
}
