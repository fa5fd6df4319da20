//! AdamW with saveable state, global gradient-norm clipping, and the EMA of weights.
//! (candle-nn's AdamW keeps its moments private, so a resumed run would restart them from zero.)
//!
//! On the CPU a step is two passes over the parameters: one reads every gradient for the global norm, one
//! updates each parameter, its moments and the clipped gradient together, in place (the composed update was
//! about ten passes, each allocating its result; on the tiny CPU model they were 9% of a training step).
//! On a GPU (`--features cuda`) the same two passes are kernels (cuda/optim.rs): the norm and the clipping
//! factor stay on the device, so a step reads one number back (the norm, for the log) instead of one per
//! parameter. Other dtypes take the same update composed of tensor ops.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use candle_core::{
    CpuStorage, DType, Device, InplaceOp2, Layout, Shape, Storage, StorageRef, Tensor, Var, backprop::GradStore,
};
use rayon::prelude::*;

use crate::nn::VarSet;
use crate::ops::{sum_zip, vectorized};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// AdamW exactly as `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments).
pub struct AdamW {
    pub config: AdamWConfig,
    step: u64,
    moments: BTreeMap<String, Moments>,
}

/// A parameter's first and second moments: plain vectors for an f32 parameter on the CPU, which the fused
/// update rewrites in place, tensors elsewhere.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32>, shape: Shape },
    Tensors { m: Tensor, v: Tensor },
}

impl Moments {
    fn zeros(var: &Var) -> Result<Self> {
        Ok(match (var.device(), var.dtype()) {
            (Device::Cpu, DType::F32) => {
                let n = var.elem_count();
                Moments::Host { m: vec![0.0; n], v: vec![0.0; n], shape: var.shape().clone() }
            }
            _ => Moments::Tensors { m: var.zeros_like()?, v: var.zeros_like()? },
        })
    }
}

