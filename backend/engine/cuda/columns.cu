// Elementwise kernels (tanh-GELU and its gradient, adaLN-Zero's gated residual and its gate) and the
// column sums that make the gradients of broadcast parameters (a bias, adaLN's shift and scale, a gate):
// the CUDA side of the fused CPU ops in src/ops.rs. Column sums are deterministic: each block sums its
// rows in order, and long columns are split into parts summed in order by a second kernel.
#include "common.cuh"

#define REPDIFF_GRID_STRIDE(i, n)                                                     \
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += size_t(gridDim.x) * blockDim.x)

#define REPDIFF_SQRT_2_OVER_PI 0.7978845608f
#define REPDIFF_GELU_C 0.044715f

extern "C" __global__ void repdiff_gelu(const float* __restrict__ x, float* __restrict__ y, size_t n) {
  REPDIFF_GRID_STRIDE(i, n) {
    float v = x[i];
    y[i] = 0.5f * v * (1.f + tanhf(REPDIFF_SQRT_2_OVER_PI * (v + REPDIFF_GELU_C * v * v * v)));
  }
}

// (g, x) -> g gelu'(x)
extern "C" __global__ void repdiff_gelu_grad(const float* __restrict__ g, const float* __restrict__ x,
                                             float* __restrict__ out, size_t n) {
  REPDIFF_GRID_STRIDE(i, n) {
    float v = x[i];
    float t = tanhf(REPDIFF_SQRT_2_OVER_PI * (v + REPDIFF_GELU_C * v * v * v));
    float dt = REPDIFF_SQRT_2_OVER_PI * (1.f + 3.f * REPDIFF_GELU_C * v * v) * (1.f - t * t);
    out[i] = g[i] * (0.5f * (1.f + t) + 0.5f * v * dt);
  }
}

// x + a gate for x, a [B, T, D] and gate [B, D].
extern "C" __global__ void repdiff_gated_residual(const float* __restrict__ x, const float* __restrict__ a,
                                                  const float* __restrict__ gate, float* __restrict__ out, size_t n,
                                                  size_t tokens, size_t d) {
  REPDIFF_GRID_STRIDE(i, n) { out[i] = x[i] + a[i] * gate[(i / (tokens * d)) * d + i % d]; }
}

// g gate, the gradient of the gated branch.
extern "C" __global__ void repdiff_gate(const float* __restrict__ g, const float* __restrict__ gate,
                                        float* __restrict__ out, size_t n, size_t tokens, size_t d) {
  REPDIFF_GRID_STRIDE(i, n) { out[i] = g[i] * gate[(i / (tokens * d)) * d + i % d]; }
}

#define REPDIFF_COLUMN_ROWS 8  // warps per block of repdiff_column_sums, each summing every 8th row

// For `groups` groups of `rows` rows of width d, out[(part groups + group) d + j] = the sum over the part's
// rows of: a (mode 0), a b (mode 1), or a (b - mean) rstd with the row's statistics from repdiff_row_stats
// (mode 2: the gradient of a norm's scale). Grid (ceil(d / 32) groups, parts), 256 threads.
extern "C" __global__ void repdiff_column_sums(const float* __restrict__ a, const float* __restrict__ b,
                                               const float* __restrict__ stats, float* __restrict__ out,
                                               size_t groups, size_t rows, size_t d, size_t parts, int mode) {
  __shared__ float partial[REPDIFF_COLUMN_ROWS][REPDIFF_WARP + 1];
  const size_t column_blocks = (d + REPDIFF_WARP - 1) / REPDIFF_WARP;
  const size_t group = blockIdx.x / column_blocks, part = blockIdx.y;
  const size_t j = (blockIdx.x % column_blocks) * REPDIFF_WARP + lane_index();
  size_t per_part = (rows + parts - 1) / parts;
  size_t begin = part * per_part, end = begin + per_part < rows ? begin + per_part : rows;
  float acc = 0.f;
  if (j < d) {
    for (size_t r = begin + warp_index(); r < end; r += REPDIFF_COLUMN_ROWS) {
      size_t row = group * rows + r;
      float v = a[row * d + j];
      if (mode == 1) v *= b[row * d + j];
      if (mode == 2) v *= (b[row * d + j] - stats[2 * row]) * stats[2 * row + 1];
      acc += v;
    }
  }
  partial[warp_index()][lane_index()] = acc;
  __syncthreads();
  if (warp_index() == 0 && j < d) {
    float sum = 0.f;
    for (int w = 0; w < REPDIFF_COLUMN_ROWS; ++w) sum += partial[w][lane_index()];
    out[(part * groups + group) * d + j] = sum;
  }
}

// out[i] = the sum over p of partials[p n + i], in order.
extern "C" __global__ void repdiff_sum_parts(const float* __restrict__ partials, float* __restrict__ out,
                                             size_t parts, size_t n) {
  REPDIFF_GRID_STRIDE(i, n) {
    float sum = 0.f;
    for (size_t p = 0; p < parts; ++p) sum += partials[p * n + i];
    out[i] = sum;
  }
}
