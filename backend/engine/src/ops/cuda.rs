//! The GPU side of the fused ops (built with `--features cuda`): each op's `cuda_fwd` calls one of these,
//! which launch the kernels of `backend/engine/cuda` (compiled to PTX by build.rs) with the geometry of
//! [`super::gpu`]. Operands are contiguous f32, as on the CPU; every output is a fresh buffer whose every
//! element the kernels write. The kernels' results are checked on the host emulator in CI
//! (`ops::gpu`'s tests) and against the composed ops on a GPU by `scripts/gpu-check.sh`.

use candle_core::cuda_backend::cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute_enum};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CudaStorage, Layout};

use super::CResult;
use super::gpu::{self, AttentionKernel, AttentionShape, ColumnSum, Launch, Module};

fn ptx(module: Module) -> &'static str {
    match module {
        Module::Rows => include_str!(concat!(env!("OUT_DIR"), "/rows.ptx")),
        Module::Columns => include_str!(concat!(env!("OUT_DIR"), "/columns.ptx")),
        Module::Attention => include_str!(concat!(env!("OUT_DIR"), "/attention.ptx")),
        Module::Optim => include_str!(concat!(env!("OUT_DIR"), "/optim.ptx")),
    }
}

/// The kernel `name` of `module`, loaded (once per device), the device's stream, and the launch
/// configuration; kernels that need more than 48 KiB of dynamic shared memory are allowed it.
pub(crate) fn kernel(
    dev: &CudaDevice,
    module: Module,
    name: &str,
    launch: Launch,
) -> CResult<(CudaFunction, std::sync::Arc<CudaStream>, LaunchConfig)> {
    let func = (*dev.get_or_load_custom_func(name, module.name(), ptx(module))?).clone();
    if launch.shared > 48 * 1024 {
        func.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            launch.shared as i32,
        )
        .w()?;
    }
    let config = LaunchConfig { grid_dim: launch.grid, block_dim: launch.block, shared_mem_bytes: launch.shared };
    Ok((func, dev.cuda_stream(), config))
}

/// Launches kernel `$name` of `$module` with `$launch`'s geometry and the arguments after `;`, in the
/// kernel's order (device buffers by reference, scalars by reference to their value).
macro_rules! launch {
    ($dev:expr, $module:expr, $name:expr, $launch:expr; $($arg:expr),* $(,)?) => {{
        let (func, stream, config) = $crate::ops::cuda::kernel($dev, $module, $name, $launch)?;
        let mut builder = stream.launch_builder(&func);
        $( builder.arg($arg); )*
        // SAFETY: the arguments are those the kernel declares, in its order, and the geometry is the one
        // its buffers were sized for (ops::gpu, checked on the emulator).
        unsafe { builder.launch(config) }.w().map(|_| ())
    }};
}
pub(crate) use launch;

/// The device address of an optional operand (0, a null pointer for the kernel, when absent), and what
/// orders the stream around its use: keep it until the launch is made.
fn address<'a>(
    view: Option<&'a CudaView<'a, f32>>,
    stream: &'a CudaStream,
) -> (u64, Option<candle_core::cuda_backend::cudarc::driver::SyncOnDrop<'a>>) {
    match view {
        Some(v) => {
            let (ptr, sync) = v.device_ptr(stream);
            (ptr, Some(sync))
        }
        None => (0, None),
    }
}

/// A contiguous f32 operand.
pub(crate) fn view<'a>(s: &'a CudaStorage, l: &Layout, op: &str) -> CResult<CudaView<'a, f32>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice::<f32>()?.slice(start..end)),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// A buffer of `n` values for a kernel to fill completely.
pub(crate) fn fresh(dev: &CudaDevice, n: usize) -> CResult<CudaSlice<f32>> {
    // SAFETY: the kernel launched next writes every element before anything reads one.
    unsafe { dev.alloc::<f32>(n.max(1)) }
}