impl AdamW {
    pub fn new(config: AdamWConfig, vars: &VarSet) -> Result<Self> {
        let moments = vars.iter().map(|(name, var)| Ok((name.clone(), Moments::zeros(var)?))).collect::<Result<_>>()?;
        Ok(AdamW { config, step: 0, moments })
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Applies one update to every variable that has a gradient in `grads`, the gradients first scaled so
    /// that their global L2 norm is at most `max_grad_norm` when one is given (as
    /// `torch.nn.utils.clip_grad_norm_` before `optimizer.step()`). Returns the norm before clipping.
    pub fn step(&mut self, vars: &VarSet, grads: &GradStore, max_grad_norm: Option<f64>) -> Result<f64> {
        if let Some((name, _)) =
            vars.iter().find(|(name, var)| !self.moments.contains_key(*name) && grads.get(var.as_tensor()).is_some())
        {
            return Err(Error::Param { name: name.clone(), reason: "has no optimiser state".into() });
        }
        let mut updates = Vec::new();
        for (name, moments) in self.moments.iter_mut() {
            // Detached: a gradient can still hold the graph of the step that made it (candle keeps the
            // ops of a variable's accumulated gradient), and moments built from it would chain every
            // step's graph to the next. Contiguous: the fused update reads it as one slice.
            let Some(var) = vars.get(name) else { continue };
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            updates.push((var, grad.detach().contiguous()?, moments));
        }
        let c = self.config;
        let step = self.step + 1;
        let bias1 = 1.0 - c.beta1.powi(step as i32);
        let bias2 = 1.0 - c.beta2.powi(step as i32);
        let step_size = c.learning_rate / bias1;
        let decay = 1.0 - c.learning_rate * c.weight_decay;
        let mut k = AdamWStep {
            grad_scale: 1.0,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            eps: c.eps as f32,
            decay: decay as f32,
            step_size: step_size as f32,
            inv_bias2_sqrt: (1.0 / bias2.sqrt()) as f32,
        };
        #[cfg(feature = "cuda")]
        if let Some(norm) = gpu::step(&updates, &k, max_grad_norm)? {
            self.step = step;
            return Ok(norm);
        }
        let norm = global_norm(updates.iter().map(|(_, grad, _)| grad))?;
        let grad_scale = match max_grad_norm {
            Some(max) if max / (norm + 1e-6) < 1.0 => max / (norm + 1e-6),
            _ => 1.0,
        };
        k.grad_scale = grad_scale as f32;
        self.step = step;
        for (var, grad, moments) in updates {
            match moments {
                Moments::Host { m, v, .. } => {
                    let update = FusedAdamW { k: &k, m: RefCell::new(m), v: RefCell::new(v) };
                    var.as_tensor().inplace_op2(&grad, &update)?;
                }
                Moments::Tensors { m, v } => {
                    let grad = if grad_scale < 1.0 { (grad * grad_scale)? } else { grad };
                    let new_m = ((&*m * c.beta1)? + (&grad * (1.0 - c.beta1))?)?;
                    let new_v = ((&*v * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
                    let denom = ((new_v.sqrt()? / bias2.sqrt())? + c.eps)?;
                    let decayed = (var.as_tensor() * decay)?;
                    var.set(&(decayed - ((&new_m / denom)? * step_size)?)?)?;
                    *m = new_m;
                    *v = new_v;
                }
            }
        }
        Ok(norm)
    }

    /// State as named tensors (`m.<param>`, `v.<param>`) plus the step count.
    pub fn state(&self) -> Result<(BTreeMap<String, Tensor>, u64)> {
        let mut tensors = BTreeMap::new();
        for (name, moments) in &self.moments {
            let (m, v) = match moments {
                Moments::Host { m, v, shape } => {
                    (Tensor::from_slice(m, shape, &Device::Cpu)?, Tensor::from_slice(v, shape, &Device::Cpu)?)
                }
                // Copies: on a GPU the moments are updated in place.
                Moments::Tensors { m, v } => (m.copy()?, v.copy()?),
            };
            tensors.insert(format!("m.{name}"), m);
            tensors.insert(format!("v.{name}"), v);
        }
        Ok((tensors, self.step))
    }

    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (name, moments) in self.moments.iter_mut() {
            let value = |prefix: &str, dims: &[usize]| {
                let key = format!("{prefix}.{name}");
                let value = tensors
                    .get(&key)
                    .ok_or_else(|| Error::Param { name: key.clone(), reason: "missing optimiser state".into() })?;
                if value.dims() != dims {
                    return Err(Error::Param { name: key, reason: format!("shape {:?} != {:?}", value.dims(), dims) });
                }
                Ok(value)
            };
            match moments {
                Moments::Host { m, v, shape } => {
                    for (slot, prefix) in [(m, "m"), (v, "v")] {
                        *slot = value(prefix, shape.dims())?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                    }
                }
                Moments::Tensors { m, v } => {
                    for (slot, prefix) in [(m, "m"), (v, "v")] {
                        // A copy: the caller's tensor must not change with the in-place updates on a GPU.
                        *slot = value(prefix, slot.dims())?.to_device(slot.device())?.to_dtype(slot.dtype())?.copy()?;
                    }
                }
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The global L2 norm of `grads` together: in f64 over fixed chunks on the CPU (the same sum whatever the
/// number of threads).
fn global_norm<'a>(grads: impl Iterator<Item = &'a Tensor>) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += match CpuValues::of(g) {
            Some(values) => {
                let chunks: Vec<f64> = values
                    .values()
                    .par_chunks(CHUNK)
                    .map(|c| vectorized(|| sum_zip(c, c, |a, _| a * a)) as f64)
                    .collect();
                chunks.iter().sum::<f64>()
            }
            None => g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        };
    }
    Ok(total.sqrt())
}

/// Exponential moving average of the weights: `ema = decay * ema + (1 - decay) * param`.
///
/// With `warmup`, the decay of update n is `min(decay, (1 + n) / (10 + n))`, so a short run's EMA is not
/// dominated by the random initial weights (0.999^200 still gives them 82%). DiT itself uses no warm-up.
pub struct Ema {
    pub decay: f64,
    pub warmup: bool,
    /// Copies that share no storage with the variables or anyone else: f32 CPU ones are updated in place.
    shadow: BTreeMap<String, Tensor>,
}

impl Ema {
    pub fn new(decay: f64, warmup: bool, vars: &VarSet) -> Result<Self> {
        Ok(Ema { decay, warmup, shadow: vars.tensors()? })
    }

    /// The decay applied at update number `n` (0-based).
    pub fn decay_at(&self, n: u64) -> f64 {
        if self.warmup { self.decay.min((1.0 + n as f64) / (10.0 + n as f64)) } else { self.decay }
    }

    /// Update number `n` (0-based: the number of updates made before this one).
    pub fn update(&mut self, vars: &VarSet, n: u64) -> Result<()> {
        let decay = self.decay_at(n);
        for (name, var) in vars.iter() {
            if let Some(shadow) = self.shadow.get_mut(name) {
                let p = var.as_tensor();
                if in_place_f32(shadow) && in_place_f32(p) && shadow.device().same_device(p.device()) {
                    shadow.inplace_op2(p, &EmaUpdate { keep: decay as f32, take: (1.0 - decay) as f32 })?;
                } else {
                    *shadow = ((&*shadow * decay)? + (p.detach() * (1.0 - decay))?)?;
                }
            }
        }
        Ok(())
    }

    pub fn weights(&self) -> &BTreeMap<String, Tensor> {
        &self.shadow
    }

    pub fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (name, shadow) in self.shadow.iter_mut() {
            let value = tensors
                .get(name)
                .ok_or_else(|| Error::Param { name: format!("ema.{name}"), reason: "missing".into() })?;
            if value.dims() != shadow.dims() {
                return Err(Error::Param {
                    name: format!("ema.{name}"),
                    reason: format!("shape {:?} != {:?}", value.dims(), shadow.dims()),
                });
            }
            // A copy: the caller's tensor must not change with the in-place updates.
            *shadow = value.to_device(shadow.device())?.to_dtype(shadow.dtype())?.copy()?;
        }
        Ok(())
    }
}

/// Whether [`EmaUpdate`] takes `t`: contiguous f32 on the CPU, or on a GPU in a CUDA build.
fn in_place_f32(t: &Tensor) -> bool {
    t.dtype() == DType::F32
        && t.is_contiguous()
        && (t.device().is_cpu() || (cfg!(feature = "cuda") && t.device().is_cuda()))
}

/// The coefficients of one AdamW update, for the single-pass CPU kernel.
struct AdamWStep {
    /// The clipping factor (1 when the norm is within bounds).
    grad_scale: f32,
    beta1: f32,
    beta2: f32,
    /// Taken in f64 (`1 - 0.999f32` is 4.7e-5 off).
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    /// `1 - lr * weight_decay`.
    decay: f32,
    /// `lr / (1 - beta1^t)`.
    step_size: f32,
    /// `1 / sqrt(1 - beta2^t)`.
    inv_bias2_sqrt: f32,
}

impl AdamWStep {
    /// One element: the moments, then the parameter from them (torch's order of operations).
    #[inline(always)]
    fn apply(&self, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        let g = g * self.grad_scale;
        *m = self.beta1 * *m + self.one_minus_beta1 * g;
        *v = self.beta2 * *v + self.one_minus_beta2 * g * g;
        *p = self.decay * *p - self.step_size * *m / (v.sqrt() * self.inv_bias2_sqrt + self.eps);
    }
}

/// AdamW as an in-place op on the parameter, its gradient the one source, the moments owned by the
/// optimiser (candle hands an op only its destination mutably).
struct FusedAdamW<'a> {
    k: &'a AdamWStep,
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
}

impl InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        grad: &CpuStorage,
        grad_l: &Layout,
    ) -> candle_core::Result<()> {
        let p = host_values_mut(dst, dst_l)?;
        let g = host_values(grad, grad_l)?;
        let (mut m, mut v, k) = (self.m.borrow_mut(), self.v.borrow_mut(), self.k);
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!(
                "fused-adamw: {} parameters, {} gradients, {} / {} moments",
                p.len(),
                g.len(),
                m.len(),
                v.len()
            );
        }
        let chunks =
            p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)));
        chunks.for_each(|((p, g), (m, v))| {
            vectorized(
                #[inline(always)]
                || {
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                        k.apply(p, g, m, v);
                    }
                },
            )
        });
        Ok(())
    }
}

