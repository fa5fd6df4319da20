//! A bounds-checked front to the `gemm` crate (the kernel behind candle's own CPU matmul) for strided views,
//! so the fused linear and attention kernels multiply sub-matrices where they lie (one head inside a packed
//! qkv buffer, a transposed weight) instead of copying them out first. With [`MatmulPrecision::Bf16`] on
//! a CPU with AVX512-BF16 the products run on the bf16 kernels of [`super::bf16`] instead (on AMX tiles
//! where the CPU has them, [`super::amx`]).

use std::cell::Cell;

use gemm::Parallelism;

use super::bf16;

/// How f32 matrix products are computed, as PyTorch's `torch.set_float32_matmul_precision` and
/// `torch.autocast`: `Highest` in f32 throughout. `High`: TF32 tensor-core products on a GPU (PyTorch's
/// "high"), f32 on a CPU. `Bf16`: the operands rounded to bf16 and the sums kept in f32; on a GPU that is
/// `torch.autocast(bfloat16)` for the linear layers and attention (bf16 tensor-core products, f32 weights,
/// optimiser state, norms and softmax statistics); on a CPU it is faster where the CPU has AVX512-BF16
/// (Zen 4/5: 1.3-1.5x) and much faster with AMX (Xeon Sapphire Rapids and later); elsewhere, and on cores
/// whose bf16 instruction is slower than their f32 FMA ([`bf16_kernel`] says), it runs in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    #[default]
    Highest,
    High,
    Bf16,
}

impl MatmulPrecision {
    /// The name in configs, job parameters and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::Highest => "highest",
            MatmulPrecision::High => "high",
            MatmulPrecision::Bf16 => "bf16",
        }
    }

    pub const ALL: [MatmulPrecision; 3] = [MatmulPrecision::Highest, MatmulPrecision::High, MatmulPrecision::Bf16];
}

thread_local! {
    static PRECISION: Cell<MatmulPrecision> = const { Cell::new(MatmulPrecision::Highest) };
}

/// Runs `f` with the matrix products of the ops at `precision` on this thread (ops read it when they are
/// called, so the work they hand to other threads follows it too). On a GPU, `High` also switches candle's
/// f32 cuBLAS products to TF32 for the scope: a process-wide setting, restored when the scope ends.
pub fn with_matmul_precision<T>(precision: MatmulPrecision, f: impl FnOnce() -> T) -> T {
    let before = PRECISION.with(|p| p.replace(precision));
    #[cfg(feature = "cuda")]
    let tf32_before = candle_core::cuda::gemm_reduced_precision_f32();
    #[cfg(feature = "cuda")]
    candle_core::cuda::set_gemm_reduced_precision_f32(precision == MatmulPrecision::High);
    // Restored on unwind too.
    struct Restore {
        precision: MatmulPrecision,
        #[cfg(feature = "cuda")]
        tf32: bool,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            PRECISION.with(|p| p.set(self.precision));
            #[cfg(feature = "cuda")]
            candle_core::cuda::set_gemm_reduced_precision_f32(self.tf32);
        }
    }
    let _restore = Restore {
        precision: before,
        #[cfg(feature = "cuda")]
        tf32: tf32_before,
    };
    f()
}

/// The precision of this thread's matrix products (see [`with_matmul_precision`]).
pub(crate) fn current_precision() -> MatmulPrecision {
    PRECISION.with(Cell::get)
}

/// `a b` for f32 tensors, as `torch.autocast(bfloat16)` computes it on a GPU under
/// [`MatmulPrecision::Bf16`]: both operands cast to bf16, the product on the tensor cores with f32 sums,
/// the bf16 result cast back to f32 (the casts are in the autograd graph, so gradients flow in f32 to f32
/// weights). Elsewhere, and for other dtypes, the plain product.
pub(crate) fn autocast_matmul(
    a: &candle_core::Tensor,
    b: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    use candle_core::DType;
    let autocast = current_precision() == MatmulPrecision::Bf16
        && a.device().is_cuda()
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32;
    if !autocast {
        return a.matmul(b);
    }
    a.to_dtype(DType::BF16)?.matmul(&b.to_dtype(DType::BF16)?)?.to_dtype(DType::F32)
}

/// The kernel that runs [`MatmulPrecision::Bf16`] products on this CPU ("AMX tiles", "AVX512-BF16"), or
/// why they run in f32 here.
pub fn bf16_kernel() -> Result<&'static str, String> {
    if super::amx::available() {
        return Ok("AMX tiles");
    }
    match bf16::dot_product_rate() {
        None => Err("this CPU has no AVX512-BF16".into()),
        Some(_) if bf16::selected() => Ok("AVX512-BF16"),
        Some(rate) => Err(format!(
            "per cycle this core's vdpbf16ps does {rate:.2}x the multiply-adds of its f32 FMA; the kernel needs {}x",
            bf16::DOT_PRODUCT_RATE_NEEDED
        )),
    }
}

/// Where [`MatmulPrecision::Bf16`] products run on this CPU, for a person: "AMX tiles kernel", or
/// "in f32 (why)".
pub fn bf16_note() -> String {
    match bf16_kernel() {
        Ok(kernel) => format!("{kernel} kernel"),
        Err(why) => format!("in f32 ({why})"),
    }
}

