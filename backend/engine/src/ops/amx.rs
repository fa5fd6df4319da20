//! The bf16 products of [`super::bf16`] on AMX, the tile units of Intel Xeons since Sapphire Rapids: one
//! `tdpbf16ps` multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums, 16 times the work of
//! an AVX-512 `vdpbf16ps`. Same operands (rounded to bf16 as they are packed) and f32 sums as the AVX-512
//! kernel, so the two agree to the rounding of the sums.
//!
//! B is packed into the AVX-512 kernel's panels of 32 columns (pairs of k interleaved: the layout AMX
//! reads for its second operand), k padded with zeros to whole tiles. Each rayon task packs a block of rows
//! of A as bf16 rows (what a tile of the first operand is) and computes it 32 x 32 at a time: four
//! accumulator tiles, two tiles of A and two of B per 32 values of k, all eight tile registers. The tiles are
//! configured when a task starts and released when it ends (AMX state is per thread).
//!
//! Linux only: a process must ask the kernel for the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`) before its
//! first tile instruction; elsewhere, or where the kernel says no, the AVX-512 kernel runs.

use rayon::prelude::*;

use super::bf16::{self, NR, TileOut};
use super::gemm::{View, ViewMut};

/// Rows (and columns, = NR) of the 2 x 2 tiles computed at once.
const TM: usize = 32;
/// k pairs per tile step: a tile row is 64 bytes, 16 pairs.
const TK: usize = 16;
/// Rows per rayon task.
const MC: usize = 3 * TM;
const _: () = assert!(NR == TM, "a B panel is two tiles wide");

/// Whether this CPU has AMX-BF16 and the operating system lets this process use the tiles (asked once).
pub(crate) fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            let cpu = edx & (1 << 22) != 0 && edx & (1 << 24) != 0;
            cpu && bf16::available() && os_grants_tiles()
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// Asks Linux for the tile data state for this process (all its threads); false on kernels without AMX.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn os_grants_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request with two integer arguments; it changes only which registers the process may use.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// `dst = scale * a b` (or `+=` with `accumulate`) with bf16 operands on AMX tiles. The caller checked the
/// shapes and [`available`].
pub(crate) fn gemm(dst: ViewMut, a: View, b: View, scale: f32, accumulate: bool, threads: usize) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    let k2 = k.div_ceil(2);
    let steps = k2.div_ceil(TK);
    let k2p = steps * TK;
    // Packed A's rows an odd number of cache lines apart: a tile load reads 16 rows, a transposed pack
    // writes a column, and rows a multiple of 4 KiB apart would all fall into one L1 set.
    let a_stride = if steps % 2 == 0 { k2p + TK } else { k2p };
    let packed_b = bf16::pack_b(&b, k2, k2p, threads);
    let row_stride = dst.row_stride;
    let blocks = bf16::row_blocks(dst, MC);
    let run = |(start, block): (usize, &mut [f32]), packed_a: &mut Vec<u32>| {
        let rows = (m - start).min(MC);
        // SAFETY: the caller checked `available()`, which implies the AVX-512 instructions packing uses.
        unsafe { pack_a(&a, start..start + rows, k2, a_stride, packed_a) };
        let mut sums = Sums([0.0; TM * TM]);
        // SAFETY: as above; the tiles are released when `tiles` drops, and nothing in between runs other
        // rayon tasks on this thread (which could reconfigure them).
        let tiles = unsafe { Tiles::configure() };
        for (p, b_panel) in packed_b.chunks(k2p * NR).enumerate() {
            for (q, a_rows) in packed_a.chunks(TM * a_stride).enumerate() {
                let (r0, c0) = (q * TM, p * NR);
                let out =
                    TileOut { rows: (rows - r0).min(TM), cols: (n - c0).min(NR), row_stride, scale, add: accumulate };
                let dst = &mut block[r0 * row_stride + c0..];
                if out.rows == TM && out.cols == NR && scale == 1.0 {
                    // A whole tile group, unscaled: the tiles start from (and are stored to) the destination.
                    tiles.multiply(a_rows, a_stride, b_panel, steps, dst, row_stride, accumulate);
                } else {
                    tiles.multiply(a_rows, a_stride, b_panel, steps, &mut sums.0, TM, false);
                    // SAFETY: AVX-512 (implied by `available()`); the destination holds the tile's rows.
                    unsafe { store(&sums, out, dst) };
                }
            }
        }
    };
    if threads > 1 {
        blocks.into_par_iter().for_each_init(Vec::new, |packed_a, block| run(block, packed_a));
    } else {
        let mut packed_a = Vec::new();
        blocks.into_iter().for_each(|block| run(block, &mut packed_a));
    }
}

