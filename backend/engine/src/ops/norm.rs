//! Layer norm over the last dimension, alone or fused with the affine map that follows it in every model
//! here: adaLN's per-sample `x̂ (1 + scale) + shift` (the DiT blocks and final layer) and LayerNorm's learned
//! per-feature `x̂ weight + bias` (the representation encoder, the ViT baseline, DINOv2).
//!
//! Composed, a norm followed by its affine map is three graph nodes whose backward makes a zeroed gradient
//! and an add for each, and candle sums the broadcast parameters' gradients with a strided loop on one
//! thread. Fused, the forward is one pass per row and the backward three: the input's gradient and the two
//! parameter gradients, all row-parallel.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, Layout, Shape, Tensor};

use super::{CResult, cuda_fwd1, cuda_fwd2, cuda_fwd3, f32_slice, fused, last_dim, map_rows, map_rows2, simd};
#[cfg(feature = "cuda")]
use super::{cuda, gpu};
use super::{token_sum, token_sums};
use crate::Result;

/// Mean and reciprocal standard deviation of a row.
#[inline(always)]
fn mean_rstd(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = simd::sum(x) / n;
    let var = simd::sum_map(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// The gradient of a normalised row's input from the gradient `gy` of the normalised row `x̂`, in place of
/// `gy`: `rstd (gy - mean(gy) - x̂ mean(gy x̂))`.
#[inline(always)]
fn normalised_grad(x: &[f32], eps: f32, gy: &mut [f32]) {
    let n = x.len() as f32;
    let (mean, rstd) = mean_rstd(x, eps);
    let mean_g = simd::sum(gy) / n;
    let mean_gy = simd::sum_zip(gy, x, |g, v| g * (v - mean)) * rstd / n;
    for (g, &v) in gy.iter_mut().zip(x) {
        *g = rstd * (*g - mean_g - (v - mean) * rstd * mean_gy);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Layer norm without affine parameters.

struct LayerNorm {
    eps: f32,
}
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "repdiff-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let out = map_rows(
            x,
            last_dim(l),
            #[inline(always)]
            |_, x, o| {
                let (mean, rstd) = mean_rstd(x, self.eps);
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = (v - mean) * rstd;
                }
            },
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    cuda_fwd1!(|self, s, l| {
        let rows = l.shape().elem_count() / last_dim(l).max(1);
        let affine = cuda::Affine { shift: None, scale: None, rows_per_param: rows, offset: 0.0 };
        Ok((cuda::norm_affine(s, l, affine, self.eps)?, l.shape().clone()))
    });

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(&arg.contiguous()?, &LayerNormGrad { eps: self.eps })?))
    }
}

impl CustomOp2 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "repdiff-layer-norm-grad"
    }

    /// (g, x) -> the gradient of x.
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (g, x) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let out = map_rows2(
            g,
            x,
            last_dim(l1),
            #[inline(always)]
            |_, g, x, o| {
                o.copy_from_slice(g);
                normalised_grad(x, self.eps, o);
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    cuda_fwd2!(|self, s1, l1, s2, l2| {
        let rows = l2.shape().elem_count() / last_dim(l2).max(1);
        let affine = cuda::Affine { shift: None, scale: None, rows_per_param: rows, offset: 0.0 };
        Ok((cuda::norm_affine_grad_x(s1, l1, s2, l2, affine, self.eps)?, l2.shape().clone()))
    });
}

/// Layer norm over the last dimension without affine parameters.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(x) {
        return Ok(x.contiguous()?.apply_op1(LayerNorm { eps: eps as f32 })?);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centered.broadcast_div(&(var + eps)?.sqrt()?)?)
}

// ---------------------------------------------------------------------------------------------------------
// Layer norm with an affine map: `x̂ (offset + scale) + shift`.

/// `offset` is 1 for adaLN's `(1 + scale)` and 0 for a LayerNorm weight.
#[derive(Clone, Copy)]
struct NormAffine {
    eps: f32,
    offset: f32,
}

/// (g, x, scale) -> the gradient of x.
struct NormAffineGradX(NormAffine);
/// (g, x, scale) -> the gradient of scale: the sums of `g x̂` over the rows that share a parameter row.
struct NormAffineGradScale(NormAffine);

/// Which parameter row applies to which rows of x: `[B, D]` parameters for `x [B, T, D]` (one row per
/// sample, shared by its T tokens), or `[D]` parameters shared by every row.
#[derive(Clone, Copy)]
struct Groups {
    /// Parameter rows.
    count: usize,
    /// Rows of x per parameter row.
    rows: usize,
    dim: usize,
}

impl Groups {
    fn of(x: &Layout, param: &Layout, op: &str) -> CResult<Self> {
        let dim = last_dim(x);
        let rows = x.shape().elem_count() / dim.max(1);
        match (x.dims(), param.dims()) {
            (_, &[d]) if d == dim => Ok(Groups { count: 1, rows, dim }),
            (&[b, t, _], &[pb, d]) if pb == b && d == dim => Ok(Groups { count: b, rows: t, dim }),
            _ => candle_core::bail!("{op}: parameters {:?} do not fit input {:?}", param.dims(), x.dims()),
        }
    }

    /// The parameter row of row `row` of x.
    #[inline(always)]
    fn param<'a>(&self, values: &'a [f32], row: usize) -> &'a [f32] {
        let p = row / self.rows.max(1);
        &values[p * self.dim..(p + 1) * self.dim]
    }
}

