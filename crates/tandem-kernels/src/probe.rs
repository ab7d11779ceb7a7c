//! The inner loop of a memory read-bandwidth probe.
//!
//! Decode speed on a CPU is bounded by how fast weights stream from DRAM, so
//! `tandem bench` compares its effective GB/s with what a plain read of a
//! large buffer achieves on the same machine, in the same run. This is that
//! plain read: every byte is loaded once with the widest loads the CPU has,
//! and folded into a checksum (the wrapping sum of the buffer's little-endian
//! u64 words, the last one zero-padded) so the compiler cannot drop the loads.
//! The checksum does not depend on the ISA, which is what the tests compare.
//!
//! Threads are the caller's business: split the buffer and call this per part.

use crate::{Isa, KernelError};

/// Reads every byte of `buf` with the ISA from [`crate::detected_isa`] and
/// returns its checksum.
pub fn read_checksum(buf: &[u8]) -> u64 {
    let isa = crate::detected_isa();
    read_checksum_with(isa, buf).unwrap_or_else(|_| scalar(buf))
}

/// [`read_checksum`] with an explicit ISA; an error when the CPU lacks it.
pub fn read_checksum_with(isa: Isa, buf: &[u8]) -> Result<u64, KernelError> {
    if !isa.is_available() {
        return Err(KernelError::IsaUnavailable(isa));
    }
    Ok(match isa {
        Isa::Scalar | Isa::Neon => scalar(buf),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` checked AVX2 above.
        Isa::Avx2 => unsafe { x86::avx2(buf) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` checked AVX-512 F/BW/VL above.
        Isa::Avx512 => unsafe { x86::avx512(buf) },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => scalar(buf),
    })
}

/// The reference: wrapping sum of the little-endian u64 words of `buf`.
fn scalar(buf: &[u8]) -> u64 {
    let mut words = buf.chunks_exact(8);
    let mut sum = 0u64;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        sum = sum.wrapping_add(u64::from_le_bytes(b));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        sum = sum.wrapping_add(u64::from_le_bytes(b));
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    /// Four 32-byte accumulators (128 bytes per iteration), then the scalar
    /// tail; the head length is a multiple of 8, so words line up.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(buf: &[u8]) -> u64 {
        const STEP: usize = 128;
        let n = buf.len() / STEP * STEP;
        let p = buf.as_ptr();
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut i = 0;
        while i < n {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 32k + 32 <= n <= buf.len().
                let v = unsafe { _mm256_loadu_si256(p.add(i + 32 * k).cast()) };
                *a = _mm256_add_epi64(*a, v);
            }
            i += STEP;
        }
        let s = _mm256_add_epi64(
            _mm256_add_epi64(acc[0], acc[1]),
            _mm256_add_epi64(acc[2], acc[3]),
        );
        let mut lanes = [0u64; 4];
        // SAFETY: lanes is 32 bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), s) };
        lanes
            .iter()
            .fold(super::scalar(&buf[n..]), |a, &b| a.wrapping_add(b))
    }

    /// Four 64-byte accumulators (256 bytes per iteration), then the scalar tail.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(buf: &[u8]) -> u64 {
        const STEP: usize = 256;
        let n = buf.len() / STEP * STEP;
        let p = buf.as_ptr();
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut i = 0;
        while i < n {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 64k + 64 <= n <= buf.len().
                let v = unsafe { _mm512_loadu_si512(p.add(i + 64 * k).cast()) };
                *a = _mm512_add_epi64(*a, v);
            }
            i += STEP;
        }
        let s = _mm512_add_epi64(
            _mm512_add_epi64(acc[0], acc[1]),
            _mm512_add_epi64(acc[2], acc[3]),
        );
        let mut lanes = [0u64; 8];
        // SAFETY: lanes is 64 bytes.
        unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), s) };
        lanes
            .iter()
            .fold(super::scalar(&buf[n..]), |a, &b| a.wrapping_add(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_matches_scalar() {
        // Lengths around every step size, offsets that break alignment.
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for isa in Isa::ALL {
            let Ok(_) = read_checksum_with(isa, &[]) else {
                continue; // not on this CPU
            };
            for start in [0, 1, 3, 8] {
                for len in [0, 1, 7, 8, 9, 127, 128, 129, 255, 256, 257, 1000, 4096] {
                    let b = &data[start..start + len];
                    assert_eq!(
                        read_checksum_with(isa, b).ok(),
                        Some(scalar(b)),
                        "{isa} start {start} len {len}"
                    );
                }
            }
        }
        assert_eq!(scalar(&[1, 0, 0, 0, 0, 0, 0, 0, 2]), 3);
        assert_eq!(read_checksum(&data), scalar(&data));
    }
}
