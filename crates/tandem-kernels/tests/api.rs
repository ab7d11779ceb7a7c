//! Public API: geometry, ISA parsing, and that every size mismatch is an
//! error rather than a panic.

use proptest::prelude::*;
use tandem_kernels::{
    dequantize_row, matmul_rows, matmul_rows_with, ActivationFormat, Isa, KernelError,
    QuantizedActivations, WeightFormat,
};

#[test]
fn geometry() {
    use WeightFormat::*;
    let expect = [
        (F32, 1, 4),
        (F16, 1, 2),
        (BF16, 1, 2),
        (Q8_0, 32, 34),
        (Q4_0, 32, 18),
        (Q4_K, 256, 144),
        (Q5_K, 256, 176),
        (Q6_K, 256, 210),
    ];
    for (f, len, bytes) in expect {
        assert_eq!((f.block_len(), f.block_bytes()), (len, bytes), "{f}");
        assert_eq!(WeightFormat::from_ggml_type(f.ggml_type()), Some(f));
    }
    assert_eq!(Q4_K.row_bytes(4096), Some(16 * 144));
    assert_eq!(Q4_K.row_bytes(100), None);
    assert_eq!(Q8_0.row_bytes(usize::MAX / 32 * 32), None, "overflow");
    assert_eq!(Q4_0.activation_format(), ActivationFormat::Q8_0);
    assert_eq!(Q6_K.activation_format(), ActivationFormat::Q8_K);
    assert_eq!(BF16.activation_format(), ActivationFormat::BF16);
    assert_eq!(Q5_K.name(), "Q5_K");
    // ids that are not weight formats: Q8_1, Q8_K, I8, removed ids
    for id in [9, 15, 24, 4, 1000] {
        assert_eq!(WeightFormat::from_ggml_type(id), None, "{id}");
    }
    // the new types' geometry (ggml-common.h static_asserts) and pairings
    let more = [
        (Q4_1, 32, 20, ActivationFormat::Q8_1),
        (Q5_0, 32, 22, ActivationFormat::Q8_0),
        (Q5_1, 32, 24, ActivationFormat::Q8_1),
        (Q2_K, 256, 84, ActivationFormat::Q8_K),
        (Q3_K, 256, 110, ActivationFormat::Q8_K),
        (IQ2_XXS, 256, 66, ActivationFormat::Q8_K),
        (IQ2_XS, 256, 74, ActivationFormat::Q8_K),
        (IQ2_S, 256, 82, ActivationFormat::Q8_K),
        (IQ3_XXS, 256, 98, ActivationFormat::Q8_K),
        (IQ3_S, 256, 110, ActivationFormat::Q8_K),
        (IQ1_S, 256, 50, ActivationFormat::Q8_K),
        (IQ1_M, 256, 56, ActivationFormat::Q8_K),
        (IQ4_NL, 32, 18, ActivationFormat::Q8_0),
        (IQ4_XS, 256, 136, ActivationFormat::Q8_K),
        (MXFP4, 32, 17, ActivationFormat::Q8_0),
        (TQ1_0, 256, 54, ActivationFormat::Q8_K),
        (TQ2_0, 256, 66, ActivationFormat::Q8_K),
        (Q1_0, 128, 18, ActivationFormat::Q8_0),
        (Q2_0, 64, 18, ActivationFormat::Q8_0),
    ];
    for (f, len, bytes, act) in more {
        assert_eq!((f.block_len(), f.block_bytes()), (len, bytes), "{f}");
        assert_eq!(f.activation_format(), act, "{f}");
        assert_eq!(WeightFormat::from_ggml(f.ggml()), Some(f));
    }
    assert_eq!(WeightFormat::ALL.len(), 27);
    // blocks wider than their activation blocks: rows must hold whole weight blocks
    assert_eq!(Q1_0.row_bytes(96), None);
    assert_eq!(Q1_0.row_bytes(256), Some(36));
    assert_eq!(Q2_0.row_bytes(32), None);
    assert_eq!(Q2_0.ggml_type(), 42);
    assert_eq!(WeightFormat::from_ggml_type(41), Some(Q1_0));
}

/// Every ISA runs every format (its own kernel or a fallback), and the
/// registry names a family the CPU can run.
#[test]
fn registry_covers_every_format() {
    for isa in Isa::ALL {
        for f in WeightFormat::ALL {
            let fam = tandem_kernels::kernel_family_for(isa, f);
            if isa == Isa::Scalar {
                assert_eq!(fam, tandem_kernels::KernelFamily::Scalar);
            }
            println!("{isa} {f}: {fam:?}");
        }
    }
}

#[test]
fn isa_names_round_trip() {
    for isa in Isa::ALL {
        assert_eq!(isa.to_string().parse::<Isa>().unwrap(), isa);
    }
    assert_eq!("AVX2".parse::<Isa>().unwrap(), Isa::Avx2);
    assert!("sse9".parse::<Isa>().is_err());
    assert!(Isa::Scalar.is_available());
    assert!(tandem_kernels::detected_isa().is_available());
}

#[test]
fn f32_rows_round_trip() {
    let x = [1.5f32, -0.0, f32::INFINITY, 3.25e-40];
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = [0f32; 4];
    dequantize_row(WeightFormat::F32, &bytes, &mut out).unwrap();
    assert_eq!(out.map(f32::to_bits), x.map(f32::to_bits));
}