/// `ema = keep * ema + take * param`, in place on the shadow.
struct EmaUpdate {
    keep: f32,
    take: f32,
}

impl InplaceOp2 for EmaUpdate {
    fn name(&self) -> &'static str {
        "ema-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        param: &CpuStorage,
        param_l: &Layout,
    ) -> candle_core::Result<()> {
        let shadow = host_values_mut(dst, dst_l)?;
        let p = host_values(param, param_l)?;
        if p.len() != shadow.len() {
            candle_core::bail!("ema-update: {} parameters for {} shadow values", p.len(), shadow.len());
        }
        let (keep, take) = (self.keep, self.take);
        shadow.par_chunks_mut(CHUNK).zip(p.par_chunks(CHUNK)).for_each(|(s, p)| {
            vectorized(
                #[inline(always)]
                || {
                    for (s, &p) in s.iter_mut().zip(p) {
                        *s = keep * *s + take * p;
                    }
                },
            )
        });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        param: &candle_core::CudaStorage,
        param_l: &Layout,
    ) -> candle_core::Result<()> {
        gpu::ema(dst, dst_l, param, param_l, self.keep, self.take)
    }
}

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// The optimiser's kernels on a GPU (cuda/optim.cu).
#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, PushKernelArg};
    use candle_core::{CudaStorage, InplaceOp2, Layout, Storage, Tensor, Var};

    use super::{AdamWStep, Moments};
    use crate::Result;
    use crate::ops::cuda::{fresh, launch, view};
    use crate::ops::gpu::{self as plan, Module};

    fn cuda_storage<'a>(storage: &'a Storage, what: &str) -> candle_core::Result<&'a CudaStorage> {
        match storage {
            Storage::Cuda(s) => Ok(s),
            _ => candle_core::bail!("{what} is not on the GPU"),
        }
    }

    fn on_gpu_f32(t: &Tensor) -> bool {
        t.device().is_cuda() && t.dtype() == candle_core::DType::F32 && t.is_contiguous()
    }

    /// One AdamW step of every parameter on the GPU, or `None` (nothing done) unless every parameter, its
    /// gradient and its moments are contiguous f32 on one GPU. Returns the norm before clipping.
    pub(super) fn step(
        updates: &[(&Var, Tensor, &mut Moments)],
        k: &AdamWStep,
        max_grad_norm: Option<f64>,
    ) -> Result<Option<f64>> {
        let Some(first) = updates.first() else { return Ok(None) };
        let candle_core::Device::Cuda(dev) = first.0.device() else { return Ok(None) };
        let all_on_gpu = updates.iter().all(|(var, grad, moments)| {
            on_gpu_f32(var.as_tensor())
                && on_gpu_f32(grad)
                && var.device().same_device(first.0.device())
                && matches!(moments, Moments::Tensors { m, v } if on_gpu_f32(m) && on_gpu_f32(v))
        });
        if !all_on_gpu {
            return Ok(None);
        }
        // The squared norm as partial sums, one run of blocks per gradient, then the factor on the device.
        let blocks: Vec<usize> =
            updates.iter().map(|(_, g, _)| plan::sum_squares(g.elem_count()).grid.0 as usize).collect();
        let mut partials: CudaSlice<f64> = dev.alloc_zeros(blocks.iter().sum::<usize>().max(1))?;
        let mut offset = 0;
        for ((_, grad, _), &count) in updates.iter().zip(&blocks) {
            let (storage, layout) = grad.storage_and_layout();
            let g = view(cuda_storage(&storage, "a gradient")?, layout, "adamw")?;
            let n = grad.elem_count();
            let mut target = partials.slice_mut(offset..offset + count);
            launch!(dev, Module::Optim, "repdiff_sum_squares", plan::sum_squares(n); &g, &n, &mut target)?;
            offset += count;
        }
        let (mut factor, mut norm): (CudaSlice<f32>, CudaSlice<f64>) = (fresh(dev, 1)?, dev.alloc_zeros(1)?);
        let (clip, max_norm) = (i32::from(max_grad_norm.is_some()), max_grad_norm.unwrap_or(0.0) as f32);
        let count = offset;
        launch!(dev, Module::Optim, "repdiff_clip_factor", plan::clip_factor(); &partials, &count, &max_norm, &clip, &mut factor, &mut norm)?;
        for (var, grad, moments) in updates {
            let Moments::Tensors { m, v } = &**moments else { unreachable!("checked above") };
            var.as_tensor().inplace_op2(grad, &FusedAdamW { k, m, v, factor: &factor })?;
        }
        let norm = dev.clone_dtoh(&norm)?;
        let norm = norm.first().copied().ok_or_else(|| candle_core::Error::Msg("the GPU returned no norm".into()))?;
        Ok(Some(norm))
    }

    /// AdamW in place on a GPU parameter: its gradient the op's source, the moments (owned by the
    /// optimiser, never shared: made by `zeros_like` or copied on load) and the clipping factor on the device.
    struct FusedAdamW<'a> {
        k: &'a AdamWStep,
        m: &'a Tensor,
        v: &'a Tensor,
        factor: &'a CudaSlice<f32>,
    }

    impl InplaceOp2 for FusedAdamW<'_> {
        fn name(&self) -> &'static str {
            "fused-adamw-cuda"
        }

        fn cpu_fwd(
            &self,
            _: &mut candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<()> {
            candle_core::bail!("{} runs on a GPU only", self.name())
        }

        fn cuda_fwd(
            &self,
            dst: &mut CudaStorage,
            dst_l: &Layout,
            grad: &CudaStorage,
            grad_l: &Layout,
        ) -> candle_core::Result<()> {
            let (m_storage, m_layout) = self.m.storage_and_layout();
            let (v_storage, v_layout) = self.v.storage_and_layout();
            let g = view(grad, grad_l, self.name())?;
            let m = view(cuda_storage(&m_storage, "a first moment")?, m_layout, self.name())?;
            let v = view(cuda_storage(&v_storage, "a second moment")?, v_layout, self.name())?;
            let n = dst_l.shape().elem_count();
            if g.len() != n || m.len() != n || v.len() != n {
                candle_core::bail!(
                    "{}: {n} parameters, {} gradients, {} / {} moments",
                    self.name(),
                    g.len(),
                    m.len(),
                    v.len()
                );
            }
            let dev = dst.device.clone();
            let (start, end) =
                dst_l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
            let mut p = dst.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
            let k = self.k;
            // The moments are written through their read views: the kernel owns them for this step (see above).
            launch!(&dev, Module::Optim, "repdiff_adamw", plan::elementwise(n); &mut p, &g, &m, &v, &n, self.factor, &k.beta1, &k.beta2, &k.one_minus_beta1, &k.one_minus_beta2, &k.eps, &k.decay, &k.step_size, &k.inv_bias2_sqrt)
        }
    }

    /// `shadow = keep shadow + take param` on a GPU.
    pub(super) fn ema(
        dst: &mut CudaStorage,
        dst_l: &Layout,
        param: &CudaStorage,
        param_l: &Layout,
        keep: f32,
        take: f32,
    ) -> candle_core::Result<()> {
        let p = view(param, param_l, "ema-update")?;
        let n = dst_l.shape().elem_count();
        if p.len() != n {
            candle_core::bail!("ema-update: {} parameters for {n} shadow values", p.len());
        }
        let dev = dst.device.clone();
        let (start, end) =
            dst_l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
        let mut shadow = dst.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
        launch!(&dev, Module::Optim, "repdiff_ema", plan::elementwise(n); &mut shadow, &p, &n, &keep, &take)
    }
}