fn wrap(slice: CudaSlice<f32>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

/// Rows and their length (the last dimension).
fn rows_of(l: &Layout) -> (usize, usize) {
    let d = l.dims().last().copied().unwrap_or(1).max(1);
    (l.shape().elem_count() / d, d)
}

pub(crate) fn softmax(x: &CudaStorage, l: &Layout) -> CResult<CudaStorage> {
    let (dev, (rows, d)) = (&x.device, rows_of(l));
    let x = view(x, l, "softmax")?;
    let mut y = fresh(dev, rows * d)?;
    launch!(dev, Module::Rows, "repdiff_softmax", gpu::per_row(rows); &x, &mut y, &rows, &d)?;
    Ok(wrap(y, dev))
}

/// (g, y) -> y (g - <g, y>)
pub(crate) fn softmax_grad(g: &CudaStorage, gl: &Layout, y: &CudaStorage, yl: &Layout) -> CResult<CudaStorage> {
    let (dev, (rows, d)) = (&g.device, rows_of(gl));
    let (g, y) = (view(g, gl, "softmax gradient")?, view(y, yl, "softmax gradient")?);
    let mut out = fresh(dev, rows * d)?;
    launch!(dev, Module::Rows, "repdiff_softmax_grad", gpu::per_row(rows); &g, &y, &mut out, &rows, &d)?;
    Ok(wrap(out, dev))
}

pub(crate) fn gelu(x: &CudaStorage, l: &Layout) -> CResult<CudaStorage> {
    let (dev, n) = (&x.device, l.shape().elem_count());
    let x = view(x, l, "gelu")?;
    let mut y = fresh(dev, n)?;
    launch!(dev, Module::Columns, "repdiff_gelu", gpu::elementwise(n); &x, &mut y, &n)?;
    Ok(wrap(y, dev))
}

/// (g, x) -> g gelu'(x)
pub(crate) fn gelu_grad(g: &CudaStorage, gl: &Layout, x: &CudaStorage, xl: &Layout) -> CResult<CudaStorage> {
    let (dev, n) = (&g.device, gl.shape().elem_count());
    let (g, x) = (view(g, gl, "gelu gradient")?, view(x, xl, "gelu gradient")?);
    let mut out = fresh(dev, n)?;
    launch!(dev, Module::Columns, "repdiff_gelu_grad", gpu::elementwise(n); &g, &x, &mut out, &n)?;
    Ok(wrap(out, dev))
}

/// The affine map after a norm: its parameters and which rows share a parameter row.
pub(crate) struct Affine<'a> {
    pub(crate) shift: Option<(&'a CudaStorage, &'a Layout)>,
    pub(crate) scale: Option<(&'a CudaStorage, &'a Layout)>,
    pub(crate) rows_per_param: usize,
    pub(crate) offset: f32,
}

fn optional_view<'a>(p: Option<(&'a CudaStorage, &'a Layout)>, op: &str) -> CResult<Option<CudaView<'a, f32>>> {
    p.map(|(s, l)| view(s, l, op)).transpose()
}

/// `x̂ (offset + scale) + shift` per row (plain `x̂` without parameters).
pub(crate) fn norm_affine(x: &CudaStorage, l: &Layout, affine: Affine, eps: f32) -> CResult<CudaStorage> {
    let (dev, (rows, d)) = (&x.device, rows_of(l));
    let x = view(x, l, "norm")?;
    let (shift, scale) = (optional_view(affine.shift, "norm shift")?, optional_view(affine.scale, "norm scale")?);
    let (rows_per_param, offset) = (affine.rows_per_param.max(1), affine.offset);
    let mut y = fresh(dev, rows * d)?;
    let stream = dev.cuda_stream();
    let ((shift, _s1), (scale, _s2)) = (address(shift.as_ref(), &stream), address(scale.as_ref(), &stream));
    launch!(dev, Module::Rows, "repdiff_norm_affine", gpu::per_row(rows);
        &x, &shift, &scale, &mut y, &rows, &d, &rows_per_param, &offset, &eps)?;
    Ok(wrap(y, dev))
}

