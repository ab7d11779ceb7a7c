//! A weight matrix as found in the model files, before placement: the
//! tensor, its format and its shape. [`crate::shard`] turns it into the
//! per-node [`ShardedMatrix`](crate::shard::ShardedMatrix) the forward pass
//! multiplies with.

use tandem_kernels::WeightFormat;

use crate::tensor::Tensor;
use crate::ModelError;

/// A weight matrix ready for placement.
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
