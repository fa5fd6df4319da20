//! A matrix product with bf16 operands and f32 accumulation on CPUs with AVX512-BF16 (`vdpbf16ps`: two
//! bf16 products added into each f32 lane, twice the multiply-adds of an f32 FMA per instruction). What
//! PyTorch does for an f32 matmul under `torch.set_float32_matmul_precision("medium")`: the operands are
//! rounded to bf16 (8 bits of mantissa) as they are packed, the sums kept in f32.
//!
//! Blocking as in GotoBLAS: B is packed once into panels of 32 columns, pairs of k interleaved (the layout
//! `vdpbf16ps` reads); each rayon task takes a block of rows, packs them into panels of 6 rows, and runs the
//! 6 x 32 microkernel (12 accumulator registers) over k in chunks that keep a B panel in L1. Where the CPU
//! has AMX tiles the product runs on them instead ([`super::amx`]), on the same B panels.

use rayon::prelude::*;

use super::gemm::{View, ViewMut};

/// Rows per microkernel tile.
const MR: usize = 6;
/// Columns per microkernel tile (two 16-lane registers) and per B panel.
pub(super) const NR: usize = 32;
/// Rows per rayon task.
const MC: usize = 16 * MR;
/// k pairs per chunk: a 32-column B panel chunk is 256 x 32 x 4 bytes = 32 KB.
const KC2: usize = 256;

/// Whether this CPU runs the bf16 kernel.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Multiply-adds per cycle of `vdpbf16ps` over those of an f32 FMA on this core, both on 512-bit registers
/// (`None` without AVX512-BF16). The instruction does twice an FMA's multiply-adds, but cores issue it at
/// different rates: Zen 4 issues both once a cycle (2.0; bf16 products made DiT training 1.5x faster
/// there), while a Xeon of family 6 model 207 (AMX hidden by its hypervisor) issues FMAs twice a cycle and
/// `vdpbf16ps` every other cycle (0.49: bf16 peaks at half of f32, and its products ran 1.6x slower).
/// Measured once per process, in about a millisecond: the best of five runs of 12 independent chains of
/// each instruction, interleaved, so that a preemption or a clock change cannot decide it.
pub(crate) fn dot_product_rate() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        static RATE: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
        *RATE.get_or_init(|| {
            if !available() {
                return None;
            }
            const ITERATIONS: usize = 20_000;
            let (mut fma, mut dot) = (std::time::Duration::MAX, std::time::Duration::MAX);
            for _ in 0..5 {
                let start = std::time::Instant::now();
                // SAFETY: `available()` checked the instructions.
                std::hint::black_box(unsafe { fma_chains(ITERATIONS) });
                fma = fma.min(start.elapsed());
                let start = std::time::Instant::now();
                // SAFETY: as above.
                std::hint::black_box(unsafe { dot_chains(ITERATIONS) });
                dot = dot.min(start.elapsed());
            }
            Some(2.0 * fma.as_secs_f64() / dot.as_secs_f64().max(1e-12))
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The rate of [`dot_product_rate`] from which the AVX-512 kernel is used: below it, f32 products are
/// faster once the kernel has rounded its operands (and both measured cores are far from it).
pub(crate) const DOT_PRODUCT_RATE_NEEDED: f64 = 1.25;

/// Whether bf16 products run on a bf16 kernel here: on AMX tiles where the CPU has them, else on the
/// AVX-512 kernel where this core's `vdpbf16ps` outruns its f32 FMA ([`dot_product_rate`]); elsewhere
/// they run in f32, as PyTorch's "medium" precision allows bf16 only where a faster kernel exists.
pub(crate) fn selected() -> bool {
    super::amx::available() || dot_product_rate().is_some_and(|r| r >= DOT_PRODUCT_RATE_NEEDED)
}

/// 12 independent chains of 512-bit f32 FMAs, `n` deep.
///
/// # Safety
/// The CPU must have AVX512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains(n: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(std::hint::black_box(1.0)), _mm512_set1_ps(std::hint::black_box(0.5)));
    let mut acc = [_mm512_setzero_ps(); 12];
    for _ in 0..n {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(a, b, *r);
        }
    }
    _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &r| _mm512_add_ps(s, r)))
}

