//! Inference convolution (the Inception feature extractor's): 2-D convolution, bias and ReLU with the
//! output written once, in NCHW. Per image the input is unfolded into columns as Caffe's im2col does (a
//! row per (channel, ky, kx) tap over every output position, filled a slice at a time from the input's
//! rows) and multiplied by the `[c_out, c_in * kh * kw]` weight, which is the weight as it lies. candle's
//! CPU convolution instead copies the input to NHWC on one thread, gathers its columns an element at a
//! time and scatters the product back to NCHW; asymmetric padding (Inception's 1x7 and 7x1 kernels) also
//! cost it a padded copy of the input. A 1x1 stride-1 convolution multiplies the input as it lies. With
//! at least an image per thread, each thread convolves its own images with single-threaded products
//! (Inception's later maps are too small to split well). The 3x3 pools are one pass each.

use candle_core::{Storage, Tensor};
use rayon::prelude::*;

use super::gemm::{Exec, View, ViewMut, gemm};
use super::{f32_slice, fused_cpu};
use crate::Result;

/// `relu(conv2d(x, weight) + bias)`: `x` `[n, c_in, h, w]`, `weight` `[c_out, c_in, kh, kw]`, `bias`
/// `[c_out]`, zero padding `padding` (rows, columns) on both sides of each axis.
pub fn conv2d_bias_relu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: (usize, usize),
) -> Result<Tensor> {
    let (n, c_in, h, w) = x.dims4()?;
    let (c_out, weight_c_in, kh, kw) = weight.dims4()?;
    let (ph, pw) = padding;
    if weight_c_in != c_in || bias.dims1()? != c_out || stride == 0 || h + 2 * ph < kh || w + 2 * pw < kw {
        return Err(crate::Error::Data(format!(
            "conv2d: input {:?}, weight {:?}, bias {:?}, stride {stride}, padding {padding:?} do not fit",
            x.dims(),
            weight.dims(),
            bias.dims()
        )));
    }
    let (oh, ow) = ((h + 2 * ph - kh) / stride + 1, (w + 2 * pw - kw) / stride + 1);
    if !(fused_cpu(x) && fused_cpu(weight) && fused_cpu(bias)) {
        return composed(x, weight, bias, stride, padding);
    }
    let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
    let (x_storage, x_layout) = x.storage_and_layout();
    let (w_storage, w_layout) = weight.storage_and_layout();
    let (b_storage, b_layout) = bias.storage_and_layout();
    let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(bs)) = (&*x_storage, &*w_storage, &*b_storage) else {
        unreachable!("fused_cpu() admits CPU tensors only")
    };
    let xs = f32_slice(xs, x_layout, "conv2d")?;
    let ws = f32_slice(ws, w_layout, "conv2d")?;
    let bs = f32_slice(bs, b_layout, "conv2d")?;
    let geometry = Geometry { h, w, kh, kw, stride, ph, pw, oh, ow };
    let (k, hw) = (c_in * kh * kw, oh * ow);
    let pointwise = kh == 1 && kw == 1 && stride == 1 && ph == 0 && pw == 0;
    let mut out = vec![0f32; n * c_out * hw];
    let weights = View::rows(ws, c_out, k, k);
    // One image: its columns (unless pointwise) times the weight, then bias and ReLU.
    let convolve = |image: &[f32], dst: &mut [f32], col: &mut Vec<f32>, exec: Exec| {
        let columns = if pointwise {
            image
        } else {
            col.resize(k * hw, 0.0);
            geometry.im2col(image, col);
            col
        };
        gemm(ViewMut::rows(dst, c_out, hw, hw), weights, View::rows(columns, k, hw, hw), 1.0, false, exec);
        for (row, &b) in dst.chunks_exact_mut(hw).zip(bs) {
            for v in row {
                *v = (*v + b).max(0.0);
            }
        }
    };
    let threads = rayon::current_num_threads();
    let (image_len, out_len) = (c_in * h * w, c_out * hw);
    if n >= threads {
        // An image per thread: each product on one thread, none split into pieces too small to pay.
        let exec = Exec::current(1);
        let images = xs.par_chunks_exact(image_len).zip(out.par_chunks_exact_mut(out_len));
        images.for_each_init(Vec::new, |col, (image, dst)| convolve(image, dst, col, exec));
    } else {
        let (exec, mut col) = (Exec::current(threads), Vec::new());
        for (image, dst) in xs.chunks_exact(image_len).zip(out.chunks_exact_mut(out_len)) {
            convolve(image, dst, &mut col, exec);
        }
    }
    drop((x_storage, w_storage, b_storage));
    Ok(Tensor::from_vec(out, (n, c_out, oh, ow), x.device())?)
}

/// How a 3x3 pool combines its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool3x3 {
    /// The largest input in the window (padding never wins: PyTorch's -inf padding).
    Max,
    /// The mean of the inputs inside the image (`count_include_pad=False`).
    Average,
}