fn host_values<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

fn host_values_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
    match storage {
        CpuStorage::F32(values) => Ok(&mut values[start..end]),
        _ => candle_core::bail!("in-place update of a tensor that is not f32"),
    }
}

/// The values of a contiguous f32 tensor on the CPU, read under its storage lock (`None` on other devices
/// and dtypes, which take the composed path).
struct CpuValues<'a> {
    storage: StorageRef<'a>,
    range: Range<usize>,
}

impl<'a> CpuValues<'a> {
    fn of(t: &'a Tensor) -> Option<Self> {
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        match &*storage {
            Storage::Cpu(cpu) if cpu.as_slice::<f32>().is_ok() => Some(CpuValues { storage, range: start..end }),
            _ => None,
        }
    }

    fn values(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(cpu) => &cpu.as_slice::<f32>().expect("checked in of()")[self.range.clone()],
            _ => unreachable!("checked in of()"),
        }
    }
}

/// A variable's gradient or an error naming it (for code that requires every parameter to learn).
pub fn require_grad<'a>(name: &str, var: &Var, grads: &'a GradStore) -> Result<&'a Tensor> {
    grads.get(var.as_tensor()).ok_or_else(|| Error::Param { name: name.into(), reason: "received no gradient".into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Init, Params};
    use candle_core::Device;

    /// Two AdamW steps on f(w) = sum(w * c) against values computed by hand from torch's update rule.
    #[test]
    fn adamw_matches_the_torch_update_rule() {
        let dev = Device::Cpu;
        let params = Params::random(0, &dev);
        let w = params.root().get("w", &[2], Init::Zeros).unwrap();
        let vars = params.finish().unwrap();
        vars.get("w").unwrap().set(&Tensor::new(&[1.0f32, -2.0], &dev).unwrap()).unwrap();
        let config = AdamWConfig { learning_rate: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut opt = AdamW::new(config, &vars).unwrap();
        let c = Tensor::new(&[3.0f32, -0.5], &dev).unwrap();
        let mut expected = [1.0f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for step in 1..=2 {
            let grads = (&w * &c).unwrap().sum_all().unwrap().backward().unwrap();
            opt.step(&vars, &grads, None).unwrap();
            for i in 0..2 {
                let g = [3.0, -0.5][i];
                expected[i] *= 1.0 - 0.1 * 0.01;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let denom = (v[i] / (1.0 - 0.999f64.powi(step))).sqrt() + 1e-8;
                expected[i] -= 0.1 / (1.0 - 0.9f64.powi(step)) * m[i] / denom;
            }
        }
        let got = w.to_vec1::<f32>().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - expected[i]).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
    }

    /// A weight's gradient can carry the graph of the step that made it (here: through the activation
    /// x * a, whose gradient for b is tracked). The moments must not keep it, or every step's graph stays
    /// alive (the ResNet baseline grew ~3.5 GB per epoch so).
    #[test]
    fn the_moments_keep_no_graph_of_the_step() {
        let dev = Device::Cpu;
        let params = Params::random(0, &dev);
        let a = params.root().get("a", &[2], Init::Normal { std: 1.0 }).unwrap();
        let b = params.root().get("b", &[2], Init::Normal { std: 1.0 }).unwrap();
        let vars = params.finish().unwrap();
        let config = AdamWConfig { learning_rate: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = AdamW::new(config, &vars).unwrap();
        let x = Tensor::new(&[1.0f32, 2.0], &dev).unwrap();
        let grads = ((&x * &a).unwrap() * &b).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&b).unwrap().track_op(), "candle hands back a tracked gradient here");
        opt.step(&vars, &grads, None).unwrap();
        let (state, _) = opt.state().unwrap();
        assert!(state.values().all(|t| !t.track_op()), "a moment holds a graph");
    }

    /// An f64 copy of `vars`: its parameters take the composed tensor-op update, the f32 ones the fused one.
    fn f64_copy(vars: &VarSet) -> VarSet {
        let copy = vars.iter().map(|(name, var)| {
            (name.clone(), Var::from_tensor(&var.as_tensor().to_dtype(DType::F64).unwrap()).unwrap())
        });
        VarSet::from_vars(copy.collect())
    }

    #[test]
    fn clipping_scales_the_gradients_to_the_bounded_norm() {
        let dev = Device::Cpu;
        let params = Params::random(0, &dev);
        params.root().get("w", &[3], Init::Normal { std: 1.0 }).unwrap();
        let vars = params.finish().unwrap();
        let config = AdamWConfig { learning_rate: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        for vars in [f64_copy(&vars), vars] {
            let w = vars.get("w").unwrap().as_tensor();
            let mut opt = AdamW::new(config, &vars).unwrap();
            let grads = (w * 10.0).unwrap().sum_all().unwrap().backward().unwrap();
            let norm = opt.step(&vars, &grads, Some(1.0)).unwrap();
            assert!((norm - 10.0 * 3f64.sqrt()).abs() < 1e-4, "{norm}");
            // The first moment is (1 - beta1) times the clipped gradient, whose norm is 1.
            let m = opt.state().unwrap().0["m.w"].to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            for m in m {
                assert!((m - 0.1 / 3f64.sqrt()).abs() < 1e-6, "{m}");
            }
            // Within bounds nothing is scaled.
            let mut opt = AdamW::new(config, &vars).unwrap();
            opt.step(&vars, &grads, Some(100.0)).unwrap();
            let m = opt.state().unwrap().0["m.w"].to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            assert!(m.iter().all(|m| (m - 1.0).abs() < 1e-6), "{m:?}");
        }
    }

    /// The fused in-place update (f32 on the CPU) against the composed tensor ops (f64 parameters): same
    /// parameters, moments and EMA over steps with and without clipping, weight decay on, a strided
    /// gradient among them; and a resumed optimiser continues exactly.
    #[test]
    fn the_fused_update_matches_the_composed_one() {
        let dev = Device::Cpu;
        let params = Params::random(3, &dev);
        params.root().get("a", &[2, 3], Init::Normal { std: 1.0 }).unwrap();
        params.root().get("b", &[40_000], Init::Normal { std: 1.0 }).unwrap();
        let fused = params.finish().unwrap();
        let composed = f64_copy(&fused);
        let config = AdamWConfig { learning_rate: 0.05, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
        let (mut opt_f, mut opt_c) = (AdamW::new(config, &fused).unwrap(), AdamW::new(config, &composed).unwrap());
        let (mut ema_f, mut ema_c) = (Ema::new(0.9, true, &fused).unwrap(), Ema::new(0.9, true, &composed).unwrap());
        let grads_of = |vars: &VarSet, step: usize| {
            let (a, b) = (vars.get("a").unwrap().as_tensor(), vars.get("b").unwrap().as_tensor());
            let loss = ((a.sqr().unwrap().sum_all().unwrap() * step as f64).unwrap()
                + b.powf(3.0).unwrap().sum_all().unwrap())
            .unwrap();
            let mut grads = loss.backward().unwrap();
            // A transposed (non-contiguous) gradient for `a`.
            let strided = Tensor::arange(0f32, 6.0, &dev).unwrap().reshape((3, 2)).unwrap().t().unwrap();
            assert!(!strided.is_contiguous());
            grads.insert(a, strided.to_dtype(a.dtype()).unwrap());
            grads
        };
        for step in 0..4 {
            let max = [Some(1.0), None, Some(1e6), Some(0.5)][step];
            let norm_f = opt_f.step(&fused, &grads_of(&fused, step), max).unwrap();
            let norm_c = opt_c.step(&composed, &grads_of(&composed, step), max).unwrap();
            assert!((norm_f - norm_c).abs() <= 1e-5 * norm_c, "step {step}: norm {norm_f} vs {norm_c}");
            ema_f.update(&fused, step as u64).unwrap();
            ema_c.update(&composed, step as u64).unwrap();
        }
        let close = |what: &str, got: &Tensor, want: &Tensor| {
            let got = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let want = want.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * w.abs().max(1e-3), "{what}[{i}]: {g} vs {w}");
            }
        };
        for name in ["a", "b"] {
            close(name, fused.get(name).unwrap().as_tensor(), composed.get(name).unwrap().as_tensor());
            close(&format!("ema.{name}"), &ema_f.weights()[name], &ema_c.weights()[name]);
        }
        let (state_f, state_c) = (opt_f.state().unwrap().0, opt_c.state().unwrap().0);
        for (key, want) in &state_c {
            close(key, &state_f[key], want);
        }

        // Resume: a new optimiser loaded from the saved state takes the same next step as the original.
        let saved: HashMap<String, Tensor> = state_f.into_iter().collect();
        let resumed_vars = VarSet::from_vars(
            fused.iter().map(|(n, v)| (n.clone(), Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap())).collect(),
        );
        let mut resumed = AdamW::new(config, &resumed_vars).unwrap();
        resumed.load_state(&saved, opt_f.step_count()).unwrap();
        opt_f.step(&fused, &grads_of(&fused, 4), Some(1.0)).unwrap();
        resumed.step(&resumed_vars, &grads_of(&resumed_vars, 4), Some(1.0)).unwrap();
        for name in ["a", "b"] {
            let (x, y) = (fused.get(name).unwrap().as_tensor(), resumed_vars.get(name).unwrap().as_tensor());
            assert_eq!(
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    /// The EMA is updated in place, so loading it must copy: the caller's tensors stay as they were.
    #[test]
    fn a_loaded_ema_does_not_write_into_the_tensors_it_came_from() {
        let dev = Device::Cpu;
        let params = Params::random(0, &dev);
        params.root().get("w", &[4], Init::Normal { std: 1.0 }).unwrap();
        let vars = params.finish().unwrap();
        let mut ema = Ema::new(0.5, false, &vars).unwrap();
        let source = Tensor::zeros(4, DType::F32, &dev).unwrap();
        ema.load(&HashMap::from([("w".to_string(), source.clone())])).unwrap();
        ema.update(&vars, 0).unwrap();
        assert_eq!(source.to_vec1::<f32>().unwrap(), vec![0.0; 4]);
        let want = (vars.get("w").unwrap().as_tensor() * 0.5).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ema.weights()["w"].to_vec1::<f32>().unwrap(), want);
    }
}