/// 12 independent chains of 512-bit `vdpbf16ps`, `n` deep.
///
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_chains(n: usize) -> f32 {
    use std::arch::x86_64::*;
    // bf16 pairs (1.0, 0.5), (1.0, 0.5).
    let pairs = _mm512_set1_epi32(std::hint::black_box(0x3f00_3f80));
    // SAFETY: same size; every bit pattern is a valid vector of bf16.
    let a: __m512bh = unsafe { std::mem::transmute(pairs) };
    let mut acc = [_mm512_setzero_ps(); 12];
    for _ in 0..n {
        for r in acc.iter_mut() {
            *r = _mm512_dpbf16_ps(*r, a, a);
        }
    }
    _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &r| _mm512_add_ps(s, r)))
}

/// f32 to bf16, rounding to nearest even (NaN stays NaN).
pub(crate) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// Two bf16 values in one 32-bit word, `lo` first in memory (the pair `vdpbf16ps` multiplies together).
pub(super) fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(to_bf16(lo)) | (u32::from(to_bf16(hi)) << 16)
}

/// Element (i, j) of a view.
fn at(v: &View, i: usize, j: usize) -> f32 {
    v.data[i * v.row_stride + j * v.col_stride]
}

/// The pairs of `src` (consecutive values along k) into `out` (`src.len()` / 2 rounded up words; an odd
/// last value is paired with zero). Sixteen pairs per instruction.
#[inline]
pub(super) fn line_pairs(src: &[f32], out: &mut [u32]) {
    let full = src.len() / 32;
    // SAFETY: the bf16 path only runs where `available()`; the vector part stays inside both slices.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        convert_pairs(&src[..full * 32], &mut out[..full * 16]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let full = 0;
    for (w, o) in out.iter_mut().enumerate().skip(full * 16) {
        let hi = src.get(2 * w + 1).copied().unwrap_or(0.0);
        *o = pair(src[2 * w], hi);
    }
}

/// `src` (a multiple of 32 values) as pairs.
///
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16; `out` holds `src.len() / 2` words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn convert_pairs(src: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(src.len().is_multiple_of(32) && out.len() * 2 >= src.len());
    for c in 0..src.len() / 32 {
        // SAFETY: in bounds by the assertion; unaligned loads and stores. The low 16 bf16 of the result
        // are `lo`'s, so in memory the values keep their order: word w is the pair (2w, 2w + 1).
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(32 * c));
            let hi = _mm512_loadu_ps(src.as_ptr().add(32 * c + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(out.as_mut_ptr().add(16 * c) as *mut __m512i, v);
        }
    }
}

/// Sixteen pairs from two rows: word c is `(lo[c], hi[c])`.
///
/// # Safety
/// The CPU must have AVX512F, AVX512BW and AVX512-BF16; `lo` and `hi` hold 16 values, `out` 16 words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
pub(super) unsafe fn interleave_pairs(lo: &[f32], hi: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(lo.len() >= 16 && hi.len() >= 16 && out.len() >= 16);
    // bf16 element 2c <- lo[c] (element c of the conversion), 2c + 1 <- hi[c] (element 16 + c).
    let index = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
        16, 0,
    );
    // SAFETY: in bounds by the assertion; unaligned loads and stores.
    unsafe {
        let both: __m512i =
            std::mem::transmute(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(hi.as_ptr()), _mm512_loadu_ps(lo.as_ptr())));
        _mm512_storeu_si512(out.as_mut_ptr() as *mut __m512i, _mm512_permutexvar_epi16(index, both));
    }
}

