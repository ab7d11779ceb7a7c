//! Latent (MLA) decode attention's arithmetic rate, one thread: all 128
//! query heads of one token against one latent head of 576-value keys
//! whose 512-value prefix is the value (DeepSeek-V3's shape), f16 rows in
//! 16-token pages, over a context that stays in the caches:
//! `cargo run --release -p tandem-kernels --example mla_attention_speed [CTX]`.
//! Prints GFLOP/s (2 × heads × positions × (576 + 512) per token), which
//! on a compute-bound kernel is what to compare with the core's FMA peak.

use std::time::Instant;

use tandem_kernels::attention::{attend_block, KvBlock, KvFormat, SoftmaxState};

fn main() {
    let ctx: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2048);
    let (hd, vd, pt, nq) = (576usize, 512usize, 16usize, 128usize);
    let row = hd * 2;
    let pages = ctx.div_ceil(pt);
    let kv: Vec<u8> = (0..pages * pt * row)
        .map(|i| if i % 2 == 1 { 0x3c } else { (i * 7) as u8 })
        .collect();
    let q: Vec<f32> = (0..nq * hd)
        .map(|i| ((i % 13) as f32 - 6.0) * 1e-3)
        .collect();
    let mut acc = vec![0f32; nq * vd];
    let mut states = vec![SoftmaxState::EMPTY; nq];
    let mut scores = vec![0f32; nq * pt];
    let vis = vec![pt; nq];
    let isa = tandem_kernels::detected_isa();
    let flops = 2.0 * nq as f64 * (pages * pt) as f64 * (hd + vd) as f64;
    let mut best = 0f64;
    for _ in 0..7 {
        states.fill(SoftmaxState::EMPTY);
        acc.fill(0.0);
        let t0 = Instant::now();
        for p in 0..pages {
            let b = &kv[p * pt * row..(p + 1) * pt * row];
            let blk = KvBlock {
                ahead: KvBlock::NOTHING_AHEAD,
                format: KvFormat::F16,
                k: b,
                v: b,
                v_dim: vd,
                stride: row,
                n: pt,
            };
            attend_block(
                isa,
                &q,
                hd,
                0.07,
                &blk,
                &vis,
                &mut states,
                &mut acc,
                &mut scores,
            )
            .expect("attend");
        }
        best = best.max(flops / t0.elapsed().as_secs_f64() / 1e9);
    }
    println!("{isa}: {ctx} positions, {nq} heads: {best:.1} GFLOP/s (best of 7)");
}
