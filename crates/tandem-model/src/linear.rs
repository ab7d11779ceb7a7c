//! Matrix multiplication of activations by weight matrices: the driver that
//! quantizes activations once per format and splits weight rows across
//! threads, around `tandem_kernels::matmul_rows`.
//!
//! Threads come from rayon's global pool for now; the NUMA decode engine will
//! replace this driver with pinned per-node pools. Kernels are unchanged by
//! that: they only ever see a row range.

use rayon::prelude::*;
use tandem_kernels::{ActivationFormat, QuantizedActivations, WeightFormat};

use crate::tensor::Tensor;
use crate::ModelError;

/// A weight matrix ready for multiplication.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub tensor: Tensor,
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
}

impl Matrix {
    pub fn new(tensor: &Tensor, rows: usize, cols: usize) -> Result<Matrix, ModelError> {
        let format = tensor.expect_matrix(rows, cols)?;
        Ok(Matrix {
            tensor: tensor.clone(),
            format,
            rows,
            cols,
        })
    }
}

/// One input, quantized lazily into each activation format asked for.
#[derive(Default)]
pub struct Activations {
    slots: Vec<(ActivationFormat, QuantizedActivations, bool)>,
    tmp: Vec<f32>,
}

impl Activations {
    /// Marks the input as changed.
    pub fn invalidate(&mut self) {
        for s in &mut self.slots {
            s.2 = false;
        }
    }

    /// `out[b][r] = x[b] · w[r]` for the `n` rows of `x`.
    pub fn matmul(
        &mut self,
        w: &Matrix,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let fmt = w.format.activation_format();
        let idx = match self.slots.iter().position(|s| s.0 == fmt) {
            Some(i) => i,
            None => {
                self.slots
                    .push((fmt, QuantizedActivations::new(fmt), false));
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[idx];
        if !slot.2 {
            slot.1
                .quantize(x, n, w.cols)
                .map_err(|e| ModelError::Kernel(e.to_string()))?;
            slot.2 = true;
        }
        let acts = &slot.1;
        let (rows, bytes) = (w.rows, w.tensor.bytes());
        if out.len() != rows * n {
            return Err(ModelError::Kernel(format!(
                "output holds {} values, {} needed",
                out.len(),
                rows * n
            )));
        }
        // Split rows so each thread gets a few chunks (load balance) of at
        // least 16 rows (amortise scheduling).
        let threads = rayon::current_num_threads().max(1);
        let chunk_rows = rows.div_ceil(threads * 4).max(16);
        let wide = if n == 1 {
            &mut *out
        } else {
            self.tmp.resize(rows * n, 0.0);
            &mut self.tmp[..]
        };
        wide.par_chunks_mut(chunk_rows * n)
            .enumerate()
            .try_for_each(|(i, o)| {
                let start = i * chunk_rows;
                tandem_kernels::matmul_rows(
                    w.format,
                    bytes,
                    w.cols,
                    start..start + o.len() / n,
                    acts,
                    o,
                )
            })
            .map_err(|e| ModelError::Kernel(e.to_string()))?;
        if n > 1 {
            // Kernels write weight-row-major; callers want token-major.
            for (r, vals) in self.tmp.chunks_exact(n).enumerate() {
                for (b, &v) in vals.iter().enumerate() {
                    out[b * rows + r] = v;
                }
            }
        }
        Ok(())
    }
}
