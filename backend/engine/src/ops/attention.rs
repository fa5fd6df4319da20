//! Multi-head self-attention as one op with its own backward, read straight from the packed projections.
//!
//! Composed from candle ops, attention cuts q, k and v out of the qkv projection and transposes each to
//! `[N, heads, T, d]` (three copies whose backward pads a zero qkv-sized gradient each), scales, multiplies,
//! softmaxes, multiplies and transposes back: a dozen graph nodes, each with a zeroed gradient and an add in
//! the backward. Here each head's q, k and v are strided views into the qkv buffer, the output is written
//! into its head's columns, and the backward recomputes the attention weights (a T x T product per head,
//! cheaper than keeping them) and writes the q, k and v gradients into one qkv-shaped buffer.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{Exec, View, ViewMut, autocast_matmul, gemm};
use super::{CResult, f32_slice, fused_cpu, softmax_grad_row, softmax_last_dim, softmax_row, vectorized};
use crate::Result;

struct Attention {
    heads: usize,
}

struct AttentionGrad {
    heads: usize,
}

/// The shape of a packed qkv tensor `[N, T, 3D]` and what its kernels need.
#[derive(Clone, Copy)]
struct Geometry {
    tokens: usize,
    dim: usize,
    head_dim: usize,
    scale: f32,
    /// Threads (and precision) for the products inside one batch item: the batch is split across rayon
    /// tasks when it is at least as large as the pool, else each item's products are.
    exec: Exec,
}

impl Geometry {
    /// The batch size and the geometry of `l`.
    fn of(l: &Layout, heads: usize, op: &str) -> CResult<(usize, Self)> {
        let (n, tokens, d3) = l.shape().dims3()?;
        if d3 % 3 != 0 || heads == 0 || (d3 / 3) % heads != 0 {
            candle_core::bail!("{op}: qkv width {d3} is not 3 x heads ({heads}) x head size");
        }
        let (dim, head_dim) = (d3 / 3, d3 / 3 / heads);
        let threads = if n >= rayon::current_num_threads() { 1 } else { rayon::current_num_threads() };
        let exec = Exec::current(threads);
        Ok((n, Geometry { tokens, dim, head_dim, scale: 1.0 / (head_dim as f32).sqrt(), exec }))
    }

