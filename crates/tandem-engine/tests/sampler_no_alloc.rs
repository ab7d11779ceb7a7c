//! `Sampler::sample` must not touch the heap once its buffers are sized for the vocabulary.
//! A counting global allocator (per thread, so the test harness's own threads do not interfere)
//! checks it over every stage of the chain.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tandem_engine::sampler::{Sampler, SamplingParams};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: forwards the caller's layout to the system allocator, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: this `unsafe fn`'s body; its caller upholds the `# Safety` contract above (CPU features checked, pointers and lengths in bounds).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: forwards the caller's pointer, layout and size, as `GlobalAlloc::realloc` requires.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCS.with(|n| n.get())
}

#[test]
fn sample_does_not_allocate_after_the_first_call() {
    let vocab = 32_000;
    let logits: Vec<f32> = (0..vocab)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
        .collect();
    let history: Vec<u32> = (0..200).map(|i| (i * 31) % vocab as u32).collect();
    let configs = [
        SamplingParams::default(),
        SamplingParams::greedy(),
        SamplingParams {
            repeat_penalty: 1.3,
            ..SamplingParams::default()
        },
        // No top-k: top-p sorts the whole vocabulary.
        SamplingParams {
            top_k: 0,
            top_p: 0.9,
            repeat_penalty: 1.1,
            ..SamplingParams::default()
        },
        // min-p alone, on an unsorted list.
        SamplingParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.1,
            ..SamplingParams::default()
        },
    ];
    // The counter works.
    let before = allocations();
    drop(std::hint::black_box(vec![0u8; 64]));
    assert!(allocations() > before);

    for params in configs {
        let mut sampler = Sampler::new(params.clone()).unwrap();
        sampler.sample(&logits, &history).unwrap();
        let before = allocations();
        for step in 0..50 {
            sampler.sample(&logits, &history[..step * 4]).unwrap();
        }
        assert_eq!(allocations(), before, "{params:?} allocated");
    }
}
