//! Scalar reference primitives: one multiply-add per value, in index order.

use super::{KvFormat, Prims};
use crate::convert::{bf16_to_f32, f16_to_f32};

pub(super) fn prims(format: KvFormat) -> Prims {
    match format {
        KvFormat::F32 => Prims {
            dot: dot::<F32>,
            axpy: axpy::<F32>,
        },
        KvFormat::F16 => Prims {
            dot: dot::<F16>,
            axpy: axpy::<F16>,
        },
        KvFormat::BF16 => Prims {
            dot: dot::<BF16>,
            axpy: axpy::<BF16>,
        },
    }
}

/// How one stored value is read.
trait Stored {
    const BYTES: usize;
    fn read(b: &[u8]) -> f32;
}

struct F32;
struct F16;
struct BF16;

impl Stored for F32 {
    const BYTES: usize = 4;
    fn read(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Stored for F16 {
    const BYTES: usize = 2;
    fn read(b: &[u8]) -> f32 {
        f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
    }
}

impl Stored for BF16 {
    const BYTES: usize = 2;
    fn read(b: &[u8]) -> f32 {
        bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))
    }
}

fn dot<S: Stored>(q: &[f32], k: &[u8]) -> f32 {
    q.iter()
        .zip(k.chunks_exact(S::BYTES))
        .fold(0.0f32, |s, (&a, b)| s + a * S::read(b))
}

fn axpy<S: Stored>(acc: &mut [f32], p: f32, v: &[u8]) {
    acc.iter_mut()
        .zip(v.chunks_exact(S::BYTES))
        .for_each(|(a, b)| *a += p * S::read(b));
}
