//! Fused CPU kernels, each with its own backward, for the operations where candle's composed ops are slow
//! on a CPU: linear layers, multi-head attention, softmax, layer norm, tanh-GELU, adaLN modulation and
//! gated residuals. candle's generic backward sums broadcast gradients with a strided loop (12 ms for a
//! 1024x512 bias gradient, 20x a matmul of the same size) and runs unary ops on one thread; these run
//! row-parallel on rayon.
//!
//! Each public function picks the fused kernel for f32 tensors and falls back to the equivalent composition
//! of candle ops elsewhere (other dtypes), which is also what the tests compare the kernels against. With
//! `--features cuda` the same ops run on a GPU through CUDA kernels of their own (`backend/engine/cuda`,
//! launched by [`cuda`] with the geometry of [`gpu`], checked on a host emulator in the tests): softmax,
//! GELU, the norms, the gated residual, attention and the parameters' gradient sums. Linear layers and
//! convolutions are candle's cuBLAS products there (bf16 under [`MatmulPrecision::Bf16`]).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

mod amx;
mod attention;
mod bf16;
mod conv;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod gemm;
pub(crate) mod gpu;
mod linear;
mod norm;
mod simd;

pub use attention::attention;
pub use conv::{Pool3x3, conv2d_bias_relu, pool_3x3};
pub use gemm::{MatmulPrecision, ProductShape, bf16_kernel, bf16_note, time_product, with_matmul_precision};
pub use linear::{linear, linear_gelu};
pub use norm::{affine_layer_norm, layer_norm, norm_modulate};
pub(crate) use simd::{sum_zip, vectorized};

type CResult<T> = candle_core::Result<T>;

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> CResult<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Whether an op with only a CPU kernel (linear layers, convolutions) takes `x` fused.
fn fused_cpu(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Whether an op with CPU and CUDA kernels takes `x` fused: f32 on the CPU, or on a GPU in a CUDA build.
fn fused(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && (x.device().is_cpu() || (cfg!(feature = "cuda") && x.device().is_cuda()))
}

/// The CUDA side of a custom op: `$body` in a `cuda_fwd` (compiled only with `--features cuda`); the first
/// name is `self` (a macro may use `self` only when its caller hands it in).
macro_rules! cuda_fwd1 {
    (|$me:ident, $s:ident, $l:ident| $body:expr) => {
        #[cfg(feature = "cuda")]
        fn cuda_fwd(&$me, $s: &candle_core::CudaStorage, $l: &Layout) -> CResult<(candle_core::CudaStorage, Shape)> {
            $body
        }
    };
}
macro_rules! cuda_fwd2 {
    (|$me:ident, $s1:ident, $l1:ident, $s2:ident, $l2:ident| $body:expr) => {
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &$me,
            $s1: &candle_core::CudaStorage,
            $l1: &Layout,
            $s2: &candle_core::CudaStorage,
            $l2: &Layout,
        ) -> CResult<(candle_core::CudaStorage, Shape)> {
            $body
        }
    };
}
macro_rules! cuda_fwd3 {
    (|$me:ident, $s1:ident, $l1:ident, $s2:ident, $l2:ident, $s3:ident, $l3:ident| $body:expr) => {
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &$me,
            $s1: &candle_core::CudaStorage,
            $l1: &Layout,
            $s2: &candle_core::CudaStorage,
            $l2: &Layout,
            $s3: &candle_core::CudaStorage,
            $l3: &Layout,
        ) -> CResult<(candle_core::CudaStorage, Shape)> {
            $body
        }
    };
}
pub(crate) use {cuda_fwd1, cuda_fwd2, cuda_fwd3};

/// Rows of at least this many values per rayon task, so small tensors are not split into tiny jobs.
const MIN_TASK: usize = 1 << 14;

fn rows_per_task(row_len: usize) -> usize {
    (MIN_TASK / row_len.max(1)).max(1)
}

