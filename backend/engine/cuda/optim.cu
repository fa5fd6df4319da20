// The optimiser step on the GPU without a host round trip per parameter: the squared gradient norm as
// per-block partial sums in f64 (fixed chunks, so the same sum on every run), the clipping factor from
// them on the device, then one pass per parameter updating it and its moments (AdamW exactly as
// src/optim.rs's CPU kernel and torch.optim.AdamW), and the EMA of the weights.
#include "common.cuh"

#define OPTIM_THREADS 256
#define OPTIM_CHUNK (OPTIM_THREADS * 16)  // gradient values per partial sum

// partials[b] = the sum of squares of values [b CHUNK, (b + 1) CHUNK) of x. Grid ceil(n / CHUNK), 256 threads.
extern "C" __global__ void repdiff_sum_squares(const float* __restrict__ x, size_t n, double* __restrict__ partials) {
  __shared__ double sums[OPTIM_THREADS];
  const size_t begin = size_t(blockIdx.x) * OPTIM_CHUNK;
  double acc = 0.0;
  for (size_t i = begin + threadIdx.x; i < begin + OPTIM_CHUNK && i < n; i += OPTIM_THREADS) acc += double(x[i]) * x[i];
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = OPTIM_THREADS / 2; stride > 0; stride >>= 1) {
    if (int(threadIdx.x) < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = sums[0];
}

// The global norm (into norm[0]) and the factor that scales the gradients to at most max_norm (into
// factor[0]; 1 when clip is 0 or the norm is within bounds), as torch.nn.utils.clip_grad_norm_. One block.
extern "C" __global__ void repdiff_clip_factor(const double* __restrict__ partials, size_t count, float max_norm,
                                               int clip, float* __restrict__ factor, double* __restrict__ norm) {
  __shared__ double sums[OPTIM_THREADS];
  double acc = 0.0;
  for (size_t i = threadIdx.x; i < count; i += OPTIM_THREADS) acc += partials[i];
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = OPTIM_THREADS / 2; stride > 0; stride >>= 1) {
    if (int(threadIdx.x) < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double total = sqrt(sums[0]);
    const double ratio = double(max_norm) / (total + 1e-6);
    norm[0] = total;
    factor[0] = clip && ratio < 1.0 ? float(ratio) : 1.f;
  }
}

// One AdamW update of every value: the moments, then the parameter from them (torch's order).
extern "C" __global__ void repdiff_adamw(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                                         float* __restrict__ v, size_t n, const float* __restrict__ factor, float beta1,
                                         float beta2, float one_minus_beta1, float one_minus_beta2, float eps,
                                         float decay, float step_size, float inv_bias2_sqrt) {
  const float scale = factor[0];
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float g = grad[i] * scale;
    const float mi = beta1 * m[i] + one_minus_beta1 * g;
    const float vi = beta2 * v[i] + one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = decay * param[i] - step_size * mi / (sqrtf(vi) * inv_bias2_sqrt + eps);
  }
}

// shadow = keep shadow + take param.
extern "C" __global__ void repdiff_ema(float* __restrict__ shadow, const float* __restrict__ param, size_t n, float keep,
                                       float take) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    shadow[i] = keep * shadow[i] + take * param[i];
}