/// B (`k x n`) as panels of NR columns: panel p holds, for each of `panel_pairs` k pairs, NR words (zero
/// past the edges: columns past n, pairs past the `k2` that B has).
pub(super) fn pack_b(b: &View, k2: usize, panel_pairs: usize, threads: usize) -> Vec<u32> {
    let panels = b.cols.div_ceil(NR);
    let mut packed = vec![0u32; panels * panel_pairs * NR];
    // SAFETY: the bf16 path only runs where `available()`.
    let fill = |(p, panel): (usize, &mut [u32])| unsafe { pack_b_panel(b, p, k2, panel) };
    if threads > 1 {
        packed.par_chunks_mut(panel_pairs * NR).enumerate().for_each(fill);
    } else {
        packed.chunks_mut(panel_pairs * NR).enumerate().for_each(fill);
    }
    packed
}

/// Panel `p` of [`pack_b`], compiled for the instructions the kernel needs so that the conversions inline.
///
/// # Safety
/// The CPU must have AVX512F, AVX512BW and AVX512-BF16 ([`available`]).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw,avx512bf16"))]
unsafe fn pack_b_panel(b: &View, p: usize, k2: usize, panel: &mut [u32]) {
    let cols = (b.cols - p * NR).min(NR);
    if b.row_stride == 1 {
        // Columns lie along k (a transposed weight): each column's pairs in one pass, then spread.
        let mut line = vec![0u32; k2];
        for c in 0..cols {
            let j = p * NR + c;
            line_pairs(&b.data[j * b.col_stride..j * b.col_stride + b.rows], &mut line);
            for (kp, &w) in line.iter().enumerate() {
                panel[kp * NR + c] = w;
            }
        }
        return;
    }
    let zeros = [0f32; 16];
    for kp in 0..k2 {
        let (k0, k1) = (2 * kp, 2 * kp + 1);
        let mut c = 0;
        #[cfg(target_arch = "x86_64")]
        if b.col_stride == 1 {
            // Rows lie along n: sixteen columns of two rows per instruction.
            while c + 16 <= cols {
                let j = p * NR + c;
                let lo = &b.data[k0 * b.row_stride + j..];
                let hi = if k1 < b.rows { &b.data[k1 * b.row_stride + j..] } else { &zeros[..] };
                // SAFETY: this function's instructions; 16 values lie past `j` in both rows.
                unsafe { interleave_pairs(lo, hi, &mut panel[kp * NR + c..]) };
                c += 16;
            }
        }
        for c in c..cols {
            let j = p * NR + c;
            let hi = if k1 < b.rows { at(b, k1, j) } else { 0.0 };
            panel[kp * NR + c] = pair(at(b, k0, j), hi);
        }
    }
}

/// Rows `rows` of A (`m x k`) as panels of MR rows: for each k pair, MR words (zero past the edges).
///
/// # Safety
/// The CPU must have AVX512F, AVX512BW and AVX512-BF16 ([`available`]).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw,avx512bf16"))]
unsafe fn pack_a(a: &View, rows: std::ops::Range<usize>, k2: usize, out: &mut Vec<u32>, line: &mut Vec<u32>) {
    let panels = rows.len().div_ceil(MR);
    out.clear();
    out.resize(panels * k2 * MR, 0);
    if a.col_stride != 1 {
        // Columns lie along m (a transposed operand; a view always has one contiguous axis).
        // SAFETY: this function's instructions.
        return unsafe { pack_a_transposed(a, rows, k2, out) };
    }
    // Rows lie along k: each row's pairs in one pass, then spread.
    line.resize(k2, 0);
    for (p, panel) in out.chunks_mut(k2 * MR).enumerate() {
        let first = rows.start + p * MR;
        for r in 0..(rows.end - first).min(MR) {
            let start = (first + r) * a.row_stride;
            line_pairs(&a.data[start..start + a.cols], line);
            for (kp, &w) in line.iter().enumerate() {
                panel[kp * MR + r] = w;
            }
        }
    }
}

