//! The launch geometry of the CUDA kernels in `backend/engine/cuda`: grid, block and shared memory of each,
//! in one place for the CUDA ops (`ops::cuda`, built with `--features cuda`) and for the tests below, which
//! run the same kernels on the host emulator (`repdiff-kernel-emulator`) and compare them with the CPU ops.
//! CI has no GPU; the emulator checks what the kernels compute, `scripts/gpu-check.sh` how fast.

// Without `cuda` only the tests use these.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

/// Threads of a warp.
const WARP: u32 = 32;
/// Threads of a block of the row, elementwise, column-sum and optimiser kernels.
const BLOCK: u32 = 256;

/// A kernel's grid, block and dynamic shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Launch {
    pub(crate) grid: (u32, u32, u32),
    pub(crate) block: (u32, u32, u32),
    pub(crate) shared: u32,
}

impl Launch {
    fn linear(blocks: usize, threads: u32) -> Self {
        Launch { grid: (blocks.max(1) as u32, 1, 1), block: (threads, 1, 1), shared: 0 }
    }
}

/// The kernel files, each compiled to one PTX module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Module {
    Rows,
    Columns,
    Attention,
    Optim,
}

impl Module {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Module::Rows => "repdiff-rows",
            Module::Columns => "repdiff-columns",
            Module::Attention => "repdiff-attention",
            Module::Optim => "repdiff-optim",
        }
    }
}

/// The row kernels (softmax, norms, their gradients, row statistics): one warp per row.
pub(crate) fn per_row(rows: usize) -> Launch {
    Launch::linear(rows.div_ceil((BLOCK / WARP) as usize), BLOCK)
}

/// The elementwise kernels, grid-stride loops: a block per 256 values up to 65,535 blocks.
pub(crate) fn elementwise(n: usize) -> Launch {
    Launch::linear(n.div_ceil(BLOCK as usize).min(65_535), BLOCK)
}

/// What `repdiff_column_sums` adds up per column (its `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColumnSum {
    /// `a`: a bias's or a shift's gradient.
    Values = 0,
    /// `a b`: a gate's gradient.
    Products = 1,
    /// `a (b - mean) rstd`: a norm scale's gradient, with `repdiff_row_stats`'s statistics of `b`.
    Normalised = 2,
}

/// `repdiff_column_sums` over `groups` groups of `rows` rows of width `d`, and the number of parts each
/// column is split into (summed afterwards by `repdiff_sum_parts` when more than one): enough blocks to
/// keep a large GPU busy (a bias gradient is one group of B x T rows), parts of at least 64 rows.
pub(crate) fn column_sums(groups: usize, rows: usize, d: usize) -> (Launch, usize) {
    let blocks = d.div_ceil(WARP as usize) * groups;
    let parts = if blocks >= 512 { 1 } else { (512 / blocks.max(1)).min(rows.div_ceil(64)).clamp(1, 64) };
    (Launch { grid: (blocks.max(1) as u32, parts as u32, 1), block: (BLOCK, 1, 1), shared: 0 }, parts)
}

/// Queries (or keys) per block of the attention kernels, and warps per block (16 rows each).
pub(crate) const ATTENTION_TILE: usize = 64;
const ATTENTION_WARPS: usize = 4;
const ATTENTION_WARP_ROWS: usize = 16;
/// The largest head size the attention kernels take (padded to a multiple of 16); larger heads are composed.
pub(crate) const ATTENTION_MAX_HEAD: usize = 128;

/// The three attention kernels of a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttentionKernel {
    Forward,
    GradKv,
    GradQ,
}

/// One attention problem: `qkv [batch, tokens, 3 heads head_dim]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AttentionShape {
    pub(crate) batch: usize,
    pub(crate) tokens: usize,
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
    /// bf16 operands on the tensor cores (else f32 throughout).
    pub(crate) bf16: bool,
}

impl AttentionShape {
    /// The head size rounded up to the tensor cores' 16.
    pub(crate) fn padded(&self) -> usize {
        self.head_dim.div_ceil(16) * 16
    }