/// A 3x3 pool of `x` `[n, c, h, w]` with `stride` and `padding` on every side, in one pass over the output
/// (candle's composition pads, pools and rescales in five).
pub fn pool_3x3(x: &Tensor, kind: Pool3x3, stride: usize, padding: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if stride == 0 || padding > 1 || h + 2 * padding < 3 || w + 2 * padding < 3 {
        return Err(crate::Error::Data(format!(
            "pool_3x3: input {:?}, stride {stride}, padding {padding} do not fit",
            x.dims()
        )));
    }
    let (oh, ow) = ((h + 2 * padding - 3) / stride + 1, (w + 2 * padding - 3) / stride + 1);
    if !fused_cpu(x) {
        return pool_composed(x, kind, stride, padding);
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { unreachable!("fused_cpu() admits CPU tensors only") };
    let xs = f32_slice(cpu, layout, "pool_3x3")?;
    let mut out = vec![0f32; n * c * oh * ow];
    // The input rows/columns of output i: [i * stride - padding, + 3) inside [0, len).
    let window = |i: usize, len: usize| {
        let start = (i * stride).saturating_sub(padding);
        (start, (i * stride + 3 - padding).min(len))
    };
    out.par_chunks_mut(oh * ow).zip(xs.par_chunks(h * w)).for_each(|(dst, plane)| {
        for (oy, dst_row) in dst.chunks_exact_mut(ow).enumerate() {
            let (y0, y1) = window(oy, h);
            for (ox, v) in dst_row.iter_mut().enumerate() {
                let (x0, x1) = window(ox, w);
                let rows = plane[y0 * w..y1 * w].chunks_exact(w).map(|row| &row[x0..x1]);
                *v = match kind {
                    Pool3x3::Max => rows.flatten().fold(f32::NEG_INFINITY, |m, &a| m.max(a)),
                    Pool3x3::Average => rows.flatten().sum::<f32>() / ((y1 - y0) * (x1 - x0)) as f32,
                };
            }
        }
    });
    drop(storage);
    Ok(Tensor::from_vec(out, (n, c, oh, ow), x.device())?)
}

/// The same with candle's ops.
fn pool_composed(x: &Tensor, kind: Pool3x3, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    match kind {
        Pool3x3::Max => {
            // Borders of the lowest value: candle pads with zeros only.
            let pad = |t: &Tensor, dim: usize| -> Result<Tensor> {
                let mut shape = t.dims().to_vec();
                shape[dim] = padding;
                let border = Tensor::full(f32::MIN, shape, t.device())?.to_dtype(t.dtype())?;
                Ok(Tensor::cat(&[&border, t, &border], dim)?)
            };
            let padded = if padding == 0 { x.clone() } else { pad(&pad(x, 2)?, 3)? };
            Ok(padded.max_pool2d_with_stride(3, stride)?)
        }
        Pool3x3::Average => {
            let padded = x.pad_with_zeros(2, padding, padding)?.pad_with_zeros(3, padding, padding)?;
            let summed = (padded.avg_pool2d_with_stride(3, stride)? * 9.0)?;
            let (oh, ow) = summed.dims4().map(|(_, _, oh, ow)| (oh, ow))?;
            let span = |i: usize, len: usize| {
                let start = (i * stride).saturating_sub(padding);
                ((i * stride + 3 - padding).min(len) - start) as f32
            };
            let counts: Vec<f32> =
                (0..oh).flat_map(|i| (0..ow).map(move |j| 1.0 / (span(i, h) * span(j, w)))).collect();
            Ok(summed.broadcast_mul(&Tensor::from_vec(counts, (1, 1, oh, ow), x.device())?)?)
        }
    }
}

/// The same with candle's ops (CUDA, other dtypes; what the tests compare against).
fn composed(x: &Tensor, weight: &Tensor, bias: &Tensor, stride: usize, padding: (usize, usize)) -> Result<Tensor> {
    // candle pads both spatial dimensions alike: asymmetric padding is added first.
    let (ph, pw) = padding;
    let (x, pad) =
        if ph == pw { (x.clone(), ph) } else { (x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?, 0) };
    let y = x.conv2d(weight, pad, stride, 1, 1)?;
    Ok(y.broadcast_add(&bias.reshape((bias.dim(0)?, 1, 1))?)?.relu()?)
}

/// One convolution's shapes: input size, kernel, stride, padding, output size.
struct Geometry {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    /// Unfolds one image `[c_in, h, w]` into `col` `[c_in * kh * kw, oh * ow]`: row (c, ky, kx) holds input
    /// (c, oy * stride + ky - ph, ox * stride + kx - pw) at column (oy, ox), zero outside the input. Channels
    /// in parallel.
    fn im2col(&self, image: &[f32], col: &mut [f32]) {
        let Geometry { h, w, kh, kw, stride, ph, pw, oh, ow, .. } = *self;
        let hw = oh * ow;
        col.par_chunks_mut(kh * kw * hw).zip(image.par_chunks(h * w)).for_each(|(rows, plane)| {
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = &mut rows[(ky * kw + kx) * hw..][..hw];
                    // The outputs whose input column lies inside: ox * stride + kx - pw in [0, w).
                    let lo = if pw > kx { (pw - kx).div_ceil(stride) } else { 0 }.min(ow);
                    let hi = (w + pw).saturating_sub(kx).div_ceil(stride).clamp(lo, ow);
                    for (oy, out) in row.chunks_exact_mut(ow).enumerate() {
                        let iy = (oy * stride + ky).wrapping_sub(ph);
                        if iy >= h {
                            out.fill(0.0);
                            continue;
                        }
                        let source = &plane[iy * w..][..w];
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        let start = lo * stride + kx - pw;
                        if stride == 1 {
                            out[lo..hi].copy_from_slice(&source[start..start + hi - lo]);
                        } else {
                            for (o, v) in out[lo..hi].iter_mut().enumerate() {
                                *v = source[start + o * stride];
                            }
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n as u64)
            .map(|i| {
                let x = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9)) >> 40;
                x as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn the_fused_convolution_is_candles_for_every_kernel_stride_and_padding_inception_uses() {
        // (c_in, c_out, size, kernel, stride, padding): stem convolutions, 1x1, 3x3 same and valid,
        // stride 2, 5x5, the asymmetric 1x7 / 7x1 / 1x3 / 3x1, and a size that leaves a remainder.
        let cases = [
            (3, 8, 17, (3, 3), 2, (0, 0)),
            (5, 6, 12, (3, 3), 1, (1, 1)),
            (4, 7, 9, (1, 1), 1, (0, 0)),
            (6, 5, 11, (5, 5), 1, (2, 2)),
            (3, 4, 10, (1, 7), 1, (0, 3)),
            (3, 4, 10, (7, 1), 1, (3, 0)),
            (4, 3, 8, (1, 3), 1, (0, 1)),
            (4, 3, 8, (3, 1), 1, (1, 0)),
            (2, 3, 14, (3, 3), 2, (1, 1)),
            (2, 2, 6, (1, 1), 2, (0, 0)),
        ];
        for (i, (c_in, c_out, size, (kh, kw), stride, padding)) in cases.into_iter().enumerate() {
            // One image (split products) or three (an image per thread), alternately.
            let x = random(&[1 + 2 * (i % 2), c_in, size, size + 1], i as u64);
            let weight = random(&[c_out, c_in, kh, kw], 100 + i as u64);
            let bias = random(&[c_out], 200 + i as u64);
            let fused = conv2d_bias_relu(&x, &weight, &bias, stride, padding).unwrap();
            let reference = composed(&x, &weight, &bias, stride, padding).unwrap();
            assert_eq!(fused.dims(), reference.dims(), "case {i}");
            let error = (fused - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(error <= 1e-5 * scale.max(1.0), "case {i}: max error {error} (scale {scale})");
        }
    }

    #[test]
    fn the_fused_pools_are_candles() {
        for (i, (kind, stride, padding)) in [
            (Pool3x3::Max, 2, 0),
            (Pool3x3::Max, 1, 1),
            (Pool3x3::Average, 1, 1),
            (Pool3x3::Average, 2, 0),
            (Pool3x3::Max, 2, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let x = random(&[2, 3, 9, 8], 300 + i as u64);
            let fused = pool_3x3(&x, kind, stride, padding).unwrap();
            let reference = pool_composed(&x, kind, stride, padding).unwrap();
            assert_eq!(fused.dims(), reference.dims(), "case {i}");
            let error = (fused - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(error < 1e-6, "case {i} ({kind:?}, stride {stride}, padding {padding}): max error {error}");
        }
        // Averages exclude the padding: a corner of ones averages to one.
        let ones = Tensor::ones((1, 1, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let avg = pool_3x3(&ones, Pool3x3::Average, 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(avg.iter().all(|&v| (v - 1.0).abs() < 1e-6), "{avg:?}");
        // Max padding never wins over negative inputs.
        let negative = (ones.clone() * -2.0).unwrap();
        let max = pool_3x3(&negative, Pool3x3::Max, 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(max.iter().all(|&v| v == -2.0), "{max:?}");
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let x = random(&[1, 3, 5, 5], 0);
        let err = conv2d_bias_relu(&x, &random(&[4, 2, 3, 3], 1), &random(&[4], 2), 1, (0, 0)).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        let err = conv2d_bias_relu(&x, &random(&[4, 3, 7, 7], 1), &random(&[4], 2), 1, (0, 0)).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
