// Row kernels, one warp per row of the last dimension: softmax, layer norm with or without its affine map
// (adaLN's `x̂ (1 + scale) + shift`, LayerNorm's `x̂ weight + bias`), their input gradients, and the per-row
// statistics that the parameter gradients read. The CUDA side of the fused CPU ops in src/ops.rs and
// src/ops/norm.rs, with the same formulas (two-pass mean and variance, as there).
#include "common.cuh"

// The row of this warp, or `rows` when the block has more warps than rows left.
__device__ __forceinline__ size_t warp_row(size_t rows) {
  size_t row = size_t(blockIdx.x) * (blockDim.x / REPDIFF_WARP) + warp_index();
  return row < rows ? row : rows;
}

extern "C" __global__ void repdiff_softmax(const float* __restrict__ x, float* __restrict__ y, size_t rows,
                                           size_t d) {
  size_t row = warp_row(rows);
  if (row == rows) return;  // whole warps leave together; no block barrier follows
  const float* xr = x + row * d;
  float* yr = y + row * d;
  float max = repdiff_neg_inf();
  for (size_t j = lane_index(); j < d; j += REPDIFF_WARP) max = fmaxf(max, xr[j]);
  max = warp_max(max);
  float sum = 0.f;
  for (size_t j = lane_index(); j < d; j += REPDIFF_WARP) sum += expf(xr[j] - max);
  float inv = 1.f / warp_sum(sum);
  for (size_t j = lane_index(); j < d; j += REPDIFF_WARP) yr[j] = expf(xr[j] - max) * inv;
}

// (g, y) -> y * (g - <g, y>)
extern "C" __global__ void repdiff_softmax_grad(const float* __restrict__ g, const float* __restrict__ y,
                                                float* __restrict__ out, size_t rows, size_t d) {
  size_t row = warp_row(rows);
  if (row == rows) return;
  const float* gr = g + row * d;
  const float* yr = y + row * d;
  float dot = 0.f;
  for (size_t j = lane_index(); j < d; j += REPDIFF_WARP) dot += gr[j] * yr[j];
  dot = warp_sum(dot);
  for (size_t j = lane_index(); j < d; j += REPDIFF_WARP) out[row * d + j] = yr[j] * (gr[j] - dot);
}

struct MeanRstd {
  float mean, rstd;
};

__device__ __forceinline__ MeanRstd row_mean_rstd(const float* xr, size_t d, float eps) {
  float sum = 0.f;
  for (size_t j = lane_index(); j < d; j += REPDIFF_WARP) sum += xr[j];
  float mean = warp_sum(sum) / float(d);
  float sq = 0.f;
  for (size_t j = lane_index(); j < d; j += REPDIFF_WARP) sq += (xr[j] - mean) * (xr[j] - mean);
  float var = warp_sum(sq) / float(d);
  return {mean, rsqrtf(var + eps)};
}

// `x̂ (offset + scale) + shift` per row, the parameter row of row r being r / rows_per_param (a sample's
// tokens share one; rows_per_param = rows shares one among all). Null shift and scale: the plain x̂.
extern "C" __global__ void repdiff_norm_affine(const float* __restrict__ x, const float* __restrict__ shift,
                                               const float* __restrict__ scale, float* __restrict__ y, size_t rows,
                                               size_t d, size_t rows_per_param, float offset, float eps) {
  size_t row = warp_row(rows);
  if (row == rows) return;
  const float* xr = x + row * d;
  MeanRstd s = row_mean_rstd(xr, d, eps);
  size_t p = (row / rows_per_param) * d;
  for (size_t j = lane_index(); j < d; j += REPDIFF_WARP) {
    float a = scale ? offset + scale[p + j] : 1.f;
    float b = shift ? shift[p + j] : 0.f;
    y[row * d + j] = (xr[j] - s.mean) * s.rstd * a + b;
  }
}

// The gradient of x: with gy = g (offset + scale), rstd (gy - mean(gy) - x̂ mean(gy x̂)). Null scale: gy = g.
extern "C" __global__ void repdiff_norm_affine_grad_x(const float* __restrict__ g, const float* __restrict__ x,
                                                      const float* __restrict__ scale, float* __restrict__ dx,
                                                      size_t rows, size_t d, size_t rows_per_param, float offset,
                                                      float eps) {
  size_t row = warp_row(rows);
  if (row == rows) return;
  const float* xr = x + row * d;
  const float* gr = g + row * d;
  MeanRstd s = row_mean_rstd(xr, d, eps);
  size_t p = (row / rows_per_param) * d;
  float sum_g = 0.f, sum_gx = 0.f;
  for (size_t j = lane_index(); j < d; j += REPDIFF_WARP) {
    float gy = gr[j] * (scale ? offset + scale[p + j] : 1.f);
    sum_g += gy;
    sum_gx += gy * (xr[j] - s.mean);
  }
  float mean_g = warp_sum(sum_g) / float(d);
  float mean_gx = warp_sum(sum_gx) * s.rstd / float(d);
  for (size_t j = lane_index(); j < d; j += REPDIFF_WARP) {
    float gy = gr[j] * (scale ? offset + scale[p + j] : 1.f);
    dx[row * d + j] = s.rstd * (gy - mean_g - (xr[j] - s.mean) * s.rstd * mean_gx);
  }
}

// stats[2 r], stats[2 r + 1] = the mean and 1 / sqrt(var + eps) of row r.
extern "C" __global__ void repdiff_row_stats(const float* __restrict__ x, float* __restrict__ stats, size_t rows,
                                             size_t d, float eps) {
  size_t row = warp_row(rows);
  if (row == rows) return;
  MeanRstd s = row_mean_rstd(x + row * d, d, eps);
  if (lane_index() == 0) {
    stats[2 * row] = s.mean;
    stats[2 * row + 1] = s.rstd;
  }
}