/// Applies `f(row_index, row, out_row)` to every row of length `d`, rows split across rayon tasks.
fn map_rows(x: &[f32], d: usize, f: impl Fn(usize, &[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let rows = rows_per_task(d);
    out.par_chunks_mut(rows * d).zip(x.par_chunks(rows * d)).enumerate().for_each(|(task, (o, x))| {
        vectorized(
            #[inline(always)]
            || {
                for (i, (o, x)) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                    f(task * rows + i, x, o);
                }
            },
        )
    });
    out
}

/// Applies `f(row_index, a_row, b_row, out_row)` to matching rows of length `d` of `a` and `b`.
fn map_rows2(a: &[f32], b: &[f32], d: usize, f: impl Fn(usize, &[f32], &[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    let rows = rows_per_task(d);
    let inputs = a.par_chunks(rows * d).zip(b.par_chunks(rows * d));
    out.par_chunks_mut(rows * d).zip(inputs).enumerate().for_each(|(task, (o, (a, b)))| {
        vectorized(
            #[inline(always)]
            || {
                for (i, ((o, a), b)) in o.chunks_exact_mut(d).zip(a.chunks_exact(d)).zip(b.chunks_exact(d)).enumerate()
                {
                    f(task * rows + i, a, b, o);
                }
            },
        )
    });
    out
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

// ---------------------------------------------------------------------------------------------------------
// Softmax over the last dimension.

struct Softmax;
struct SoftmaxGrad;

/// `e^x` for `x <= 0` (softmax's shifted logits), branch-free so it vectorises: `2^n e^r` with n = x / ln 2
/// rounded and |r| <= ln 2 / 2 (ln 2 split in two parts for an exact reduction), e^r by Cephes' degree-7
/// polynomial for expf. Within 2 ulp of libm's `expf` down to -87; below, e^-87 (~1.6e-38). libm's
/// scalar `expf` was a third of attention's softmax time.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Softmax of one row, in place.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = simd::max(row);
    for v in row.iter_mut() {
        *v = exp_nonpositive(*v - max);
    }
    let inv = 1.0 / simd::sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// The gradient of a softmax row `y` from the gradient `g` of its output, in place of `g`: `y * (g - <g, y>)`.
#[inline(always)]
fn softmax_grad_row(y: &[f32], g: &mut [f32]) {
    let dot = simd::dot(g, y);
    for (g, &y) in g.iter_mut().zip(y) {
        *g = y * (*g - dot);
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "repdiff-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let out = map_rows(
            x,
            last_dim(l),
            #[inline(always)]
            |_, x, o| {
                o.copy_from_slice(x);
                softmax_row(o);
            },
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    cuda_fwd1!(|self, s, l| Ok((cuda::softmax(s, l)?, l.shape().clone())));

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(&res.contiguous()?, &SoftmaxGrad)?))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "repdiff-softmax-grad"
    }

    /// (g, y) -> y * (g - <g, y>)
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (g, y) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let out = map_rows2(
            g,
            y,
            last_dim(l1),
            #[inline(always)]
            |_, g, y, o| {
                o.copy_from_slice(g);
                softmax_grad_row(y, o);
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    cuda_fwd2!(|self, s1, l1, s2, l2| Ok((cuda::softmax_grad(s1, l1, s2, l2)?, l1.shape().clone())));
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return Ok(x.contiguous()?.apply_op1(Softmax)?);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    Ok(exp.broadcast_div(&sum)?)
}

// ---------------------------------------------------------------------------------------------------------
// tanh-approximated GELU.

struct Gelu;
struct GeluGrad;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// tanh as a branch-free 13/6 rational approximation on [-7.9053, 7.9053] (the coefficients of Eigen's
/// float tanh, accurate to a few ulp). libm's `tanhf` is scalar and took 17% of a training step; this one
/// vectorises.
#[inline(always)]
fn fast_tanh(x: f32) -> f32 {
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = x2 * -2.760_768_5e-16 + 2.000_188e-13;
    p = x2 * p + -8.604_672e-11;
    p = x2 * p + 5.122_297e-8;
    p = x2 * p + 1.485_722_4e-5;
    p = x2 * p + 6.372_619_3e-4;
    p = x2 * p + 4.893_524_6e-3;
    p *= x;
    let mut q = x2 * 1.198_258_4e-6 + 1.185_347_1e-4;
    q = x2 * q + 2.268_434_6e-3;
    q = x2 * q + 4.893_525e-3;
    p / q
}

/// tanh-GELU of every value, in parallel.
fn gelu_values(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(MIN_TASK).zip(x.par_chunks(MIN_TASK)).for_each(|(o, x)| {
        vectorized(
            #[inline(always)]
            || {
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = 0.5 * v * (1.0 + fast_tanh(SQRT_2_OVER_PI * (v + GELU_C * v * v * v)));
                }
            },
        )
    });
    out
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "repdiff-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        Ok((CpuStorage::F32(gelu_values(x)), l.shape().clone()))
    }

    cuda_fwd1!(|self, s, l| Ok((cuda::gelu(s, l)?, l.shape().clone())));

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(&arg.contiguous()?, &GeluGrad)?))
    }
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "repdiff-gelu-grad"
    }

    /// (g, x) -> g * gelu'(x)
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (g, x) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(MIN_TASK).zip(g.par_chunks(MIN_TASK).zip(x.par_chunks(MIN_TASK))).for_each(|(o, (g, x))| {
            vectorized(
                #[inline(always)]
                || {
                    for ((o, &g), &v) in o.iter_mut().zip(g).zip(x) {
                        let t = fast_tanh(SQRT_2_OVER_PI * (v + GELU_C * v * v * v));
                        let dt = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * v * v) * (1.0 - t * t);
                        *o = g * (0.5 * (1.0 + t) + 0.5 * v * dt);
                    }
                },
            )
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    cuda_fwd2!(|self, s1, l1, s2, l2| Ok((cuda::gelu_grad(s1, l1, s2, l2)?, l1.shape().clone())));
}