    /// One head's q, k or v (`part` 0, 1, 2) inside an item's packed `[T, 3D]`, as a `[T, head_dim]` view.
    fn part<'a>(&self, qkv: &'a [f32], part: usize, head: usize) -> View<'a> {
        View::rows(&qkv[part * self.dim + head * self.head_dim..], self.tokens, self.head_dim, 3 * self.dim)
    }

    /// One head's column block (`part` as above) of a `width`-wide row-major buffer, writable.
    fn block_mut<'a>(&self, data: &'a mut [f32], width: usize, part: usize, head: usize) -> ViewMut<'a> {
        ViewMut::rows(&mut data[part * self.dim + head * self.head_dim..], self.tokens, self.head_dim, width)
    }

    /// One head's attention weights `softmax(scale q k^T)` into `p` (`[T, T]`).
    fn weights(&self, qkv: &[f32], head: usize, p: &mut [f32]) {
        let t = self.tokens;
        gemm(
            ViewMut::rows(p, t, t, t),
            self.part(qkv, 0, head),
            self.part(qkv, 1, head).t(),
            self.scale,
            false,
            self.exec,
        );
        vectorized(
            #[inline(always)]
            || {
                for row in p.chunks_exact_mut(t) {
                    softmax_row(row);
                }
            },
        );
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "repdiff-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let qkv = f32_slice(s, l, self.name())?;
        let (n, geo) = Geometry::of(l, self.heads, self.name())?;
        let (t, d) = (geo.tokens, geo.dim);
        let mut out = vec![0f32; n * t * d];
        out.par_chunks_mut(t * d).zip(qkv.par_chunks(t * 3 * d)).for_each(|(out, qkv)| {
            let mut p = vec![0f32; t * t];
            for head in 0..self.heads {
                geo.weights(qkv, head, &mut p);
                let (p, v) = (View::rows(&p, t, t, t), geo.part(qkv, 2, head));
                gemm(geo.block_mut(out, d, 0, head), p, v, 1.0, false, geo.exec);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, t, d))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(qkv.apply_op2_no_bwd(&g.contiguous()?, &AttentionGrad { heads: self.heads })?))
    }
}

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "repdiff-attention-grad"
    }

    /// (qkv, g) -> the gradient of the packed qkv: per head, with P the weights and dO the head's columns
    /// of g: dV = P^T dO, dS = P * (dO V^T - rowsum(P * dO V^T)), dQ = scale dS K, dK = scale dS^T Q.
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (qkv, g) = (f32_slice(s1, l1, self.name())?, f32_slice(s2, l2, self.name())?);
        let (n, geo) = Geometry::of(l1, self.heads, self.name())?;
        let (t, d, exec) = (geo.tokens, geo.dim, geo.exec);
        if l2.dims() != [n, t, d] {
            candle_core::bail!("{}: gradient {:?} for qkv {:?}", self.name(), l2.dims(), l1.dims());
        }
        let mut grad = vec![0f32; n * t * 3 * d];
        grad.par_chunks_mut(t * 3 * d).zip(qkv.par_chunks(t * 3 * d).zip(g.par_chunks(t * d))).for_each(
            |(grad, (qkv, g))| {
                let (mut p, mut dp) = (vec![0f32; t * t], vec![0f32; t * t]);
                for head in 0..self.heads {
                    geo.weights(qkv, head, &mut p);
                    let (q, k, v) = (geo.part(qkv, 0, head), geo.part(qkv, 1, head), geo.part(qkv, 2, head));
                    let g_head = View::rows(&g[head * geo.head_dim..], t, geo.head_dim, d);
                    let p_view = View::rows(&p, t, t, t);
                    gemm(geo.block_mut(grad, 3 * d, 2, head), p_view.t(), g_head, 1.0, false, exec);
                    gemm(ViewMut::rows(&mut dp, t, t, t), g_head, v.t(), 1.0, false, exec);
                    vectorized(
                        #[inline(always)]
                        || {
                            for (dp, p) in dp.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                                softmax_grad_row(p, dp);
                            }
                        },
                    );
                    let ds = View::rows(&dp, t, t, t);
                    gemm(geo.block_mut(grad, 3 * d, 0, head), ds, k, geo.scale, false, exec);
                    gemm(geo.block_mut(grad, 3 * d, 1, head), ds.t(), q, geo.scale, false, exec);
                }
            },
        );
        Ok((CpuStorage::F32(grad), l1.shape().clone()))
    }
}

/// Multi-head self-attention `softmax(q k^T / sqrt(d)) v` per head. `qkv [N, T, 3D]` is a `qkv` projection's
/// output, its last axis laid out as (q | k | v, head, head size) (PyTorch's `reshape(N, T, 3, H, D/H)`);
/// the result `[N, T, D]` has the heads side by side, ready for the output projection.
pub fn attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    if fused_cpu(qkv) {
        return Ok(qkv.contiguous()?.apply_op1(Attention { heads })?);
    }
    #[cfg(feature = "cuda")]
    if let Some(out) = gpu_attention::attention(qkv, heads)? {
        return Ok(out);
    }
    let (n, t, d3) = qkv.dims3()?;
    let d = d3 / 3;
    let head_dim = d / heads.max(1);
    let qkv = qkv.reshape((n, t, 3, heads, head_dim))?;
    let part = |i: usize| -> Result<Tensor> { Ok(qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous()?) };
    let scale = 1.0 / (head_dim as f64).sqrt();
    let (q, k, v) = ((part(0)? * scale)?, part(1)?, part(2)?);
    let weights = softmax_last_dim(&autocast_matmul(&q, &k.t()?)?)?;
    Ok(autocast_matmul(&weights, &v)?.transpose(1, 2)?.reshape((n, t, d))?)
}

