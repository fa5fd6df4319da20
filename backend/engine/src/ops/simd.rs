//! The fused kernels' loops at the CPU's own vector width, and reductions that vectorise.
//!
//! The build targets baseline x86-64, so a loop the compiler vectorises runs on SSE2, 4 f32 lanes wide.
//! [`vectorized`] runs a closure compiled again with AVX2+FMA or with AVX-512 enabled, the widest the CPU
//! has (pulp's runtime dispatch, the crate gemm picks its kernels with), so the same loops run 8 or 16
//! lanes wide. What the closure calls is compiled along with it where it is inlined, which the small
//! generic kernels here are; work handed to other threads is not, so each rayon task calls it itself.
//!
//! A running sum `s += x[i]` never vectorises (float addition is not associative, and the compiler keeps
//! the order written), and at 4 cycles per add it was the slow part of a softmax or norm row. The
//! reductions here keep [`LANES`] partial sums instead: another order of summation, as any BLAS has.
//!
//! Only code inlined into the dispatched function gets the wider instructions, and LLVM decides alone
//! whether to inline a closure or a std iterator adapter (`for_each` and `sum` go through `fold`, which it
//! often keeps out of line, compiled for baseline SSE2). So every closure handed to [`vectorized`] (and
//! every closure it calls) is `#[inline(always)]`, and the kernels loop with `for`, not `for_each`.

/// Runs `f` compiled for the widest vector instructions this CPU has.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Partial sums a reduction keeps: two AVX-512 or four AVX2 registers, enough to hide the add latency.
const LANES: usize = 32;

/// `sum_i f(a[i], b[i])`.
#[inline(always)]
pub(crate) fn sum_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    assert_eq!(a.len(), b.len(), "sum_zip: lengths differ");
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let mut tail = 0f32;
    for (&a, &b) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        tail += f(a, b);
    }
    for (a, b) in a_chunks.zip(b_chunks) {
        for ((acc, &a), &b) in acc.iter_mut().zip(a).zip(b) {
            *acc += f(a, b);
        }
    }
    let mut total = 0f32;
    for a in acc {
        total += a;
    }
    total + tail
}

/// `sum_i f(x[i])`.
#[inline(always)]
pub(crate) fn sum_map(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    sum_zip(x, x, |v, _| f(v))
}

/// `sum_i x[i]`.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    sum_map(x, |v| v)
}

/// `sum_i a[i] b[i]`.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum_zip(a, b, |a, b| a * b)
}

/// The largest value (negative infinity for none; NaNs are skipped, as `f32::max` does).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let mut tail = f32::NEG_INFINITY;
    for &v in chunks.remainder() {
        tail = tail.max(v);
    }
    for chunk in chunks {
        for (acc, &v) in acc.iter_mut().zip(chunk) {
            *acc = acc.max(v);
        }
    }
    let mut max = tail;
    for a in acc {
        max = max.max(a);
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_agree_with_f64_sums_at_every_length() {
        for n in [0, 1, 7, 31, 32, 33, 64, 100, 257] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 11 % 17) as f32 - 8.0) / 5.0).collect();
            let sum64: f64 = a.iter().map(|&v| v as f64).sum();
            let dot64: f64 = a.iter().zip(&b).map(|(&a, &b)| a as f64 * b as f64).sum();
            let sq64: f64 = a.iter().map(|&v| (v as f64 - 0.5).powi(2)).sum();
            let (s, d, q) = vectorized(
                #[inline(always)]
                || (sum(&a), dot(&a, &b), sum_map(&a, |v| (v - 0.5) * (v - 0.5))),
            );
            assert!((s as f64 - sum64).abs() < 1e-4, "n {n}: sum {s} vs {sum64}");
            assert!((d as f64 - dot64).abs() < 1e-4, "n {n}: dot {d} vs {dot64}");
            assert!((q as f64 - sq64).abs() < 1e-3, "n {n}: squares {q} vs {sq64}");
            let expected = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&a), expected, "n {n}");
        }
        let mut with_nan = vec![1.0f32; 40];
        with_nan[3] = f32::NAN;
        with_nan[35] = 2.0;
        assert_eq!(max(&with_nan), 2.0);
    }
}