/// The gradient of a norm's input, through its affine map.
pub(crate) fn norm_affine_grad_x(
    g: &CudaStorage,
    gl: &Layout,
    x: &CudaStorage,
    xl: &Layout,
    affine: Affine,
    eps: f32,
) -> CResult<CudaStorage> {
    let (dev, (rows, d)) = (&g.device, rows_of(xl));
    let (g, x) = (view(g, gl, "norm gradient")?, view(x, xl, "norm gradient")?);
    let scale = optional_view(affine.scale, "norm scale")?;
    let (rows_per_param, offset) = (affine.rows_per_param.max(1), affine.offset);
    let mut dx = fresh(dev, rows * d)?;
    let stream = dev.cuda_stream();
    let (scale, _sync) = address(scale.as_ref(), &stream);
    launch!(dev, Module::Rows, "repdiff_norm_affine_grad_x", gpu::per_row(rows);
        &g, &x, &scale, &mut dx, &rows, &d, &rows_per_param, &offset, &eps)?;
    Ok(wrap(dx, dev))
}

/// Column sums over `groups` groups of rows of `a` (`[groups, rows, d]` flattened): of `a`, of `a b`, or of
/// `a x̂` with `b` the norm's input (see [`ColumnSum`]). Result `[groups, d]`.
pub(crate) fn column_sums(
    mode: ColumnSum,
    a: &CudaStorage,
    al: &Layout,
    b: Option<(&CudaStorage, &Layout)>,
    groups: usize,
    eps: f32,
) -> CResult<CudaStorage> {
    let dev = &a.device;
    let d = al.dims().last().copied().unwrap_or(1).max(1);
    let rows = al.shape().elem_count() / d / groups.max(1);
    let a = view(a, al, "column sums")?;
    let b = optional_view(b, "column sums")?;
    let stats = match (mode, &b) {
        (ColumnSum::Normalised, Some(x)) => {
            let all_rows = groups * rows;
            let mut stats = fresh(dev, 2 * all_rows)?;
            launch!(dev, Module::Rows, "repdiff_row_stats", gpu::per_row(all_rows); x, &mut stats, &all_rows, &d, &eps)?;
            Some(stats)
        }
        (ColumnSum::Values, _) | (ColumnSum::Products, Some(_)) => None,
        _ => candle_core::bail!("column sums {mode:?} need a second operand"),
    };
    let (plan, parts) = gpu::column_sums(groups, rows, d);
    let mut partial = fresh(dev, parts * groups * d)?;
    let mode_value = mode as i32;
    let stream = dev.cuda_stream();
    let stats_view = stats.as_ref().map(|s| s.slice(..));
    let ((b, _s1), (stats, _s2)) = (address(b.as_ref(), &stream), address(stats_view.as_ref(), &stream));
    launch!(dev, Module::Columns, "repdiff_column_sums", plan;
        &a, &b, &stats, &mut partial, &groups, &rows, &d, &parts, &mode_value)?;
    if parts == 1 {
        return Ok(wrap(partial, dev));
    }
    let n = groups * d;
    let mut out = fresh(dev, n)?;
    launch!(dev, Module::Columns, "repdiff_sum_parts", gpu::elementwise(n); &partial, &mut out, &parts, &n)?;
    Ok(wrap(out, dev))
}