    pub(crate) fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// The kernel's name in attention.cu.
    pub(crate) fn kernel_name(&self, kernel: AttentionKernel) -> &'static str {
        match (kernel, self.bf16) {
            (AttentionKernel::Forward, false) => "repdiff_attention_fwd_f32",
            (AttentionKernel::Forward, true) => "repdiff_attention_fwd_bf16",
            (AttentionKernel::GradKv, false) => "repdiff_attention_grad_kv_f32",
            (AttentionKernel::GradKv, true) => "repdiff_attention_grad_kv_bf16",
            (AttentionKernel::GradQ, false) => "repdiff_attention_grad_q_f32",
            (AttentionKernel::GradQ, true) => "repdiff_attention_grad_q_bf16",
        }
    }

    /// Dynamic shared memory of `kernel`: the regions attention.cu carves, in its order, each rounded up to
    /// 128 bytes.
    pub(crate) fn shared_bytes(&self, kernel: AttentionKernel) -> usize {
        let region = |count: usize, size: usize| (count * size).div_ceil(128) * 128;
        let s = if self.bf16 { 2 } else { 4 };
        let (tile, padded) = (ATTENTION_TILE, self.padded());
        let per_warps = ATTENTION_WARPS * ATTENTION_WARP_ROWS;
        let operand = region(tile * padded, s);
        let (scores, probs, acc, row) =
            (region(per_warps * tile, 4), region(per_warps * tile, s), region(per_warps * padded, 4), region(tile, 4));
        match kernel {
            AttentionKernel::Forward => 3 * operand + scores + probs + acc + 3 * row,
            AttentionKernel::GradKv => 4 * operand + 2 * row + 2 * scores + 2 * probs + 2 * acc,
            AttentionKernel::GradQ => 4 * operand + 2 * row + 2 * scores + probs + acc,
        }
    }

    /// Whether the kernels take this shape with `max_shared` bytes of shared memory per block (the device's
    /// opt-in limit: 227 KiB on an H100, 163 KiB on an A100).
    pub(crate) fn supported(&self, max_shared: usize) -> bool {
        self.padded() <= ATTENTION_MAX_HEAD
            && self.tokens > 0
            && [AttentionKernel::Forward, AttentionKernel::GradKv, AttentionKernel::GradQ]
                .iter()
                .all(|&k| self.shared_bytes(k) <= max_shared)
    }

    /// Grid (items x heads, query or key tiles), 128 threads.
    pub(crate) fn launch(&self, kernel: AttentionKernel) -> Launch {
        Launch {
            grid: ((self.batch * self.heads) as u32, self.tokens.div_ceil(ATTENTION_TILE) as u32, 1),
            block: ((ATTENTION_WARPS as u32) * WARP, 1, 1),
            shared: self.shared_bytes(kernel) as u32,
        }
    }

    /// `repdiff_attention_delta`: a warp per (item, token, head).
    pub(crate) fn delta_launch(&self) -> Launch {
        per_row(self.batch * self.tokens * self.heads)
    }
}

/// Values per partial sum of `repdiff_sum_squares` (its OPTIM_CHUNK).
pub(crate) const SUM_SQUARES_CHUNK: usize = BLOCK as usize * 16;

/// `repdiff_sum_squares` over `n` values: one partial sum per block.
pub(crate) fn sum_squares(n: usize) -> Launch {
    Launch::linear(n.div_ceil(SUM_SQUARES_CHUNK), BLOCK)
}

/// `repdiff_clip_factor`: one block.
pub(crate) fn clip_factor() -> Launch {
    Launch::linear(1, BLOCK)
}

#[cfg(test)]
mod tests {
    //! Each kernel on the host emulator against the CPU op it stands for: the forward against the op, the
    //! backward kernels against candle's autograd of the composed op (in f64), on shapes that leave partial
    //! warps, blocks and tiles.

    use super::*;
    use crate::ops;
    use crate::rng::Rng;
    use candle_core::{DType, Device, Tensor, Var};
    use repdiff_kernel_emulator::Launch as Emulated;

