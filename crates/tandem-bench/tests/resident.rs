//! Weights are resident once, however many nodes they are split over: with
//! `--numa virtual:2` the shards are copied into node memory and the file's
//! pages are dropped from the process, so resident memory grows by about
//! the model's size, not twice it. Measured with VmRSS on a ~70 MB model.
//! (One test in this file: nothing else runs in the process meanwhile.)

use tandem_bench::synthetic::{self, Quant, Shape};
use tandem_model::{LoadOptions, Logits, Model, ModelFiles, NumaMode};

fn vm_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn sharded_model_is_resident_once() {
    let Some(base) = vm_rss() else {
        eprintln!("note: no /proc/self/status here; resident size not checked");
        return;
    };
    let mut shape = Shape::named("tiny", None).expect("shape");
    shape.hidden = 1024;
    shape.ffn = 4096;
    shape.n_layers = 4;
    shape.n_heads = 8;
    shape.n_kv_heads = 2;
    shape.vocab = 4096;
    let path = std::env::temp_dir().join(format!("tandem-resident-{}.gguf", std::process::id()));
    synthetic::write_model(&shape, Quant::Q8_0, &path, 7, &mut |_, _| {}).expect("write");
    let size = std::fs::metadata(&path).expect("size").len() as usize;
    let files = ModelFiles::open(&path).expect("open");
    // Touch every page of the file first, as the CLI's loading bar does.
    let mut sink = 0u8;
    for t in files.tensors() {
        for page in t.bytes().chunks(4096) {
            sink ^= page[0];
        }
    }
    std::hint::black_box(sink);
    let opts = LoadOptions {
        numa: NumaMode::Virtual(2),
        ..LoadOptions::default()
    };
    let model = Model::load_with(files, &opts).expect("load");
    let mut cache = model.new_cache(8).expect("cache");
    let logits = model
        .forward(&[1, 2, 3], &mut cache, Logits::Last)
        .expect("forward");
    assert!(logits.iter().all(|x| x.is_finite()));
    let grown = vm_rss().expect("VmRSS").saturating_sub(base);
    eprintln!(
        "model {:.1} MB, resident growth {:.1} MB",
        size as f64 / 1e6,
        grown as f64 / 1e6
    );
    assert!(
        grown < size + size / 4,
        "resident memory grew by {grown} bytes for a {size}-byte model: weights held twice?"
    );
    let _ = std::fs::remove_file(&path);
}