/// tanh-approximated GELU (as DiT's MLP uses).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused(x) {
        return Ok(x.contiguous()?.apply_op1(Gelu)?);
    }
    Ok(x.gelu()?)
}

// ---------------------------------------------------------------------------------------------------------
// Sums over rows: the gradients of broadcast parameters.

/// `[B, T, D] -> [B, D]`: sum over the middle (token) axis; `[M, D]` is treated as `[1, M, D]`.
struct TokenSum;
/// `([B, T, D], [B, T, D]) -> [B, D]`: sum over tokens of the elementwise product.
struct TokenSumProduct;

fn btd(l: &Layout) -> (usize, usize, usize) {
    match *l.dims() {
        [b, t, d] => (b, t, d),
        [m, d] => (1, m, d),
        _ => (1, 1, l.shape().elem_count()),
    }
}

/// Per group of `t` consecutive rows (of `b` groups), the sum of `add_row(row, acc)`'s contributions: it adds
/// row `row` (counted over all groups) into `acc`, a zeroed `d`-vector per task.
fn token_sums(b: usize, t: usize, d: usize, add_row: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    // Split long token axes too, so a [1, M, D] bias gradient still uses every core.
    let parts = if b >= rayon::current_num_threads() { 1 } else { (t * d / MIN_TASK).clamp(1, 64) };
    let rows_per_part = t.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..b * parts)
        .into_par_iter()
        .map(|job| {
            let (batch, part) = (job / parts, job % parts);
            let mut acc = vec![0f32; d];
            let end = ((part + 1) * rows_per_part).min(t);
            vectorized(
                #[inline(always)]
                || {
                    for row in part * rows_per_part..end {
                        add_row(batch * t + row, &mut acc);
                    }
                },
            );
            acc
        })
        .collect();
    let mut out = vec![0f32; b * d];
    for (job, partial) in partials.iter().enumerate() {
        let batch = job / parts;
        for (o, p) in out[batch * d..(batch + 1) * d].iter_mut().zip(partial) {
            *o += p;
        }
    }
    out
}

fn summed_shape(l: &Layout) -> Shape {
    match *l.dims() {
        [b, _, d] => Shape::from((b, d)),
        [_, d] => Shape::from(d),
        _ => Shape::from(l.shape().elem_count()),
    }
}

impl CustomOp1 for TokenSum {
    fn name(&self) -> &'static str {
        "repdiff-token-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (b, t, d) = btd(l);
        let sums = token_sums(
            b,
            t,
            d,
            #[inline(always)]
            |row, acc| {
                for (a, x) in acc.iter_mut().zip(&x[row * d..(row + 1) * d]) {
                    *a += x;
                }
            },
        );
        Ok((CpuStorage::F32(sums), summed_shape(l)))
    }

    cuda_fwd1!(|self, s, l| {
        let groups = btd(l).0;
        Ok((cuda::column_sums(gpu::ColumnSum::Values, s, l, None, groups, 0.0)?, summed_shape(l)))
    });
}

impl CustomOp2 for TokenSumProduct {
    fn name(&self) -> &'static str {
        "repdiff-token-sum-product"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (x, y) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let (b, t, d) = btd(l1);
        let sums = token_sums(
            b,
            t,
            d,
            #[inline(always)]
            |row, acc| {
                let (x, y) = (&x[row * d..(row + 1) * d], &y[row * d..(row + 1) * d]);
                for (a, (x, y)) in acc.iter_mut().zip(x.iter().zip(y)) {
                    *a += x * y;
                }
            },
        );
        Ok((CpuStorage::F32(sums), summed_shape(l1)))
    }

    cuda_fwd2!(|self, s1, l1, s2, l2| {
        let groups = btd(l1).0;
        Ok((cuda::column_sums(gpu::ColumnSum::Products, s1, l1, Some((s2, l2)), groups, 0.0)?, summed_shape(l1)))
    });
}