/// [`pack_a`] for an operand whose columns lie along m (a transposed one, as `g^T` in a weight gradient).
/// For one k pair the rows of a panel are neighbours in both source lines, and a panel holds them side by
/// side: 48 rows (8 panels) are converted and paired from the two lines three instructions at a time and
/// copied six words per panel; the rows past the last such group one at a time.
///
/// # Safety
/// As [`pack_a`].
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw,avx512bf16"))]
unsafe fn pack_a_transposed(a: &View, rows: std::ops::Range<usize>, k2: usize, out: &mut [u32]) {
    const GROUP: usize = 48;
    assert_eq!(a.row_stride, 1, "pack_a: a view with no contiguous axis");
    debug_assert!(out.len() >= rows.len().div_ceil(MR) * k2 * MR);
    let zeros = [0f32; GROUP];
    for kp in 0..k2 {
        let (k0, k1) = (2 * kp, 2 * kp + 1);
        let lo = &a.data[k0 * a.col_stride + rows.start..];
        let hi = if k1 < a.cols { &a.data[k1 * a.col_stride + rows.start..] } else { &zeros[..] };
        let mut i = 0;
        #[cfg(target_arch = "x86_64")]
        while i + GROUP <= rows.len() {
            let mut words = [0u32; GROUP];
            for g in (0..GROUP).step_by(16) {
                let hi = if k1 < a.cols { &hi[i + g..] } else { hi };
                // SAFETY: this function's instructions; 16 values lie past both starts.
                unsafe { interleave_pairs(&lo[i + g..], hi, &mut words[g..]) };
            }
            for (q, six) in words.chunks_exact(MR).enumerate() {
                let at = (i / MR + q) * k2 * MR + kp * MR;
                out[at..at + MR].copy_from_slice(six);
            }
            i += GROUP;
        }
        for r in i..rows.len() {
            let h = if k1 < a.cols { hi[r] } else { 0.0 };
            out[(r / MR) * k2 * MR + kp * MR + r % MR] = pair(lo[r], h);
        }
    }
}

/// `dst = scale * a b` (or `+=` with `accumulate`) with bf16 operands, on AMX tiles where the CPU has them.
/// The caller checked the shapes and that this CPU has the instructions ([`available`]).
pub(crate) fn gemm(dst: ViewMut, a: View, b: View, scale: f32, accumulate: bool, threads: usize) {
    if super::amx::available() {
        super::amx::gemm(dst, a, b, scale, accumulate, threads)
    } else {
        gemm_avx512(dst, a, b, scale, accumulate, threads)
    }
}

/// The destination's rows in blocks of `block_rows` (the last one shorter), each with its first row: every
/// rayon task owns the rows of its block.
pub(super) fn row_blocks(dst: ViewMut<'_>, block_rows: usize) -> Vec<(usize, &mut [f32])> {
    let (m, n, row_stride) = (dst.rows, dst.cols, dst.row_stride);
    let mut rest: &mut [f32] = dst.data;
    let mut blocks = Vec::with_capacity(m.div_ceil(block_rows));
    for start in (0..m).step_by(block_rows) {
        let rows = (m - start).min(block_rows);
        let len = if start + rows == m { (rows - 1) * row_stride + n } else { rows * row_stride };
        let (block, tail) = std::mem::take(&mut rest).split_at_mut(len);
        blocks.push((start, block));
        rest = tail;
    }
    blocks
}

/// [`gemm`] on the AVX512-BF16 microkernel.
fn gemm_avx512(dst: ViewMut, a: View, b: View, scale: f32, accumulate: bool, threads: usize) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    let k2 = k.div_ceil(2);
    let packed_b = pack_b(&b, k2, k2, threads);
    let row_stride = dst.row_stride;
    let blocks = row_blocks(dst, MC);
    let run = |(start, block): (usize, &mut [f32]), (packed_a, line): &mut (Vec<u32>, Vec<u32>)| {
        let rows = (m - start).min(MC);
        // SAFETY: the caller checked `available()`.
        unsafe { pack_a(&a, start..start + rows, k2, packed_a, line) };
        for kc in (0..k2).step_by(KC2) {
            let chunk = (k2 - kc).min(KC2);
            let add = accumulate || kc > 0;
            for (p, b_panel) in packed_b.chunks(k2 * NR).enumerate() {
                let b_chunk = &b_panel[kc * NR..(kc + chunk) * NR];
                for (q, a_panel) in packed_a.chunks(k2 * MR).enumerate() {
                    let a_chunk = &a_panel[kc * MR..(kc + chunk) * MR];
                    let (r0, c0) = (q * MR, p * NR);
                    let out = TileOut { rows: (rows - r0).min(MR), cols: (n - c0).min(NR), row_stride, scale, add };
                    // SAFETY: `available()` was checked by the caller; the slices hold `chunk` pairs.
                    unsafe { kernel(a_chunk, b_chunk, chunk, &mut block[r0 * row_stride + c0..], out) };
                }
            }
        }
    };
    if threads > 1 {
        blocks.into_par_iter().for_each_init(Default::default, |scratch, block| run(block, scratch));
    } else {
        let mut scratch = Default::default();
        blocks.into_iter().for_each(|block| run(block, &mut scratch));
    }
}

