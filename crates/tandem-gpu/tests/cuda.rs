//! The CUDA device against the CPU path on the fixture models (feature
//! `cuda`). Without a GPU, driver or CUDA libraries each test prints why
//! it is skipped and passes.

#![cfg(feature = "cuda")]

use std::path::PathBuf;

use tandem_gpu::cuda::CudaDevice;
use tandem_gpu::{GpuPrefill, PrefillOptions};
use tandem_model::{KvFormat, KvOptions, LoadOptions, Logits, Model, ModelFiles, NumaMode};

fn device() -> Option<CudaDevice> {
    match CudaDevice::open(0, Some(2 << 30)) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(file)
}

#[test]
fn gpu_prefill_matches_the_cpu_path_on_the_fixtures() {
    for (file, tol) in [
        ("tiny-llama3/gguf/tiny-llama3-F32.gguf", 2e-2f32),
        ("tiny-llama3/gguf/tiny-llama3-BF16.gguf", 0.15),
        ("tandem-tiny/gguf/tandem-tiny-Q4_K_M.gguf", 0.15),
        ("tandem-tiny/gguf/tandem-tiny-Q8_0.gguf", 0.15),
        ("tiny-qwen3moe/gguf/tiny-qwen3moe-Q8_0.gguf", 0.15),
        ("tiny-gemma3/gguf/tiny-gemma3-F32.gguf", 2e-2),
        ("tiny-gpt-oss/gguf/tiny-gpt-oss-F32.gguf", 2e-2),
        ("tiny-gpt-oss/gguf/tiny-gpt-oss-Q8_0.gguf", 0.15),
        ("tiny-deepseek3/gguf/tiny-deepseek3-F32.gguf", 2e-2),
        ("tiny-deepseek3/gguf/tiny-deepseek3-Q8_0-kv_b.gguf", 0.15),
    ] {
        let Some(dev) = device() else { return };
        let files = ModelFiles::open(&path(file)).expect("fixture");
        let gpu = GpuPrefill::new(
            dev,
            &files,
            PrefillOptions {
                max_chunk: Some(24),
                ..Default::default()
            },
        )
        .expect("prefill");
        let opts = LoadOptions {
            numa: NumaMode::Off,
            threads: Some(2),
            kv: KvOptions {
                format: KvFormat::F16,
                page_tokens: 16,
            },
            ..LoadOptions::default()
        };
        let m = Model::load_with(ModelFiles::open(&path(file)).expect("fixture"), &opts)
            .expect("model");
        let v = m.config.vocab_size as u32;
        let toks: Vec<u32> = (0..43u32).map(|i| (i * 7919 + 3) % v).collect();
        let (prompt, decode) = toks.split_at(40);
        let (mut a, mut b) = (
            m.new_cache(64).expect("cache"),
            m.new_cache(64).expect("cache"),
        );
        let la = m.forward(prompt, &mut a, Logits::All).expect("cpu");
        let lb = gpu
            .prefill(&mut b, prompt, Logits::All)
            .expect("gpu")
            .logits;
        let d = la
            .iter()
            .zip(&lb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(d <= tol, "{file}: logits differ by {d}");
        for &t in decode {
            let x = m.forward(&[t], &mut a, Logits::Last).expect("decode");
            let y = m.forward(&[t], &mut b, Logits::Last).expect("decode");
            let d = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            assert!(d <= tol, "{file}: decode after GPU prefill differs by {d}");
        }
        eprintln!("{file}: ok");
    }
}