/// The 32 x 32 sums of a tile group, row by row, for the groups that are not stored directly (64-byte
/// aligned).
#[repr(C, align(64))]
struct Sums([f32; TM * TM]);

/// Rows `rows` of A (`m x k`) as bf16 rows of pairs, `stride` words apart (zero past `k2`), `rows` rounded up
/// to whole tile groups with zero rows. `out` is reused across the blocks of one product (same `k2` and
/// `stride`): only what a block does not overwrite is cleared.
///
/// # Safety
/// The CPU must have AVX512F, AVX512BW and AVX512-BF16.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512bw,avx512bf16"))]
unsafe fn pack_a(a: &View, rows: std::ops::Range<usize>, k2: usize, stride: usize, out: &mut Vec<u32>) {
    // The pairs past `k2` are never written, so they stay zero; the rows past the block's are cleared.
    out.resize(rows.len().div_ceil(TM) * TM * stride, 0);
    out[rows.len() * stride..].fill(0);
    if a.col_stride == 1 {
        // Rows lie along k: a row's pairs are the tile row.
        for (r, row) in out.chunks_mut(stride).take(rows.len()).enumerate() {
            let start = (rows.start + r) * a.row_stride;
            bf16::line_pairs(&a.data[start..start + a.cols], &mut row[..k2]);
        }
        return;
    }
    // Columns lie along m (a transposed operand, as `g^T` in a weight gradient): for one k pair, sixteen
    // rows from the two source lines per instruction, each word to its row.
    assert_eq!(a.row_stride, 1, "pack_a: a view with no contiguous axis");
    let zeros = [0f32; 16];
    for kp in 0..k2 {
        let (k0, k1) = (2 * kp, 2 * kp + 1);
        let lo = &a.data[k0 * a.col_stride + rows.start..];
        let hi = if k1 < a.cols { &a.data[k1 * a.col_stride + rows.start..] } else { &zeros[..] };
        let mut i = 0;
        #[cfg(target_arch = "x86_64")]
        while i + 16 <= rows.len() {
            let mut words = [0u32; 16];
            let hi = if k1 < a.cols { &hi[i..] } else { hi };
            // SAFETY: this function's instructions; 16 values lie past both starts.
            unsafe { bf16::interleave_pairs(&lo[i..], hi, &mut words) };
            for (g, w) in words.into_iter().enumerate() {
                out[(i + g) * stride + kp] = w;
            }
            i += 16;
        }
        for r in i..rows.len() {
            let h = if k1 < a.cols { hi[r] } else { 0.0 };
            out[r * stride + kp] = bf16::pair(lo[r], h);
        }
    }
}