/// Where a kernel puts a tile's sums: `scale` times them written (or added, with `add`) to the first
/// `rows x cols` of its destination, rows `row_stride` apart.
#[derive(Clone, Copy)]
pub(super) struct TileOut {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) scale: f32,
    pub(super) add: bool,
}

#[cfg(target_arch = "x86_64")]
impl TileOut {
    /// Lane masks of a row's two 16-column halves: the columns inside `cols`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn masks(&self) -> [std::arch::x86_64::__mmask16; 2] {
        let mask = |from: usize| ((1u32 << self.cols.saturating_sub(from).min(16)) - 1) as u16;
        [mask(0), mask(16)]
    }

    /// Row `r` of the tile's sums (its two halves) into `dst`, the tile's destination, with masked vector
    /// stores: the columns past `cols` are neither read nor written.
    ///
    /// # Safety
    /// The CPU must have AVX512F; `masks` are [`TileOut::masks`]; `r < rows` and `dst` holds
    /// `(rows - 1) * row_stride + cols` values.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn store_row(
        &self,
        r: usize,
        sums: [std::arch::x86_64::__m512; 2],
        masks: [std::arch::x86_64::__mmask16; 2],
        dst: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        debug_assert!(r < self.rows && dst.len() >= (self.rows - 1) * self.row_stride + self.cols);
        let scale = _mm512_set1_ps(self.scale);
        for (half, (sums, m)) in sums.into_iter().zip(masks).enumerate() {
            // SAFETY: the lanes a mask keeps lie inside `dst` (the caller's contract); masked-off lanes are not
            // accessed (AVX-512 masked loads and stores do not fault on them).
            unsafe {
                let p = dst.as_mut_ptr().add(r * self.row_stride + 16 * half);
                let mut v = _mm512_mul_ps(scale, sums);
                if self.add {
                    v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), v);
                }
                _mm512_mask_storeu_ps(p, m, v);
            }
        }
    }
}

