//! Scalar reference primitives: one multiply-add per value, in index order
//! (a Q8_0 value is widened as `d · q` on its own, like any other format's).

use super::{holds, read_value, KvFormat, Prims};

pub(super) fn prims(format: KvFormat) -> Prims {
    super::prims_of!(format, dot, axpy)
}

fn dot<const F: u8>(q: &[f32], k: &[u8]) -> f32 {
    assert!(holds::<F>(k, q.len()));
    q.iter().enumerate().fold(0.0f32, |s, (i, &a)| {
        // SAFETY: `k` holds `q.len()` values (asserted).
        s + a * unsafe { read_value::<F>(k.as_ptr(), i) }
    })
}

fn axpy<const F: u8>(acc: &mut [f32], p: f32, v: &[u8]) {
    assert!(holds::<F>(v, acc.len()));
    for (i, a) in acc.iter_mut().enumerate() {
        // SAFETY: `v` holds `acc.len()` values (asserted).
        *a += p * unsafe { read_value::<F>(v.as_ptr(), i) };
    }
}
