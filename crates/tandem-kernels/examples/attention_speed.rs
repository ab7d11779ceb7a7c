//! Attention's streaming speed over a page-shaped KV buffer, one thread:
//! `cargo run --release -p tandem-kernels --example attention_speed [MiB]`.
//! Reports GB/s of K/V read for a cold buffer (larger than the caches) and
//! for a hot one (L2-sized), so memory and compute limits can be told apart.

use std::time::Instant;

use tandem_kernels::attention::{attend_block, KvBlock, KvFormat, SoftmaxState};

fn run(mib: usize, reps: usize, pf: usize) -> f64 {
    let (hd, pt, group) = (128usize, 16usize, 3usize);
    let format = KvFormat::F16;
    let slab = pt * hd * 2;
    let n_slabs = (mib << 20) / (2 * slab);
    // Huge-page backed, as the KV pool is (4 KiB pages would stop the
    // hardware prefetchers at every slab).
    let buf = |fill: u16| {
        let mut m = memmap2::MmapMut::map_anon(n_slabs * slab).expect("map");
        let _ = m.advise(memmap2::Advice::HugePage);
        for c in m.chunks_exact_mut(2) {
            c.copy_from_slice(&fill.to_le_bytes());
        }
        m
    };
    let (k, v) = (buf(0x3c00), buf(0x3800));
    let (kb, vb): (&[u8], &[u8]) = (&k, &v);
    let q = vec![0.01f32; group * hd];
    let mut acc = vec![0f32; group * hd];
    let mut states = vec![SoftmaxState::EMPTY; group];
    let mut scores = vec![0f32; 64 * pt];
    let vis = [pt; 3];
    let isa = tandem_kernels::detected_isa();
    if pf == 0 && reps == 2 {
        let t = Instant::now();
        let c = tandem_kernels::read_checksum(kb) ^ tandem_kernels::read_checksum(vb);
        let gbps = 2.0 * kb.len() as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!("plain read of the same buffers: {gbps:.2} GB/s ({c:x})");
    }
    let t0 = Instant::now();
    for _ in 0..reps {
        for s in 0..n_slabs {
            // The kernel spreads the prefetch of the slabs `pf` ahead over
            // its rows (as decode does).
            let t = s + pf;
            let ahead = if pf > 0 && t < n_slabs {
                [&kb[t * slab..(t + 1) * slab], &vb[t * slab..(t + 1) * slab]]
            } else {
                KvBlock::NOTHING_AHEAD
            };
            let blk = KvBlock {
                ahead,
                format,
                k: &kb[s * slab..(s + 1) * slab],
                v: &vb[s * slab..(s + 1) * slab],
                v_dim: hd,
                stride: hd * 2,
                n: pt,
            };
            attend_block(
                isa,
                &q,
                hd,
                0.1,
                &blk,
                &vis,
                &mut states,
                &mut acc,
                &mut scores,
            )
            .expect("attend");
        }
    }
    let bytes = (reps * n_slabs * 2 * slab) as f64;
    bytes / t0.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    for pf in [0, 1, 2, 4, 8, 16] {
        println!(
            "cold ({mib} MiB), prefetch {pf} slabs ahead: {:.2} GB/s",
            run(mib, 2, pf)
        );
    }
    println!("hot (1 MiB):     {:.2} GB/s", run(1, 2000, 0));
}