/// `x + a gate` (`x`, `a` `[B, T, D]`, `gate [B, D]`), or with `x` absent `g gate` (the branch's gradient).
pub(crate) fn gated(
    x: Option<(&CudaStorage, &Layout)>,
    a: &CudaStorage,
    al: &Layout,
    gate: &CudaStorage,
    gate_l: &Layout,
    tokens: usize,
) -> CResult<CudaStorage> {
    let (dev, n) = (&a.device, al.shape().elem_count());
    let d = al.dims().last().copied().unwrap_or(1).max(1);
    let x = optional_view(x, "gated residual")?;
    let (a, gate) = (view(a, al, "gated residual")?, view(gate, gate_l, "gated residual")?);
    let mut out = fresh(dev, n)?;
    let tokens = tokens.max(1);
    let plan = gpu::elementwise(n);
    match &x {
        Some(x) => {
            launch!(dev, Module::Columns, "repdiff_gated_residual", plan; x, &a, &gate, &mut out, &n, &tokens, &d)?
        }
        None => launch!(dev, Module::Columns, "repdiff_gate", plan; &a, &gate, &mut out, &n, &tokens, &d)?,
    }
    Ok(wrap(out, dev))
}

/// The largest dynamic shared memory a block may ask for on this device.
fn max_shared(dev: &CudaDevice) -> CResult<usize> {
    let bytes = dev
        .cuda_stream()
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .w()?;
    Ok(bytes.max(0) as usize)
}

/// Whether the attention kernels take `shape` on `dev`.
pub(crate) fn attention_supported(dev: &CudaDevice, shape: &AttentionShape) -> CResult<bool> {
    Ok(shape.batch > 0 && shape.supported(max_shared(dev)?))
}

/// The attention output `[N, T, D]` and each query's log-sum-exp `[N heads, T]` (the backward's input).
pub(crate) fn attention_forward(
    qkv: &CudaStorage,
    l: &Layout,
    shape: &AttentionShape,
) -> CResult<(CudaStorage, CudaSlice<f32>)> {
    let dev = &qkv.device;
    let qkv = view(qkv, l, "attention")?;
    let AttentionShape { batch, tokens, heads, head_dim, .. } = *shape;
    let mut out = fresh(dev, batch * tokens * heads * head_dim)?;
    let mut lse = fresh(dev, batch * heads * tokens)?;
    let [t, h, hd, padded] = [tokens as i32, heads as i32, head_dim as i32, shape.padded() as i32];
    let (kernel, scale) = (AttentionKernel::Forward, shape.scale());
    launch!(dev, Module::Attention, shape.kernel_name(kernel), shape.launch(kernel);
        &qkv, &mut out, &mut lse, &t, &h, &hd, &padded, &scale)?;
    Ok((wrap(out, dev), lse))
}

/// The gradient of the packed `qkv [N, T, 3D]` from the forward's input, output and log-sum-exp and the
/// output's gradient `g`.
pub(crate) fn attention_backward(
    qkv: (&CudaStorage, &Layout),
    out: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    lse: &CudaSlice<f32>,
    shape: &AttentionShape,
) -> CResult<CudaStorage> {
    let dev = &qkv.0.device;
    let qkv = view(qkv.0, qkv.1, "attention gradient")?;
    let out = view(out.0, out.1, "attention gradient")?;
    let g = view(g.0, g.1, "attention gradient")?;
    let AttentionShape { batch, tokens, heads, head_dim, .. } = *shape;
    let rows = batch * tokens * heads;
    let (tokens_i, heads_i, head_i) = (tokens as i32, heads as i32, head_dim as i32);
    let mut delta = fresh(dev, rows)?;
    launch!(dev, Module::Attention, "repdiff_attention_delta", shape.delta_launch();
        &out, &g, &mut delta, &rows, &tokens_i, &heads_i, &head_i)?;
    let mut grad = fresh(dev, batch * tokens * 3 * heads * head_dim)?;
    let (padded, scale) = (shape.padded() as i32, shape.scale());
    for kernel in [AttentionKernel::GradKv, AttentionKernel::GradQ] {
        launch!(dev, Module::Attention, shape.kernel_name(kernel), shape.launch(kernel);
            &qkv, &g, lse, &delta, &mut grad, &tokens_i, &heads_i, &head_i, &padded, &scale)?;
    }
    Ok(wrap(grad, dev))
}