/// A group's sums into its destination as `out` says.
///
/// # Safety
/// The CPU must have AVX512F; `dst` holds `(out.rows - 1) * out.row_stride + out.cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store(sums: &Sums, out: TileOut, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(out.rows >= 1 && out.rows <= TM && out.cols >= 1 && out.cols <= NR);
    assert!(dst.len() >= (out.rows - 1) * out.row_stride + out.cols);
    let masks = out.masks();
    for (r, row) in sums.0.chunks_exact(TM).take(out.rows).enumerate() {
        // SAFETY: a row is 32 values; `r < out.rows` and `dst` is large enough by the assertions above.
        unsafe {
            let halves = [_mm512_loadu_ps(row.as_ptr()), _mm512_loadu_ps(row.as_ptr().add(16))];
            out.store_row(r, halves, masks, dst);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn store(_sums: &Sums, _out: TileOut, _dst: &mut [f32]) {
    unreachable!("AMX is only used on x86-64")
}

/// The tile registers of this thread, configured as eight 16 x 64-byte tiles: 0-3 the sums (rows 0-15 and
/// 16-31 by columns 0-15 and 16-31), 4-5 A (rows 0-15, 16-31), 6-7 B (columns 0-15, 16-31).
struct Tiles(());

/// The operand of `ldtilecfg`: palette 1, rows and bytes per row of each tile.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

impl Tiles {
    /// Configures this thread's tiles.
    ///
    /// # Safety
    /// [`available`]; no other code may use the tiles on this thread until the value drops.
    unsafe fn configure() -> Tiles {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AMX is available (the caller's contract); `CONFIG` is a valid 64-byte configuration.
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly, preserves_flags));
        }
        Tiles(())
    }

    /// The sums of 32 rows of packed A (`a`, rows `a_stride` words apart) and one B panel over `steps` tile
    /// steps of k, stored as 32 x 32 values into `c` (rows `c_stride` apart); with `add`, added to the
    /// values there.
    #[allow(clippy::too_many_arguments)]
    fn multiply(&self, a: &[u32], a_stride: usize, b: &[u32], steps: usize, c: &mut [f32], c_stride: usize, add: bool) {
        assert!(a.len() >= (TM - 1) * a_stride + steps * TK && a_stride >= steps * TK);
        assert!(b.len() >= steps * TK * NR);
        assert!(c_stride >= NR && c.len() >= (TM - 1) * c_stride + NR);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the tiles are configured (`self` exists); every tile load reads 16 rows of 64 bytes inside
        // `a`, `b` or `c`, and the stores write 32 rows of 128 bytes inside `c`, by the assertions above.
        unsafe {
            use std::arch::asm;
            let top = c.as_mut_ptr();
            let bottom = top.add(16 * c_stride);
            if add {
                asm!(
                    "tileloadd tmm0, [{top} + {stride}*1]",
                    "tileloadd tmm1, [{top} + {stride}*1 + 64]",
                    "tileloadd tmm2, [{bottom} + {stride}*1]",
                    "tileloadd tmm3, [{bottom} + {stride}*1 + 64]",
                    top = in(reg) top,
                    bottom = in(reg) bottom,
                    stride = in(reg) c_stride * 4,
                    options(nostack, readonly, preserves_flags),
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem, preserves_flags)
                );
            }
            for s in 0..steps {
                let a0 = a.as_ptr().add(s * TK);
                let b0 = b.as_ptr().add(s * TK * NR);
                asm!(
                    "tileloadd tmm6, [{b0} + {b_stride}*1]",
                    "tileloadd tmm7, [{b1} + {b_stride}*1]",
                    "tileloadd tmm4, [{a0} + {a_stride}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {a_stride}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a0.add(16 * a_stride),
                    a_stride = in(reg) a_stride * 4,
                    b0 = in(reg) b0,
                    b1 = in(reg) b0.add(16),
                    b_stride = in(reg) NR * 4,
                    options(nostack, readonly, preserves_flags),
                );
            }
            asm!(
                "tilestored [{top} + {stride}*1], tmm0",
                "tilestored [{top} + {stride}*1 + 64], tmm1",
                "tilestored [{bottom} + {stride}*1], tmm2",
                "tilestored [{bottom} + {stride}*1 + 64], tmm3",
                top = in(reg) top,
                bottom = in(reg) bottom,
                stride = in(reg) c_stride * 4,
                options(nostack, preserves_flags),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("AMX is only used on x86-64: {a_stride} {steps} {c_stride} {add} {}", c.len() + a.len() + b.len());
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: releases the tile state `configure` set up on this thread.
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem, preserves_flags));
        }
    }
}
