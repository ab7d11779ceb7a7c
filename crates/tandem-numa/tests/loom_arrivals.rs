//! Loom models of `Arrivals` (`src/arrivals.rs`), the flash-decoding
//! merge's hand-off: parts publish partial results, and the last part to
//! arrive merges them all.
//!
//! Run by `tools/loom.sh` (`RUSTFLAGS="--cfg loom"`); in an ordinary build
//! the models are compiled out and one test says they were skipped. What
//! the models check, under every interleaving (up to the preemption bound)
//! and every value a load may return: exactly one part merges, it reads every part's slot after that
//! part wrote it (loom fails a read not ordered after the write), no part
//! writes a slot while it is merged, and `reset` before the next run starts
//! the count over. The production caller is `tandem-model`'s attention
//! (`SplitState`), whose slots are raw `f32` ranges of one buffer: their
//! indexing is not modelled here (the model tests compare its results).

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
    use super::loom_support::{check, pool, Cells};
    use loom::sync::Arc;
    use tandem_numa::Arrivals;

    /// Part `p`'s result in round `round`.
    fn result(round: u64, p: usize) -> u64 {
        round * 10 + p as u64 + 1
    }

    /// Writes part `p`'s slot, arrives, and merges if last: the sum of all
    /// slots, or None.
    fn part(a: &Arrivals, slots: &Cells<u64>, round: u64, p: usize, parts: usize) -> Option<u64> {
        slots.set(p, result(round, p));
        a.arrive(0, parts)
            .then(|| (0..parts).map(|q| slots.get(q)).sum())
    }

    fn expected(round: u64, parts: usize) -> u64 {
        (0..parts).map(|p| result(round, p)).sum()
    }

    /// Parts on plain threads (the main thread is part 0).
    fn threads(parts: usize) {
        check(move || {
            let a = Arc::new(Arrivals::new(1));
            let slots = Arc::new(Cells::new(parts, 0u64));
            for round in 0..2 {
                a.reset();
                let others: Vec<_> = (1..parts)
                    .map(|p| {
                        let (a, slots) = (Arc::clone(&a), Arc::clone(&slots));
                        loom::thread::spawn(move || part(&a, &slots, round, p, parts))
                    })
                    .collect();
                let mut merged: Vec<u64> = part(&a, &slots, round, 0, parts).into_iter().collect();
                for t in others {
                    merged.extend(t.join().expect("a part"));
                }
                assert_eq!(merged, vec![expected(round, parts)], "round {round}");
            }
        });
    }

    #[test]
    fn two_parts_one_merger_sees_both() {
        threads(2);
    }

    #[test]
    fn three_parts_one_merger_sees_all() {
        threads(3);
    }

    /// As attention uses it: the driver resets before each run, and the pool's
    /// workers claim the parts.
    #[test]
    fn parts_claimed_in_pool_runs() {
        check(|| {
            let pool = pool(&[2]);
            let parts = 3;
            let a = Arrivals::new(1);
            let slots = Cells::new(parts, 0u64);
            let merged = Cells::new(2, 0u64);
            let merges = Cells::new(1, 0u32);
            for round in 0..2 {
                a.reset();
                pool.run(|w| loop {
                    let p = w.claim();
                    if p >= parts {
                        break;
                    }
                    if let Some(sum) = part(&a, &slots, round, p, parts) {
                        merged.set(w.index, sum);
                        merges.set(0, merges.get(0) + 1);
                    }
                });
                assert_eq!(merges.get(0), round as u32 + 1, "one merge per run");
                let sum = merged.get(0).max(merged.get(1));
                assert_eq!(sum, expected(round, parts), "round {round}");
                merged.set(0, 0);
                merged.set(1, 0);
            }
        });
    }
}