/// Attention on a GPU (`--features cuda`): the kernels of cuda/attention.cu, memory linear in the tokens,
/// with bf16 tensor-core products under [`super::MatmulPrecision::Bf16`].
#[cfg(feature = "cuda")]
mod gpu_attention {
    use std::sync::{Arc, Mutex};

    use candle_core::cuda_backend::cudarc::driver::CudaSlice;
    use candle_core::{CudaStorage, CustomOp1, CustomOp3, DType, Device, Layout, Shape, Tensor};

    use super::super::gpu::AttentionShape;
    use super::super::{CResult, cuda};
    use crate::Result;

    /// Each query's log-sum-exp, from the forward to its backward.
    type Saved = Arc<Mutex<Option<CudaSlice<f32>>>>;

    struct Attention {
        shape: AttentionShape,
        lse: Saved,
    }

    /// (qkv, out, g) -> the gradient of qkv.
    struct AttentionGrad {
        shape: AttentionShape,
        lse: Saved,
    }

    fn unsupported(op: &str) -> candle_core::Error {
        candle_core::Error::Msg(format!("{op} runs on a GPU only"))
    }

    impl CustomOp1 for Attention {
        fn name(&self) -> &'static str {
            "repdiff-attention-cuda"
        }

        fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> CResult<(candle_core::CpuStorage, Shape)> {
            Err(unsupported(self.name()))
        }

        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CResult<(CudaStorage, Shape)> {
            let (out, lse) = cuda::attention_forward(s, l, &self.shape)?;
            *self.lse.lock().map_err(|_| candle_core::Error::Msg("attention state poisoned".into()))? = Some(lse);
            let AttentionShape { batch, tokens, heads, head_dim, .. } = self.shape;
            Ok((out, Shape::from((batch, tokens, heads * head_dim))))
        }

        fn bwd(&self, qkv: &Tensor, res: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
            let grad = AttentionGrad { shape: self.shape, lse: self.lse.clone() };
            Ok(Some(qkv.apply_op3_no_bwd(res, &g.contiguous()?, &grad)?))
        }
    }

    impl CustomOp3 for AttentionGrad {
        fn name(&self) -> &'static str {
            "repdiff-attention-grad-cuda"
        }

        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> CResult<(candle_core::CpuStorage, Shape)> {
            Err(unsupported(self.name()))
        }

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> CResult<(CudaStorage, Shape)> {
            let saved = self.lse.lock().map_err(|_| candle_core::Error::Msg("attention state poisoned".into()))?;
            let lse = saved
                .as_ref()
                .ok_or_else(|| candle_core::Error::Msg("attention backward before its forward".into()))?;
            let grad = cuda::attention_backward((s1, l1), (s2, l2), (s3, l3), lse, &self.shape)?;
            Ok((grad, l1.shape().clone()))
        }
    }

    /// The attention of `qkv [N, T, 3D]` on its GPU, or `None` where the kernels do not take it (another
    /// device or dtype, a head larger than 128, more shared memory than the GPU has).
    pub(super) fn attention(qkv: &Tensor, heads: usize) -> Result<Option<Tensor>> {
        let Device::Cuda(dev) = qkv.device() else { return Ok(None) };
        let Ok((batch, tokens, d3)) = qkv.dims3() else { return Ok(None) };
        if qkv.dtype() != DType::F32 || heads == 0 || d3 % (3 * heads) != 0 {
            return Ok(None);
        }
        let bf16 = super::super::gemm::current_precision() == super::super::MatmulPrecision::Bf16;
        let shape = AttentionShape { batch, tokens, heads, head_dim: d3 / 3 / heads, bf16 };
        if !cuda::attention_supported(dev, &shape)? {
            return Ok(None);
        }
        Ok(Some(qkv.contiguous()?.apply_op1(Attention { shape, lse: Arc::default() })?))
    }
}