fn acts(format: ActivationFormat, n_rows: usize, n_cols: usize) -> QuantizedActivations {
    let mut q = QuantizedActivations::new(format);
    q.quantize(&vec![0.5; n_rows * n_cols], n_rows, n_cols)
        .unwrap();
    q
}

#[test]
fn matmul_size_errors() {
    let f = WeightFormat::Q4_K;
    let w = vec![0u8; 3 * 144 * 2]; // 3 rows of 512
    let q = acts(ActivationFormat::Q8_K, 2, 512);
    let mut out = vec![0f32; 6];
    assert!(matmul_rows(f, &w, 512, 0..3, &q, &mut out).is_ok());
    let err = |r: Result<(), KernelError>| r.unwrap_err();
    assert!(matches!(
        err(matmul_rows(f, &w, 512, 0..3, &q, &mut out[..5])),
        KernelError::SizeMismatch { .. }
    ));
    assert!(matches!(
        err(matmul_rows(f, &w, 512, 0..4, &q, &mut [0.0; 8])),
        KernelError::RowRange { .. }
    ));
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 2..1;
    assert!(matches!(
        err(matmul_rows(f, &w, 512, backwards, &q, &mut [])),
        KernelError::RowRange { .. }
    ));
    assert!(matches!(
        err(matmul_rows(f, &w[..400], 512, 0..1, &q, &mut out[..2])),
        KernelError::SizeMismatch { .. }
    ));
    assert!(matches!(
        err(matmul_rows(f, &w, 500, 0..1, &q, &mut out[..2])),
        KernelError::NotBlockAligned { .. }
    ));
    assert!(matches!(
        err(matmul_rows(f, &w, 768, 0..1, &q, &mut out[..2])),
        KernelError::SizeMismatch { .. }
    ));
    assert!(matches!(
        err(matmul_rows(f, &w, 0, 0..1, &q, &mut out[..2])),
        KernelError::ZeroColumns
    ));
    let q0 = acts(ActivationFormat::Q8_0, 2, 512);
    assert!(matches!(
        err(matmul_rows(f, &w, 512, 0..1, &q0, &mut out[..2])),
        KernelError::ActivationFormatMismatch { .. }
    ));
    let unavailable = Isa::ALL.into_iter().find(|i| !i.is_available());
    if let Some(isa) = unavailable {
        assert_eq!(
            err(matmul_rows_with(isa, f, &w, 512, 0..3, &q, &mut out)),
            KernelError::IsaUnavailable(isa)
        );
    }
    // empty ranges and empty batches are fine
    assert!(matmul_rows(f, &w, 512, 1..1, &q, &mut []).is_ok());
    let empty = acts(ActivationFormat::Q8_K, 0, 512);
    assert!(matmul_rows(f, &w, 512, 0..3, &empty, &mut []).is_ok());
}

#[test]
fn quantize_and_dequantize_errors() {
    let mut q = QuantizedActivations::new(ActivationFormat::Q8_0);
    assert!(matches!(
        q.quantize(&[0.0; 64], 2, 33),
        Err(KernelError::SizeMismatch { .. })
    ));
    assert!(matches!(
        q.quantize(&[0.0; 66], 2, 33),
        Err(KernelError::NotBlockAligned { .. })
    ));
    assert!(matches!(
        q.quantize(&[], usize::MAX, 2),
        Err(KernelError::Overflow)
    ));
    q.quantize(&[127.0; 64], 2, 32).unwrap(); // d = 1 exactly
    assert!(q.dequantize_row(2, &mut [0.0; 32]).is_err());
    assert!(q.dequantize_row(1, &mut [0.0; 31]).is_err());
    let mut out = [0f32; 32];
    q.dequantize_row(1, &mut out).unwrap();
    assert!(out.iter().all(|&v| v == 127.0));
    assert!(matches!(
        dequantize_row(WeightFormat::Q8_0, &[0; 33], &mut [0.0; 32]),
        Err(KernelError::SizeMismatch { .. })
    ));
    assert!(matches!(
        dequantize_row(WeightFormat::Q6_K, &[0; 210], &mut [0.0; 255]),
        Err(KernelError::NotBlockAligned { .. })
    ));
}

fn formats() -> impl Strategy<Value = WeightFormat> {
    prop::sample::select(WeightFormat::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary (mostly wrong) sizes never panic: the result is Ok or Err.
    #[test]
    fn matmul_never_panics(
        f in formats(),
        act_f in formats(),
        n_cols in prop::sample::select(vec![0usize, 1, 31, 32, 33, 64, 255, 256, 512]),
        act_cols in prop::sample::select(vec![0usize, 32, 256, 512]),
        n_b in 0usize..5,
        w_len in 0usize..3000,
        start in 0usize..8,
        len in 0usize..8,
        out_len in 0usize..40,
        isa in prop::sample::select(Isa::ALL.to_vec()),
    ) {
        let mut q = QuantizedActivations::new(act_f.activation_format());
        let _ = q.quantize(&vec![0.25; n_b * act_cols], n_b, act_cols);
        let w = vec![0x5Au8; w_len];
        let mut out = vec![0f32; out_len];
        let r = matmul_rows_with(isa, f, &w, n_cols, start..start + len, &q, &mut out);
        if r.is_ok() {
            prop_assert_eq!(out.len(), len * q.n_rows());
        }
        let mut d = vec![0f32; n_cols];
        let _ = dequantize_row(f, &w, &mut d);
    }
}