    fn run(kernel: &str, launch: Launch, args: impl FnOnce(Emulated) -> Emulated) {
        args(Emulated::new(kernel)).run(launch.grid, launch.block, launch.shared).unwrap_or_else(|e| panic!("{e}"));
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The largest absolute difference over the largest reference magnitude.
    fn rel(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        diff / want.iter().map(|v| v.abs()).fold(1e-12, f32::max)
    }

    /// Random inputs of `shapes`, the composed op `f` on them in f64 on the CPU, its output, the gradient
    /// projection `g` (the backward's input) and the inputs' gradients of `sum(out g)`.
    struct Reference {
        inputs: Vec<Vec<f32>>,
        out: Vec<f32>,
        g: Vec<f32>,
        grads: Vec<Vec<f32>>,
    }

    fn reference(shapes: &[&[usize]], f: impl Fn(&[Tensor]) -> crate::Result<Tensor>) -> Reference {
        let mut rng = Rng::new(11);
        let dev = Device::Cpu;
        let inputs: Vec<Tensor> = shapes.iter().map(|s| rng.randn(s.to_vec(), &dev).unwrap()).collect();
        let vars: Vec<Var> =
            inputs.iter().map(|t| Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap()).collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&tensors).unwrap();
        let g = Rng::new(7).randn(out.shape().clone(), &dev).unwrap();
        let grads = (&out * g.to_dtype(DType::F64).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        Reference {
            inputs: inputs.iter().map(values).collect(),
            out: values(&out),
            g: values(&g),
            grads: vars.iter().map(|v| values(grads.get(v.as_tensor()).unwrap())).collect(),
        }
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
        let err = rel(got, want);
        assert!(err < tolerance, "{what}: relative error {err} (tolerance {tolerance})");
    }

    /// Column sums of `a` (and `b`, `stats`) as the CUDA ops run them: one pass, or parts then their sum.
    fn column_sums_of(
        mode: ColumnSum,
        a: &[f32],
        b: Option<&[f32]>,
        stats: Option<&[f32]>,
        groups: usize,
        d: usize,
    ) -> Vec<f32> {
        let rows = a.len() / d / groups;
        let (launch, parts) = column_sums(groups, rows, d);
        let mut partial = vec![0f32; parts * groups * d];
        run("repdiff_column_sums", launch, |l| {
            let l = l.input(a);
            let l = match b {
                Some(b) => l.input(b),
                None => l.null(),
            };
            let l = match stats {
                Some(s) => l.input(s),
                None => l.null(),
            };
            l.output(&mut partial).size(groups).size(rows).size(d).size(parts).int(mode as i32)
        });
        if parts == 1 {
            return partial;
        }
        let mut out = vec![0f32; groups * d];
        run("repdiff_sum_parts", elementwise(groups * d), |l| {
            l.input(&partial).output(&mut out).size(parts).size(groups * d)
        });
        out
    }

    #[test]
    fn softmax_kernels_match_the_op() {
        let (rows, d) = (19, 37);
        let r = reference(&[&[rows, d]], |t| ops::softmax_last_dim(&t[0]));
        let mut y = vec![0f32; rows * d];
        run("repdiff_softmax", per_row(rows), |l| l.input(&r.inputs[0]).output(&mut y).size(rows).size(d));
        assert_close("softmax", &y, &r.out, 1e-6);
        let mut dx = vec![0f32; rows * d];
        run("repdiff_softmax_grad", per_row(rows), |l| l.input(&r.g).input(&y).output(&mut dx).size(rows).size(d));
        assert_close("softmax gradient", &dx, &r.grads[0], 1e-5);
    }

    #[test]
    fn gelu_kernels_match_the_op() {
        let n = 1000;
        let r = reference(&[&[n]], |t| ops::gelu(&t[0]));
        let mut y = vec![0f32; n];
        run("repdiff_gelu", elementwise(n), |l| l.input(&r.inputs[0]).output(&mut y).size(n));
        assert_close("gelu", &y, &r.out, 1e-6);
        let mut dx = vec![0f32; n];
        run("repdiff_gelu_grad", elementwise(n), |l| l.input(&r.g).input(&r.inputs[0]).output(&mut dx).size(n));
        assert_close("gelu gradient", &dx, &r.grads[0], 1e-5);
    }

    /// adaLN (per-sample parameters) and LayerNorm (shared ones, over enough rows to split the columns).
    #[test]
    fn norm_kernels_match_the_ops() {
        let eps = 1e-6;
        for (shape, params, offset) in [([3usize, 10, 40], [3usize, 40], 1.0f32), ([1, 5000, 8], [1, 8], 0.0)] {
            let [b, t, d] = shape;
            let shared = offset == 0.0;
            let param_shape: Vec<usize> = if shared { vec![d] } else { params.to_vec() };
            let r = reference(&[&shape, &param_shape, &param_shape], |x| match shared {
                true => ops::affine_layer_norm(&x[0], &x[1], &x[2], eps),
                false => ops::norm_modulate(&x[0], &x[1], &x[2], eps),
            });
            // norm_modulate(x, shift, scale); affine_layer_norm(x, weight, bias), the weight being the scale.
            let (shift_at, scale_at) = if shared { (2, 1) } else { (1, 2) };
            let (x, shift, scale) = (&r.inputs[0], &r.inputs[shift_at], &r.inputs[scale_at]);
            let (rows, rows_per_param) = (b * t, if shared { b * t } else { t });
            let mut y = vec![0f32; rows * d];
            run("repdiff_norm_affine", per_row(rows), |l| {
                l.input(x)
                    .input(shift)
                    .input(scale)
                    .output(&mut y)
                    .size(rows)
                    .size(d)
                    .size(rows_per_param)
                    .float(offset)
                    .float(eps as f32)
            });
            assert_close(&format!("norm forward {shape:?}"), &y, &r.out, 1e-5);
            let mut dx = vec![0f32; rows * d];
            run("repdiff_norm_affine_grad_x", per_row(rows), |l| {
                l.input(&r.g)
                    .input(x)
                    .input(scale)
                    .output(&mut dx)
                    .size(rows)
                    .size(d)
                    .size(rows_per_param)
                    .float(offset)
                    .float(eps as f32)
            });
            assert_close("norm gradient of x", &dx, &r.grads[0], 1e-4);
            let groups = rows / rows_per_param;
            let dshift = column_sums_of(ColumnSum::Values, &r.g, None, None, groups, d);
            assert_close("norm gradient of the shift", &dshift, &r.grads[shift_at], 1e-5);
            let mut stats = vec![0f32; 2 * rows];
            run("repdiff_row_stats", per_row(rows), |l| {
                l.input(x).output(&mut stats).size(rows).size(d).float(eps as f32)
            });
            let dscale = column_sums_of(ColumnSum::Normalised, &r.g, Some(x), Some(&stats), groups, d);
            assert_close("norm gradient of the scale", &dscale, &r.grads[scale_at], 1e-4);
        }
        // Without affine parameters.
        let (rows, d) = (13, 70);
        let r = reference(&[&[rows, d]], |x| ops::layer_norm(&x[0], eps));
        let mut y = vec![0f32; rows * d];
        run("repdiff_norm_affine", per_row(rows), |l| {
            l.input(&r.inputs[0])
                .null()
                .null()
                .output(&mut y)
                .size(rows)
                .size(d)
                .size(rows)
                .float(0.0)
                .float(eps as f32)
        });
        assert_close("layer norm", &y, &r.out, 1e-5);
        let mut dx = vec![0f32; rows * d];
        run("repdiff_norm_affine_grad_x", per_row(rows), |l| {
            l.input(&r.g)
                .input(&r.inputs[0])
                .null()
                .output(&mut dx)
                .size(rows)
                .size(d)
                .size(rows)
                .float(0.0)
                .float(eps as f32)
        });
        assert_close("layer norm gradient", &dx, &r.grads[0], 1e-4);
    }

    #[test]
    fn gated_residual_kernels_match_the_op() {
        let (b, t, d) = (3, 7, 45);
        let r = reference(&[&[b, t, d], &[b, t, d], &[b, d]], |x| ops::gated_residual(&x[0], &x[1], &x[2]));
        let n = b * t * d;
        let mut y = vec![0f32; n];
        run("repdiff_gated_residual", elementwise(n), |l| {
            l.input(&r.inputs[0]).input(&r.inputs[1]).input(&r.inputs[2]).output(&mut y).size(n).size(t).size(d)
        });
        assert_close("gated residual", &y, &r.out, 1e-6);
        assert_close("gradient of x", &r.g, &r.grads[0], 1e-6);
        let mut da = vec![0f32; n];
        run("repdiff_gate", elementwise(n), |l| {
            l.input(&r.g).input(&r.inputs[2]).output(&mut da).size(n).size(t).size(d)
        });
        assert_close("gradient of the branch", &da, &r.grads[1], 1e-6);
        let dgate = column_sums_of(ColumnSum::Products, &r.g, Some(&r.inputs[1]), None, b, d);
        assert_close("gradient of the gate", &dgate, &r.grads[2], 1e-5);
    }

    /// The three attention kernels against the composed attention's output and gradients, with f32 and with
    /// bf16 operands, on a head size that needs padding and token counts of one partial tile and of two.
    #[test]
    fn attention_kernels_match_the_composed_op() {
        for (batch, tokens, heads, head_dim) in [(2, 70, 2, 24), (1, 20, 3, 64)] {
            let dim = heads * head_dim;
            let r = reference(&[&[batch, tokens, 3 * dim]], |x| ops::attention(&x[0], heads));
            for bf16 in [false, true] {
                let shape = AttentionShape { batch, tokens, heads, head_dim, bf16 };
                let scale = shape.scale();
                let dims = |l: Emulated| {
                    l.int(tokens as i32).int(heads as i32).int(head_dim as i32).int(shape.padded() as i32).float(scale)
                };
                let (mut out, mut lse) = (vec![0f32; batch * tokens * dim], vec![0f32; batch * heads * tokens]);
                run(shape.kernel_name(AttentionKernel::Forward), shape.launch(AttentionKernel::Forward), |l| {
                    dims(l.input(&r.inputs[0]).output(&mut out).output(&mut lse))
                });
                // bf16 operands carry 8 bits of mantissa.
                let tolerance = if bf16 { 2e-2 } else { 1e-5 };
                assert_close(&format!("attention {shape:?}"), &out, &r.out, tolerance);
                let mut delta = vec![0f32; batch * heads * tokens];
                run("repdiff_attention_delta", shape.delta_launch(), |l| {
                    l.input(&out)
                        .input(&r.g)
                        .output(&mut delta)
                        .size(batch * tokens * heads)
                        .int(tokens as i32)
                        .int(heads as i32)
                        .int(head_dim as i32)
                });
                let mut grad = vec![f32::NAN; batch * tokens * 3 * dim];
                for kernel in [AttentionKernel::GradKv, AttentionKernel::GradQ] {
                    run(shape.kernel_name(kernel), shape.launch(kernel), |l| {
                        dims(l.input(&r.inputs[0]).input(&r.g).input(&lse).input(&delta).output(&mut grad))
                    });
                }
                let tolerance = if bf16 { 3e-2 } else { 1e-4 };
                assert_close(&format!("attention gradient {shape:?}"), &grad, &r.grads[0], tolerance);
            }
        }
    }

    /// Norm, clipping factor and AdamW update on the emulator against the CPU optimiser's first step, with the
    /// clipping active; then the EMA kernel against its formula.
    #[test]
    fn optimiser_kernels_match_the_cpu_step() {
        use crate::nn::{Init, Params};
        use crate::optim::{AdamW, AdamWConfig};
        let dev = Device::Cpu;
        let params = Params::random(5, &dev);
        params.root().get("a", &[3, 5], Init::Normal { std: 1.0 }).unwrap();
        params.root().get("b", &[5000], Init::Normal { std: 1.0 }).unwrap();
        let vars = params.finish().unwrap();
        let before: Vec<Vec<f32>> = ["a", "b"].iter().map(|n| values(vars.get(n).unwrap().as_tensor())).collect();
        // The loss sum(a G_a) + sum(b G_b) has the random G as its gradients.
        let mut rng = Rng::new(3);
        let (mut loss, mut grad_values) = (Tensor::zeros((), DType::F32, &dev).unwrap(), Vec::new());
        for name in ["a", "b"] {
            let var = vars.get(name).unwrap();
            let g = rng.randn(var.shape().clone(), &dev).unwrap();
            loss = (loss + (var.as_tensor() * &g).unwrap().sum_all().unwrap()).unwrap();
            grad_values.push(values(&g));
        }
        let grads = loss.backward().unwrap();
        let config = AdamWConfig { learning_rate: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 };
        let max_norm = 10.0;
        let norm = AdamW::new(config, &vars).unwrap().step(&vars, &grads, Some(max_norm)).unwrap();
        assert!(norm > max_norm, "the test means the clipping to be active (norm {norm})");

        let blocks: Vec<usize> = grad_values.iter().map(|g| sum_squares(g.len()).grid.0 as usize).collect();
        let mut partials = vec![0f64; blocks.iter().sum()];
        let mut offset = 0;
        for (g, &count) in grad_values.iter().zip(&blocks) {
            let target = &mut partials[offset..offset + count];
            run("repdiff_sum_squares", sum_squares(g.len()), |l| l.input(g).size(g.len()).output(target));
            offset += count;
        }
        let (mut factor, mut gpu_norm) = (vec![0f32; 1], vec![0f64; 1]);
        run("repdiff_clip_factor", clip_factor(), |l| {
            l.input(&partials)
                .size(partials.len())
                .float(max_norm as f32)
                .int(1)
                .output(&mut factor)
                .output(&mut gpu_norm)
        });
        // Summed in f64 here, in f32 chunks on the CPU.
        assert!((gpu_norm[0] - norm).abs() < 1e-6 * norm, "norm {} vs {norm}", gpu_norm[0]);
        let (b1, b2) = (config.beta1, config.beta2);
        for ((name, mut p), g) in ["a", "b"].iter().zip(before).zip(&grad_values) {
            let n = p.len();
            let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
            run("repdiff_adamw", elementwise(n), |l| {
                let coefficients = [
                    b1 as f32,
                    b2 as f32,
                    (1.0 - b1) as f32,
                    (1.0 - b2) as f32,
                    config.eps as f32,
                    (1.0 - config.learning_rate * config.weight_decay) as f32,
                    (config.learning_rate / (1.0 - b1)) as f32,
                    (1.0 / (1.0 - b2).sqrt()) as f32,
                ];
                coefficients.into_iter().fold(
                    l.output(&mut p).input(g).output(&mut m).output(&mut v).size(n).input(&factor),
                    Emulated::float,
                )
            });
            assert_close(&format!("parameter {name}"), &p, &values(vars.get(name).unwrap().as_tensor()), 1e-6);
        }

        let (shadow, param) = (Rng::new(1).randn(300, &dev).unwrap(), Rng::new(2).randn(300, &dev).unwrap());
        let want = values(&((&shadow * 0.99).unwrap() + (&param * 0.01).unwrap()).unwrap());
        let (mut shadow, param) = (values(&shadow), values(&param));
        run("repdiff_ema", elementwise(300), |l| l.output(&mut shadow).input(&param).size(300).float(0.99).float(0.01));
        assert_close("ema", &shadow, &want, 1e-6);
    }

    #[test]
    fn attention_shared_memory_fits_the_gpus_it_is_meant_for() {
        // DiT's heads (64; XL's 72) fit an H100's 227 KiB in either precision and an A100's 163 KiB in bf16;
        // 128 fits an H100 in bf16.
        for head_dim in [64, 72] {
            for (bf16, max_shared) in [(false, 227 * 1024), (true, 163 * 1024)] {
                assert!(AttentionShape { batch: 1, tokens: 256, heads: 12, head_dim, bf16 }.supported(max_shared));
            }
        }
        assert!(AttentionShape { batch: 1, tokens: 256, heads: 12, head_dim: 128, bf16: true }.supported(227 * 1024));
        assert!(!AttentionShape { batch: 1, tokens: 256, heads: 1, head_dim: 160, bf16: true }.supported(usize::MAX));
    }
}