impl CustomOp3 for NormAffine {
    fn name(&self) -> &'static str {
        "repdiff-norm-affine"
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
        let x = f32_slice(s1, l1, self.name())?;
        let (shift, scale) = (f32_slice(s2, l2, self.name())?, f32_slice(s3, l3, self.name())?);
        let groups = Groups::of(l1, l2, self.name())?;
        Groups::of(l1, l3, self.name())?;
        let out = map_rows(
            x,
            groups.dim,
            #[inline(always)]
            |row, x, o| {
                let (sh, sc) = (groups.param(shift, row), groups.param(scale, row));
                let (mean, rstd) = mean_rstd(x, self.eps);
                for (((o, &v), &sh), &sc) in o.iter_mut().zip(x).zip(sh).zip(sc) {
                    *o = (v - mean) * rstd * (self.offset + sc) + sh;
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    cuda_fwd3!(|self, s1, l1, s2, l2, s3, l3| {
        let groups = Groups::of(l1, l2, self.name())?;
        Groups::of(l1, l3, self.name())?;
        let affine = cuda::Affine {
            shift: Some((s2, l2)),
            scale: Some((s3, l3)),
            rows_per_param: groups.rows,
            offset: self.offset,
        };
        Ok((cuda::norm_affine(s1, l1, affine, self.eps)?, l1.shape().clone()))
    });

    fn bwd(
        &self,
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = g.apply_op3_no_bwd(x, scale, &NormAffineGradX(*self))?;
        // shift's gradient: g summed over the rows sharing each parameter row (a sample's tokens, or all).
        let dshift = match shift.rank() {
            1 => token_sum(&g.reshape((g.elem_count() / shift.elem_count().max(1), shift.elem_count()))?)?,
            _ => token_sum(&g)?,
        };
        let dscale = g.apply_op3_no_bwd(x, scale, &NormAffineGradScale(*self))?;
        Ok((Some(dx), Some(dshift), Some(dscale)))
    }
}

impl CustomOp3 for NormAffineGradX {
    fn name(&self) -> &'static str {
        "repdiff-norm-affine-grad-x"
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
        let (g, x) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let scale = f32_slice(s3, l3, self.name())?;
        let groups = Groups::of(l2, l3, self.name())?;
        let NormAffine { eps, offset } = self.0;
        let out = map_rows2(
            g,
            x,
            groups.dim,
            #[inline(always)]
            |row, g, x, o| {
                for ((o, &g), &sc) in o.iter_mut().zip(g).zip(groups.param(scale, row)) {
                    *o = g * (offset + sc);
                }
                normalised_grad(x, eps, o);
            },
        );
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }

    cuda_fwd3!(|self, s1, l1, s2, l2, s3, l3| {
        let groups = Groups::of(l2, l3, self.name())?;
        let NormAffine { eps, offset } = self.0;
        let affine = cuda::Affine { shift: None, scale: Some((s3, l3)), rows_per_param: groups.rows, offset };
        Ok((cuda::norm_affine_grad_x(s1, l1, s2, l2, affine, eps)?, l2.shape().clone()))
    });
}

impl CustomOp3 for NormAffineGradScale {
    fn name(&self) -> &'static str {
        "repdiff-norm-affine-grad-scale"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        _s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (g, x) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let groups = Groups::of(l2, l3, self.name())?;
        let d = groups.dim;
        let sums = token_sums(
            groups.count,
            groups.rows,
            d,
            #[inline(always)]
            |row, acc| {
                let (x, g) = (&x[row * d..(row + 1) * d], &g[row * d..(row + 1) * d]);
                let (mean, rstd) = mean_rstd(x, self.0.eps);
                for ((a, &g), &v) in acc.iter_mut().zip(g).zip(x) {
                    *a += g * (v - mean) * rstd;
                }
            },
        );
        Ok((CpuStorage::F32(sums), l3.shape().clone()))
    }

    cuda_fwd3!(|self, s1, l1, s2, l2, _s3, l3| {
        let groups = Groups::of(l2, l3, self.name())?;
        let sums = cuda::column_sums(gpu::ColumnSum::Normalised, s1, l1, Some((s2, l2)), groups.count, self.0.eps)?;
        Ok((sums, l3.shape().clone()))
    });
}

fn norm_affine(x: &Tensor, shift: &Tensor, scale: &Tensor, offset: f64, eps: f64) -> Result<Tensor> {
    if fused(x) {
        let op = NormAffine { eps: eps as f32, offset: offset as f32 };
        return Ok(x.contiguous()?.apply_op3(&shift.contiguous()?, &scale.contiguous()?, op)?);
    }
    let normed = layer_norm(x, eps)?;
    let (shift, scale) = match shift.rank() {
        1 => (shift.clone(), scale.clone()),
        _ => (shift.unsqueeze(1)?, scale.unsqueeze(1)?),
    };
    Ok(normed.broadcast_mul(&(scale + offset)?)?.broadcast_add(&shift)?)
}

/// adaLN: `LN(x) (1 + scale) + shift` for tokens `x [B, T, D]` and per-sample `shift`, `scale` `[B, D]`.
pub fn norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    norm_affine(x, shift, scale, 1.0, eps)
}

/// LayerNorm over the last dimension with a learned `weight` and `bias` (`[D]`).
pub fn affine_layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    norm_affine(x, bias, weight, 0.0, eps)
}
