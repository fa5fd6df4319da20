//! Inference convolution (the Inception feature extractor's): 2-D convolution, bias and ReLU with the
//! output written once, in NCHW. Per image the input is unfolded into columns as Caffe's im2col does (a
//! row per (channel, ky, kx) tap over every output position, filled a slice at a time from the input's
//! rows) and multiplied by the `[c_out, c_in * kh * kw]` weight, which is the weight as it lies. candle's
//! CPU convolution instead copies the input to NHWC on one thread, gathers its columns an element at a
//! time and scatters the product back to NCHW; asymmetric padding (Inception's 1x7 and 7x1 kernels) also
//! cost it a padded copy of the input. A 1x1 stride-1 convolution multiplies the input as it lies.

use candle_core::{Storage, Tensor};
use rayon::prelude::*;

use super::gemm::{Exec, View, ViewMut, gemm};
use super::{f32_slice, fused};
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
    if !(fused(x) && fused(weight) && fused(bias)) {
        return composed(x, weight, bias, stride, padding);
    }
    let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
    let (x_storage, x_layout) = x.storage_and_layout();
    let (w_storage, w_layout) = weight.storage_and_layout();
    let (b_storage, b_layout) = bias.storage_and_layout();
    let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(bs)) = (&*x_storage, &*w_storage, &*b_storage) else {
        unreachable!("fused() admits CPU tensors only")
    };
    let xs = f32_slice(xs, x_layout, "conv2d")?;
    let ws = f32_slice(ws, w_layout, "conv2d")?;
    let bs = f32_slice(bs, b_layout, "conv2d")?;
    let geometry = Geometry { h, w, kh, kw, stride, ph, pw, oh, ow };
    let (k, hw) = (c_in * kh * kw, oh * ow);
    let pointwise = kh == 1 && kw == 1 && stride == 1 && ph == 0 && pw == 0;
    let mut col = if pointwise { Vec::new() } else { vec![0f32; k * hw] };
    let mut out = vec![0f32; n * c_out * hw];
    let exec = Exec::current(rayon::current_num_threads());
    for (image, dst) in xs.chunks_exact(c_in * h * w).zip(out.chunks_exact_mut(c_out * hw)) {
        let columns = if pointwise {
            image
        } else {
            geometry.im2col(image, &mut col);
            &col
        };
        let weights = View::rows(ws, c_out, k, k);
        gemm(ViewMut::rows(dst, c_out, hw, hw), weights, View::rows(columns, k, hw, hw), 1.0, false, exec);
        dst.par_chunks_mut(hw).zip(bs.par_iter()).for_each(|(row, &b)| {
            for v in row {
                *v = (*v + b).max(0.0);
            }
        });
    }
    drop((x_storage, w_storage, b_storage));
    Ok(Tensor::from_vec(out, (n, c_out, oh, ow), x.device())?)
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
            let x = random(&[2, c_in, size, size + 1], i as u64);
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
    fn shapes_that_do_not_fit_are_refused() {
        let x = random(&[1, 3, 5, 5], 0);
        let err = conv2d_bias_relu(&x, &random(&[4, 2, 3, 3], 1), &random(&[4], 2), 1, (0, 0)).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        let err = conv2d_bias_relu(&x, &random(&[4, 3, 7, 7], 1), &random(&[4], 2), 1, (0, 0)).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