/// The shape of one product to time with [`time_product`]: `m x k` times `k x n`, `a` stored transposed
/// (as `g^T` in a weight gradient) or not, `b` transposed (as `W^T` in a forward) or not.
#[derive(Clone, Copy, Debug)]
pub struct ProductShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_transposed: bool,
    pub b_transposed: bool,
}

/// The best of `reps` timed runs (after one untimed) of the product the fused ops run for `shape`, at
/// `precision`, on the current rayon pool's threads: what `repdiff bench --products` prints.
pub fn time_product(shape: ProductShape, precision: MatmulPrecision, reps: usize) -> std::time::Duration {
    let ProductShape { m, n, k, a_transposed, b_transposed } = shape;
    let values = |len: usize, seed: usize| -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed) % 1013) as f32 / 506.0 - 1.0).collect()
    };
    let (a_data, b_data) = (values(m * k, 1), values(k * n, 2));
    let a = if a_transposed { View::rows(&a_data, k, m, m).t() } else { View::rows(&a_data, m, k, k) };
    let b = if b_transposed { View::rows(&b_data, n, k, k).t() } else { View::rows(&b_data, k, n, n) };
    let mut out = vec![0f32; m * n];
    with_matmul_precision(precision, || {
        let exec = Exec::current(rayon::current_num_threads());
        let mut run = || {
            let start = std::time::Instant::now();
            gemm(ViewMut::rows(&mut out, m, n, n), a, b, 1.0, false, exec);
            start.elapsed()
        };
        run();
        (0..reps.max(1)).map(|_| run()).min().expect("at least one run")
    })
}

/// How one product runs: its threads and precision.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exec {
    pub(crate) threads: usize,
    bf16: bool,
}

impl Exec {
    /// `threads` threads at the calling thread's precision (call it on the op's own thread).
    pub(crate) fn current(threads: usize) -> Self {
        let bf16 = current_precision() == MatmulPrecision::Bf16 && bf16::selected();
        Exec { threads, bf16 }
    }
}

/// A read-only strided matrix: element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(super) data: &'a [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
}

impl<'a> View<'a> {
    /// `rows x cols` values stored row by row, rows `row_stride` apart (`row_stride >= cols`).
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        let view = View { data, rows, cols, row_stride, col_stride: 1 };
        assert!(fits(data.len(), rows, cols, row_stride, 1), "gemm view out of bounds");
        view
    }

    /// The transpose, without copying.
    pub(crate) fn t(self) -> Self {
        View { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// A writable row-major matrix with rows `row_stride` apart; its elements never overlap.
pub(crate) struct ViewMut<'a> {
    pub(super) data: &'a mut [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
}

impl<'a> ViewMut<'a> {
    pub(crate) fn rows(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(row_stride >= cols || rows <= 1, "overlapping rows");
        assert!(fits(data.len(), rows, cols, row_stride, 1), "gemm destination out of bounds");
        ViewMut { data, rows, cols, row_stride }
    }
}

fn fits(len: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * row_stride + (cols - 1) * col_stride < len
}

/// `dst = scale * a b`, or `dst += scale * a b` with `accumulate`; `exec.threads > 1` splits the product
/// on rayon.
pub(crate) fn gemm(dst: ViewMut, a: View, b: View, scale: f32, accumulate: bool, exec: Exec) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "gemm shapes: {m}x{n} = {}x{} * {}x{}",
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.data.chunks_mut(dst.row_stride.max(1)).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let threads = exec.threads;
    if exec.bf16 {
        return bf16::gemm(dst, a, b, scale, accumulate, threads);
    }
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: every view was checked to lie inside its slice (`fits`), the destination's elements are
    // distinct (row_stride >= cols) and it is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            dst.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &View, b: &View) -> Vec<f32> {
        let mut out = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|k| a.data[i * a.row_stride + k * a.col_stride] * b.data[k * b.row_stride + j * b.col_stride])
                    .sum();
            }
        }
        out
    }

    #[test]
    fn strided_and_transposed_views_multiply_in_place() {
        let data: Vec<f32> = (0..200).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        // a: 3x4 inside rows of 10; b: the transpose of a 5x4 block inside rows of 6.
        let a = View::rows(&data[3..], 3, 4, 10);
        let b = View::rows(&data[50..], 5, 4, 6).t();
        let expected = naive(&a, &b);
        let mut out = vec![9f32; 3 * 7];
        gemm(ViewMut::rows(&mut out, 3, 5, 7), a, b, 1.0, false, Exec::current(1));
        for i in 0..3 {
            for j in 0..5 {
                assert!((out[i * 7 + j] - expected[i * 5 + j]).abs() < 1e-5);
            }
            assert_eq!(&out[i * 7 + 5..i * 7 + 7], &[9.0, 9.0], "padding untouched");
        }
        // Accumulating with a scale, on two threads.
        gemm(ViewMut::rows(&mut out, 3, 5, 7), a, b, 0.5, true, Exec::current(2));
        assert!((out[0] - 1.5 * expected[0]).abs() < 1e-5);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_view_past_the_end_is_refused() {
        let data = vec![0f32; 11];
        View::rows(&data, 3, 4, 4);
    }
}