/// The MR x NR sums over `pairs` k pairs of packed A and B panels, stored into `dst` as `out` says (masked
/// vector stores: the edge tiles' columns past `out.cols` are neither read nor written).
///
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16; `a` holds `pairs * MR` words and `b` `pairs * NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(a: &[u32], b: &[u32], pairs: usize, dst: &mut [f32], out: TileOut) {
    use std::arch::x86_64::*;
    assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
    assert!(out.rows >= 1 && out.rows <= MR && out.cols >= 1 && out.cols <= NR);
    assert!(dst.len() >= (out.rows - 1) * out.row_stride + out.cols);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for kp in 0..pairs {
        // SAFETY: every index is in bounds by the assertion above; loads are unaligned; `__m512i` and
        // `__m512bh` are both 64 bytes of plain bits.
        unsafe {
            let p = b.as_ptr().add(kp * NR) as *const __m512i;
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(p));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(p.add(1)));
            let a_pairs = a.as_ptr().add(kp * MR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a_pairs.add(r) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
            }
        }
    }
    let masks = out.masks();
    for (r, &sums) in acc.iter().enumerate().take(out.rows) {
        // SAFETY: `r < out.rows` and `dst` is large enough by the assertions above.
        unsafe { out.store_row(r, sums, masks, dst) };
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_a: &[u32], _b: &[u32], _pairs: usize, _dst: &mut [f32], _out: TileOut) {
    unreachable!("the bf16 kernel is only selected on x86-64 CPUs with AVX512-BF16")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_bf16(x: u16) -> f64 {
        f64::from(f32::from_bits(u32::from(x) << 16))
    }

    #[test]
    fn the_dot_product_rate_is_measured_where_the_instruction_exists_and_decides_the_kernel() {
        let Some(rate) = dot_product_rate() else {
            assert!(!available() && !super::super::amx::available());
            return;
        };
        println!("vdpbf16ps / f32 FMA multiply-adds per cycle: {rate:.2}");
        assert!(available() && (0.05..8.0).contains(&rate), "{rate}");
        assert_eq!(selected(), super::super::amx::available() || rate >= DOT_PRODUCT_RATE_NEEDED);
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and the next bf16 (1 + 2^-7): ties go to the even mantissa, 1.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert!(f32::from_bits(u32::from(to_bf16(f32::NAN)) << 16).is_nan());
    }

    #[test]
    fn products_match_the_rounded_operands_multiplied_exactly() {
        if !available() {
            eprintln!("this CPU has no AVX512-BF16: the bf16 kernel is not used here");
            return;
        }
        type Kernel = fn(ViewMut, View, View, f32, bool, usize);
        let mut kernels: Vec<(&str, Kernel)> = vec![("avx512", gemm_avx512)];
        if super::super::amx::available() {
            kernels.push(("amx", super::super::amx::gemm));
        } else {
            eprintln!("this CPU has no AMX: only the AVX-512 kernel is checked");
        }
        for (name, gemm) in kernels {
            check_products(name, gemm);
        }
    }

    fn check_products(kernel: &str, gemm: fn(ViewMut, View, View, f32, bool, usize)) {
        let data: Vec<f32> = (0..120_000).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
        // Edges in every direction (m, n not multiples of the tile or of 16, odd k, k over one chunk), each
        // operand stored along k and across it (transposed), a destination inside wider rows, both thread
        // modes, accumulation with a scale and without (AMX loads whole unscaled tiles from the destination).
        // (200, 40, 64): three row blocks on one thread (the packing buffer reused, the last block shorter),
        // an even number of AMX tile steps (padded row stride).
        let cases =
            [(7, 33, 5, 1), (100, 70, 513, 2), (13, 64, 600, 2), (1, 1, 1, 1), (9, 50, 31, 1), (200, 40, 64, 1)];
        for (&(m, n, k, threads), layout) in cases.iter().flat_map(|c| std::iter::repeat(c).zip(0..4)) {
            let a = match layout % 2 {
                0 => View::rows(&data[11..], m, k, k + 3),
                _ => View::rows(&data[11..], k, m, m + 1).t(),
            };
            let b = match layout / 2 {
                0 => View::rows(&data[60_000..], n, k, k).t(),
                _ => View::rows(&data[60_000..], k, n, n + 3),
            };
            let width = n + 2;
            let mut out = vec![5f32; m * width];
            gemm(ViewMut::rows(&mut out, m, n, width), a, b, 1.0, false, threads);
            gemm(ViewMut::rows(&mut out, m, n, width), a, b, 0.5, true, threads);
            gemm(ViewMut::rows(&mut out, m, n, width), a, b, 1.0, true, threads);
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 = (0..k)
                        .map(|l| from_bf16(to_bf16(at(&a, i, l))) * from_bf16(to_bf16(at(&b, l, j))))
                        .sum::<f64>()
                        * 2.5;
                    let scale: f64 = (0..k).map(|l| f64::from((at(&a, i, l) * at(&b, l, j)).abs())).sum::<f64>();
                    let got = f64::from(out[i * width + j]);
                    assert!(
                        (got - exact).abs() <= 1e-5 * scale.max(1.0),
                        "{kernel} ({m}x{n}x{k}, layout {layout}) [{i},{j}]: {got} vs {exact}"
                    );
                }
                assert_eq!(&out[i * width + n..(i + 1) * width], &[5.0, 5.0], "{kernel}: padding untouched");
            }
        }
    }
}
