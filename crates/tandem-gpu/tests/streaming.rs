//! The streaming protocol as the CPU device's trace shows it: layer i+1
//! uploads while layer i computes, a slot is rewritten only after the
//! layer that used it is done, and the device's events behave as CUDA's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_gpu::cpu::TraceEntry;
use tandem_gpu::device::{Device, Ptr};
use tandem_gpu::{CpuDevice, GpuPrefill, PrefillOptions};
use tandem_model::{KvFormat, KvOptions, LoadOptions, Logits, Model, ModelFiles, NumaMode};

const FILE: &str = "tiny-gemma3/gguf/tiny-gemma3-F32.gguf";

fn files() -> ModelFiles {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(FILE);
    ModelFiles::open(&p).expect("fixture")
}

fn span(trace: &[TraceEntry], what: &str, u: usize) -> (Instant, Instant) {
    let find = |label: String| {
        trace
            .iter()
            .find(|e| e.label == label)
            .unwrap_or_else(|| panic!("no {label} in the trace"))
            .start
    };
    (
        find(format!("{what} {u} begin")),
        find(format!("{what} {u} end")),
    )
}

#[test]
fn uploads_overlap_compute_and_slots_are_reused_only_when_free() {
    let m = Model::load_with(
        files(),
        &LoadOptions {
            numa: NumaMode::Off,
            threads: Some(1),
            kv: KvOptions {
                format: KvFormat::F16,
                page_tokens: 16,
            },
            ..LoadOptions::default()
        },
    )
    .expect("model");
    // Every compute op sleeps: compute is slow, copies are not, so an
    // upload that may overlap a layer's compute visibly does.
    for page_lock in [true, false] {
        let mut dev = CpuDevice::new(256 << 20)
            .with_trace()
            .with_op_delay(Duration::from_millis(3));
        if page_lock {
            dev = dev.with_page_locking();
        }
        let gpu = GpuPrefill::new(dev, &files(), PrefillOptions::default()).expect("prefill");
        let mut c = m.new_cache(32).expect("cache");
        gpu.prefill(&mut c, &[1, 2, 3, 4, 5], Logits::Last)
            .expect("prefill");
        check_trace(&gpu.device().take_trace(), m.config.n_layers + 1);
    }
}

/// Uploads and computes of `units` units (layers and the output head), in
/// the order the protocol says.
fn check_trace(trace: &[TraceEntry], units: usize) {
    assert!(units >= 4);
    let compute_stream = trace
        .iter()
        .find(|e| e.label == "compute 0 begin")
        .expect("compute")
        .stream;
    let copy_stream = trace
        .iter()
        .find(|e| e.label == "upload 0 begin")
        .expect("upload")
        .stream;
    assert_ne!(
        compute_stream, copy_stream,
        "copies run on their own stream"
    );
    for u in 0..units {
        let (ub, ue) = span(trace, "upload", u);
        let (cb, _) = span(trace, "compute", u);
        assert!(ue <= cb, "unit {u} computes before its upload ended");
        assert!(ub <= ue);
        if u >= 2 {
            // Two slots: unit u reuses unit u-2's slot, only once it is
            // done, and while unit u-1 computes.
            let (_, prev2_end) = span(trace, "compute", u - 2);
            let (_, prev_end) = span(trace, "compute", u - 1);
            assert!(ub >= prev2_end, "unit {u} overwrote a slot in use");
            assert!(
                ub < prev_end,
                "upload of unit {u} did not overlap unit {}",
                u - 1
            );
        }
    }
}

#[test]
fn events_follow_cuda_semantics_and_unrecorded_waits_are_refused() {
    let dev = CpuDevice::new(1 << 20).with_trace();
    let (a, b) = (
        dev.new_stream().expect("stream"),
        dev.new_stream().expect("stream"),
    );
    let ev = dev.new_event().expect("event");
    assert!(
        dev.wait(&b, &ev).is_err(),
        "a wait on a never-recorded event"
    );
    let buf = dev.alloc(1024, "test").expect("alloc");
    let src = vec![7u8; 1024];
    let mut dst = vec![0u8; 1024];
    // SAFETY: both vectors live until the syncs below.
    unsafe {
        dev.h2d(&a, Ptr::new(&buf), src.as_ptr(), 1024)
            .expect("h2d");
        dev.record(&ev, &a).expect("record");
        dev.wait(&b, &ev).expect("wait");
        dev.d2h(&b, Ptr::new(&buf), dst.as_mut_ptr(), 1024)
            .expect("d2h");
    }
    dev.sync_stream(&b).expect("sync");
    assert!(dst.iter().all(|&x| x == 7));
    assert_eq!(dev.memory().used, 1024);
    let e = dev.alloc(1 << 20, "too much").err().expect("over budget");
    assert!(e.to_string().contains("too much"), "{e}");
    drop(buf);
    assert_eq!(dev.memory().used, 0);
    // Out-of-bounds views are errors, not memory accesses.
    let small = dev.alloc(16, "small").expect("alloc");
    // SAFETY: fails before any copy is queued.
    let r = unsafe { dev.h2d(&a, Ptr::new(&small), src.as_ptr(), 1024) };
    assert!(r.is_err());
}