fn token_sum(g: &Tensor) -> CResult<Tensor> {
    g.contiguous()?.apply_op1_no_bwd(&TokenSum)
}

fn token_sum_product(g: &Tensor, x: &Tensor) -> CResult<Tensor> {
    g.contiguous()?.apply_op2_no_bwd(&x.contiguous()?, &TokenSumProduct)
}

// ---------------------------------------------------------------------------------------------------------
// The adaLN-Zero gated residual `x + a * gate`.

struct GatedResidual;
/// (g, gate) -> `g * gate`, the gradient of the gated branch.
struct Gate;

/// The gate row of token row `row` of a `[B, T, D]` tensor.
#[inline(always)]
fn gate_row(gate: &[f32], row: usize, t: usize, d: usize) -> &[f32] {
    let b = row / t.max(1);
    &gate[b * d..(b + 1) * d]
}

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "repdiff-gated-residual"
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
        let (x, a) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let gate = f32_slice(s3, l3, self.name())?;
        let (b, t, d) = btd(l1);
        if l2.dims() != l1.dims() || l3.dims() != [b, d] {
            candle_core::bail!("gated residual: x {:?}, branch {:?}, gate {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let out = map_rows2(
            x,
            a,
            d,
            #[inline(always)]
            |row, x, a, o| {
                for (((o, &x), &a), &gate) in o.iter_mut().zip(x).zip(a).zip(gate_row(gate, row, t, d)) {
                    *o = x + a * gate;
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    cuda_fwd3!(|self, s1, l1, s2, l2, s3, l3| {
        let (b, t, d) = btd(l1);
        if l2.dims() != l1.dims() || l3.dims() != [b, d] {
            candle_core::bail!("gated residual: x {:?}, branch {:?}, gate {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        Ok((cuda::gated(Some((s1, l1)), s2, l2, s3, l3, t)?, l1.shape().clone()))
    });

    fn bwd(
        &self,
        _x: &Tensor,
        a: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let grad_a = g.apply_op2_no_bwd(gate, &Gate)?;
        Ok((Some(g.clone()), Some(grad_a), Some(token_sum_product(&g, a)?)))
    }
}

impl CustomOp2 for Gate {
    fn name(&self) -> &'static str {
        "repdiff-gate"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (g, gate) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let (b, t, d) = btd(l1);
        if l2.dims() != [b, d] {
            candle_core::bail!("gate: gradient {:?}, gate {:?}", l1.dims(), l2.dims());
        }
        let out = map_rows(
            g,
            d,
            #[inline(always)]
            |row, g, o| {
                for ((o, &g), &gate) in o.iter_mut().zip(g).zip(gate_row(gate, row, t, d)) {
                    *o = g * gate;
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    cuda_fwd2!(|self, s1, l1, s2, l2| {
        let (b, t, d) = btd(l1);
        if l2.dims() != [b, d] {
            candle_core::bail!("gate: gradient {:?}, gate {:?}", l1.dims(), l2.dims());
        }
        Ok((cuda::gated(None, s1, l1, s2, l2, t)?, l1.shape().clone()))
    });
}

/// The adaLN-Zero residual `x + a * gate` for tokens `x`, `a` `[B, T, D]` and a per-sample `gate [B, D]`.
pub fn gated_residual(x: &Tensor, a: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if fused(x) && x.rank() == 3 {
        return Ok(x.contiguous()?.apply_op3(&a.contiguous()?, &gate.contiguous()?, GatedResidual)?);
    }
    Ok((x + a.broadcast_mul(&gate.unsqueeze(1)?)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        diff / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-12)
    }

    /// Runs `f` through the fused kernels and through candle's composition (by passing the inputs as f64, which
    /// takes the fallback path), and compares outputs and the gradients of a random projection of them.
    fn check(shapes: &[&[usize]], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
        let mut rng = Rng::new(42);
        let dev = Device::Cpu;
        let inputs: Vec<Tensor> = shapes.iter().map(|s| rng.randn(s.to_vec(), &dev).unwrap()).collect();
        let run = |dtype: DType| {
            let vars: Vec<Var> =
                inputs.iter().map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()).collect();
            let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let out = f(&tensors).unwrap();
            let proj = Rng::new(7).randn(out.shape().clone(), &dev).unwrap().to_dtype(dtype).unwrap();
            let grads = (&out * &proj).unwrap().sum_all().unwrap().backward().unwrap();
            let grads: Vec<Tensor> =
                vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().to_dtype(DType::F32).unwrap()).collect();
            (out.to_dtype(DType::F32).unwrap(), grads)
        };
        let (fused_out, fused_grads) = run(DType::F32);
        let (ref_out, ref_grads) = run(DType::F64);
        assert!(rel(&fused_out, &ref_out) < 1e-5, "forward: {}", rel(&fused_out, &ref_out));
        for (i, (a, b)) in fused_grads.iter().zip(&ref_grads).enumerate() {
            assert!(rel(a, b) < 1e-5, "gradient {i}: {}", rel(a, b));
        }
    }

    #[test]
    fn fast_tanh_is_accurate_everywhere() {
        let mut worst = 0f32;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((fast_tanh(x) - x.tanh()).abs());
        }
        assert!(worst < 5e-7, "max abs error {worst}");
        assert_eq!(fast_tanh(100.0), fast_tanh(7.905_311));
        assert!((fast_tanh(-100.0) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn bf16_precision_applies_inside_its_scope_only() {
        let mut rng = Rng::new(5);
        let dev = Device::Cpu;
        let (x, w, b) =
            (rng.randn((64, 96), &dev).unwrap(), rng.randn((80, 96), &dev).unwrap(), rng.randn(80, &dev).unwrap());
        let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let before = values(linear(&x, &w, &b).unwrap());
        let inside = with_matmul_precision(MatmulPrecision::Bf16, || linear(&x, &w, &b).unwrap());
        let after = values(linear(&x, &w, &b).unwrap());
        assert_eq!(before, after, "the precision leaked out of its scope");
        let f32_result = Tensor::from_vec(before.clone(), (64, 80), &dev).unwrap();
        // bf16 operands carry 8 bits of mantissa: close to the f32 product, and different from it.
        assert!(rel(&inside, &f32_result) < 2e-2, "{}", rel(&inside, &f32_result));
        if bf16::selected() {
            assert_ne!(values(inside), before, "bf16 was asked for but the product ran in f32");
        }
    }

    #[test]
    fn exp_is_accurate_over_softmax_range() {
        let mut worst = 0f32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (got, want) = (exp_nonpositive(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37);
    }

    #[test]
    fn fused_kernels_match_candle_compositions_forward_and_backward() {
        check(&[&[3, 5, 17]], |t| softmax_last_dim(&t[0]));
        check(&[&[3, 5, 17]], |t| layer_norm(&t[0], 1e-6));
        check(&[&[4, 33]], |t| gelu(&t[0]));
        check(&[&[3, 6, 8], &[3, 8], &[3, 8]], |t| norm_modulate(&t[0], &t[1], &t[2], 1e-6));
        check(&[&[1, 6, 8], &[1, 8], &[1, 8]], |t| norm_modulate(&t[0], &t[1], &t[2], 1e-6));
        // Shared per-feature parameters over rank-3 and rank-2 inputs.
        check(&[&[3, 6, 8], &[8], &[8]], |t| affine_layer_norm(&t[0], &t[1], &t[2], 1e-6));
        check(&[&[5000, 8], &[8], &[8]], |t| affine_layer_norm(&t[0], &t[1], &t[2], 1e-6));
        check(&[&[3, 6, 8], &[3, 6, 8], &[3, 8]], |t| gated_residual(&t[0], &t[1], &t[2]));
        check(&[&[1, 5000, 8], &[1, 5000, 8], &[1, 8]], |t| gated_residual(&t[0], &t[1], &t[2]));
        check(&[&[2, 5, 7], &[6, 7], &[6]], |t| linear_gelu(&t[0], &t[1], &t[2]));
        check(&[&[2, 5, 7], &[6, 7], &[6]], |t| linear(&t[0], &t[1], &t[2]));
        check(&[&[9, 7], &[6, 7], &[6]], |t| linear(&t[0], &t[1], &t[2]));
        // Three heads of size 4; a batch of 1 (products split inside the item) and of 3 (items split).
        check(&[&[1, 5, 36]], |t| attention(&t[0], 3));
        check(&[&[3, 6, 36]], |t| attention(&t[0], 3));
        // Long token axes are split across tasks for the parameter gradients (here the bias's).
        check(&[&[5000, 8], &[3, 8], &[3]], |t| linear(&t[0], &t[1], &t[2]));
    }
}
