//! `y = x W^T + b` as one op with its own backward.
//!
//! Composed from candle ops a linear layer is five graph nodes (reshape, transpose, matmul, bias add,
//! reshape), and candle's backward allocates a zeroed gradient and adds into it at every node: four extra
//! passes over activation-sized tensors per layer and a copy of every weight gradient for the transpose.
//! Here the bias is written first and the product accumulated onto it, and the backward is two products on
//! the tensors as they lie (no transposed copies) and a column sum.
//!
//! The MLPs' first layer is fused with the tanh-GELU after it: one node instead of two, so the backward
//! skips the zeroed gradient and the add of the widest activation in a transformer block.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor};

use super::gemm::{Exec, View, ViewMut, autocast_matmul, gemm};
use super::{CResult, GeluGrad, f32_slice, fused_cpu, gelu, gelu_values, last_dim, token_sum};
use crate::Result;

struct Linear;

/// `gelu(x W^T + b)`; keeps the pre-activation for its backward (GELU cannot be inverted from its output).
struct LinearGelu {
    pre: Mutex<Option<Tensor>>,
}

/// `x W^T + b` for contiguous f32 operands `(x, w, b)`, `x` of any rank: the values and their shape.
fn affine(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> CResult<(Vec<f32>, Shape)> {
    let (x, w, b) = (f32_slice(s1, l1, op)?, f32_slice(s2, l2, op)?, f32_slice(s3, l3, op)?);
    let (out_dim, in_dim) = l2.shape().dims2()?;
    if last_dim(l1) != in_dim || b.len() != out_dim {
        candle_core::bail!("linear: input {:?}, weight {:?}, bias {:?}", l1.dims(), l2.dims(), l3.dims());
    }
    let rows = x.len() / in_dim.max(1);
    let mut y = b.repeat(rows);
    gemm(
        ViewMut::rows(&mut y, rows, out_dim, out_dim),
        View::rows(x, rows, in_dim, in_dim),
        View::rows(w, out_dim, in_dim, in_dim).t(),
        1.0,
        true,
        Exec::current(rayon::current_num_threads()),
    );
    let mut dims = l1.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = out_dim;
    Ok((y, Shape::from(dims)))
}

/// The gradients of `x W^T + b` from the gradient `g` of its output: `dx = g W`, `dW = g^T x`, `db` the
/// column sums of g.
fn affine_grads(x: &Tensor, w: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let g = g.contiguous()?;
    let out_dim = w.dim(0)?;
    let rows = g.elem_count() / out_dim.max(1);
    let dx = g.apply_op2_no_bwd(w, &Product { transpose_a: false })?.reshape(x.shape())?;
    let dw = g.apply_op2_no_bwd(x, &Product { transpose_a: true })?;
    let db = token_sum(&g.reshape((rows, out_dim))?)?;
    Ok((Some(dx), Some(dw), Some(db)))
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "repdiff-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (y, shape) = affine(self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        affine_grads(x, w, g)
    }
}

impl CustomOp3 for LinearGelu {
    fn name(&self) -> &'static str {
        "repdiff-linear-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (pre, shape) = affine(self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        let out = gelu_values(&pre);
        // Dropped with the op: at once in inference (no graph keeps it), after the backward in training.
        *self.pre.lock().expect("unpoisoned") = Some(Tensor::from_vec(pre, &shape, &Device::Cpu)?);
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let pre = self.pre.lock().expect("unpoisoned").clone();
        let pre = pre.ok_or_else(|| candle_core::Error::Msg("linear-gelu: backward before forward".into()))?;
        affine_grads(x, w, &g.contiguous()?.apply_op2_no_bwd(&pre, &GeluGrad)?)
    }
}

/// `a b` or `a^T b`, each operand read as a matrix over its last dimension (`[..., n]` as `[rows, n]`).
struct Product {
    transpose_a: bool,
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "repdiff-product"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let (a_cols, n) = (last_dim(l1), last_dim(l2));
        let a_rows = a.len() / a_cols.max(1);
        let a = View::rows(a, a_rows, a_cols, a_cols);
        let (a, m) = if self.transpose_a { (a.t(), a_cols) } else { (a, a_rows) };
        let b = View::rows(b, b.len() / n.max(1), n, n);
        let mut out = vec![0f32; m * n];
        gemm(ViewMut::rows(&mut out, m, n, n), a, b, 1.0, false, Exec::current(rayon::current_num_threads()));
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `x W^T + b` over the last dimension of `x` (any rank); `weight [out, in]`, `bias [out]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if fused_cpu(x) {
        return Ok(x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)?);
    }
    let dims = x.dims();
    let in_dim = dims.last().copied().unwrap_or(1);
    let flat = x.reshape((x.elem_count() / in_dim.max(1), in_dim))?;
    let y = autocast_matmul(&flat, &weight.t()?)?.broadcast_add(bias)?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = weight.dim(0)?;
    Ok(y.reshape(out_dims)?)
}

/// `gelu(x W^T + b)` (tanh-GELU), the first layer of a transformer MLP, as one op.
pub fn linear_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if fused_cpu(x) {
        let op = LinearGelu { pre: Mutex::new(None) };
        return Ok(x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?);
    }
    gelu(&linear(x, weight, bias)?)
}
