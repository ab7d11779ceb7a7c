//! Nothing in the decode loop allocates: after a warm-up step, further
//! decode steps (single and batched, one node and virtual nodes) make no
//! heap allocation on any thread. A counting global allocator checks it;
//! this file holds one test so no other test allocates concurrently.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tandem_model::{LoadOptions, Logits, Model, ModelFiles, NumaMode, SeqInput};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe {
            if COUNTING.load(Ordering::Relaxed) {
                ALLOCS.fetch_add(1, Ordering::Relaxed);
            }
            System.alloc(l)
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe {
            if COUNTING.load(Ordering::Relaxed) {
                ALLOCS.fetch_add(1, Ordering::Relaxed);
            }
            System.realloc(p, l, n)
        }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count<R>(f: impl FnOnce() -> R) -> (R, usize) {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING.store(false, Ordering::SeqCst);
    (r, ALLOCS.load(Ordering::SeqCst))
}

#[test]
fn decode_steps_do_not_allocate() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models");
    for rel in [
        "tandem-tiny/gguf/tandem-tiny-Q4_K_M.gguf",
        "tiny-qwen3/gguf/tiny-qwen3-Q8_0.gguf",
    ] {
        for numa in [NumaMode::Off, NumaMode::Virtual(2)] {
            let files = ModelFiles::open(&root.join(rel)).expect("open");
            let model = Model::load_with(
                files,
                &LoadOptions {
                    numa,
                    ..LoadOptions::default()
                },
            )
            .expect("load");
            let mut caches: Vec<_> = (0..4)
                .map(|_| model.new_cache(32).expect("cache"))
                .collect();
            let mut logits = Vec::new();
            // Warm-up: buffers grow to the batch shape here.
            model
                .decode_batch(&[1, 2, 3, 4], &mut caches, &mut logits)
                .expect("warm-up");
            model
                .forward_batch(
                    &mut [SeqInput {
                        tokens: &[5],
                        cache: &mut caches[0],
                        want: Logits::Last,
                    }],
                    &mut logits,
                )
                .expect("warm-up");
            let (r, n) = count(|| -> Result<(), tandem_model::ModelError> {
                for step in 0..5 {
                    model.decode_batch(&[7, 8, 9, step], &mut caches, &mut logits)?;
                    model.forward_batch(
                        &mut [SeqInput {
                            tokens: &[step],
                            cache: &mut caches[1],
                            want: Logits::Last,
                        }],
                        &mut logits,
                    )?;
                }
                Ok(())
            });
            r.expect("decode");
            assert_eq!(n, 0, "{rel} {numa}: {n} allocations in 10 decode steps");
        }
    }
}
