// Multi-head self-attention with memory linear in the tokens: the forward keeps only each query's
// log-sum-exp of the scaled scores, and the backward recomputes the weights tile by tile (the
// FlashAttention-2 scheme, with the query and key gradients made by two kernels instead of atomics, so
// the result is deterministic). Reads the packed projection `qkv [N, T, 3D]` (q | k | v, heads side by
// side) and writes `out [N, T, D]`, as src/ops/attention.rs does on the CPU.
//
// A block takes one (item, head) and a tile of 64 queries (or keys), 16 per warp. Operands are staged in
// shared memory as `S`: f32 with plain products (the exact path), or bf16 with tensor-core products
// (WMMA 16x16x16, f32 accumulation): the bf16 path of `MatmulPrecision::Bf16`. Softmax statistics and
// every accumulator stay f32. The head size is zero-padded to a multiple of 16 (`padded`).
//
// Shared memory is carved in the order listed in each kernel, every region rounded up to 128 bytes;
// src/ops/gpu.rs computes the same sizes for the launch.
#include "common.cuh"

#define ATT_TILE 64
#define ATT_WARPS 4
#define ATT_ROWS 16  // rows of a tile per warp
#define ATT_THREADS (ATT_WARPS * REPDIFF_WARP)

template <class S>
struct Storage;
template <>
struct Storage<float> {
  __device__ __forceinline__ static float from(float v) { return v; }
};
template <>
struct Storage<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 from(float v) { return __float2bfloat16(v); }
};

struct Carve {
  char* next;
  template <class T>
  __device__ T* take(size_t count) {
    T* region = reinterpret_cast<T*>(next);
    next += (count * sizeof(T) + 127) / 128 * 128;
    return region;
  }
};

// C[16 x n] = (or +=) A[16 x kdim] B[kdim x n] within one warp, all in shared memory; A and C row-major;
// B row-major (B[k][j] at b[k ldb + j]) or, with B_ROWS_ARE_COLUMNS, given by its rows as columns (B[k][j]
// at b[j ldb + k]: the keys' rows for Q K^T). Plain f32 products: each lane owns every 32nd element of C.
template <bool B_ROWS_ARE_COLUMNS>
__device__ void warp_gemm(float* c, int ldc, const float* a, int lda, const float* b, int ldb, int n, int kdim,
                          bool accumulate) {
  for (int e = lane_index(); e < ATT_ROWS * n; e += REPDIFF_WARP) {
    int r = e / n, j = e % n;
    float acc = accumulate ? c[r * ldc + j] : 0.f;
    for (int k = 0; k < kdim; ++k) acc += a[r * lda + k] * (B_ROWS_ARE_COLUMNS ? b[j * ldb + k] : b[k * ldb + j]);
    c[r * ldc + j] = acc;
  }
}

template <bool COLUMNS>
struct WmmaLayout {
  typedef nvcuda::wmma::row_major type;
};
template <>
struct WmmaLayout<true> {
  typedef nvcuda::wmma::col_major type;
};

// The same with bf16 operands on the tensor cores, f32 accumulation.
template <bool B_ROWS_ARE_COLUMNS>
__device__ void warp_gemm(float* c, int ldc, const __nv_bfloat16* a, int lda, const __nv_bfloat16* b, int ldb, int n,
                          int kdim, bool accumulate) {
  using namespace nvcuda;
  for (int j = 0; j < n; j += 16) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    if (accumulate) {
      wmma::load_matrix_sync(acc, c + j, ldc, wmma::mem_row_major);
    } else {
      wmma::fill_fragment(acc, 0.f);
    }
    for (int k = 0; k < kdim; k += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, typename WmmaLayout<B_ROWS_ARE_COLUMNS>::type> fb;
      wmma::load_matrix_sync(fa, a + k, lda);
      wmma::load_matrix_sync(fb, B_ROWS_ARE_COLUMNS ? b + j * ldb + k : b + k * ldb + j, ldb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c + j, acc, ldc, wmma::mem_row_major);
  }
}

// The shape of the problem, as every kernel gets it.
struct Heads {
  int tokens, heads, head_dim, padded;
  __device__ size_t dim() const { return size_t(heads) * head_dim; }
};

// Rows [first, first + 64) of a head's columns into tile[64][padded] (block-wide), zeros past the tokens
// and the head size. Row t of the source starts at base + t stride.
template <class S>
__device__ void load_rows(S* tile, const float* base, size_t stride, int first, const Heads& h) {
  for (int idx = threadIdx.x; idx < ATT_TILE * h.padded; idx += ATT_THREADS) {
    int r = idx / h.padded, c = idx % h.padded, t = first + r;
    tile[idx] = Storage<S>::from(t < h.tokens && c < h.head_dim ? base[size_t(t) * stride + c] : 0.f);
  }
}

// Forward. Grid (N heads, ceil(T / 64)); writes out and lse [N heads, T] (natural log).
template <class S>
__device__ void attention_forward(const float* qkv, float* out, float* lse, Heads h, float scale) {
  REPDIFF_DYNAMIC_SHARED(shared);
  Carve carve{shared};
  S* q = carve.take<S>(ATT_TILE * h.padded);
  S* k = carve.take<S>(ATT_TILE * h.padded);
  S* v = carve.take<S>(ATT_TILE * h.padded);
  float* scores_all = carve.take<float>(ATT_WARPS * ATT_ROWS * ATT_TILE);
  S* probs_all = carve.take<S>(ATT_WARPS * ATT_ROWS * ATT_TILE);
  float* acc_all = carve.take<float>(ATT_WARPS * ATT_ROWS * h.padded);
  float* max_all = carve.take<float>(ATT_TILE);
  float* sum_all = carve.take<float>(ATT_TILE);
  float* alpha_all = carve.take<float>(ATT_TILE);

  const int w = warp_index(), lane = lane_index();
  float* scores = scores_all + w * ATT_ROWS * ATT_TILE;
  S* probs = probs_all + w * ATT_ROWS * ATT_TILE;
  float* acc = acc_all + w * ATT_ROWS * h.padded;
  float *row_max = max_all + w * ATT_ROWS, *row_sum = sum_all + w * ATT_ROWS, *alpha = alpha_all + w * ATT_ROWS;

  const size_t item = blockIdx.x / h.heads, dim = h.dim(), width = 3 * dim;
  const int head = blockIdx.x % h.heads, first_query = blockIdx.y * ATT_TILE;
  const float* base = qkv + item * h.tokens * width + head * h.head_dim;
  load_rows(q, base, width, first_query, h);
  for (int e = lane; e < ATT_ROWS * h.padded; e += REPDIFF_WARP) acc[e] = 0.f;
  if (lane < ATT_ROWS) {
    row_max[lane] = repdiff_neg_inf();
    row_sum[lane] = 0.f;
  }
  // Scores in base-2 units: exp2 of (score scale log2 e) is exp of (score scale).
  const float scale_log2 = scale * 1.4426950408889634f;
  // Two lanes per row, each with half of the tile's keys.
  const int row = lane % ATT_ROWS, half = lane / ATT_ROWS;
  for (int first_key = 0; first_key < h.tokens; first_key += ATT_TILE) {
    __syncthreads();
    load_rows(k, base + dim, width, first_key, h);
    load_rows(v, base + 2 * dim, width, first_key, h);
    __syncthreads();
    warp_gemm<true>(scores, ATT_TILE, q + w * ATT_ROWS * h.padded, h.padded, k, h.padded, ATT_TILE, h.padded, false);
    __syncwarp();
    const int valid = h.tokens - first_key < ATT_TILE ? h.tokens - first_key : ATT_TILE;
    const float* s = scores + row * ATT_TILE;
    float tile_max = repdiff_neg_inf();
    for (int j = half * 32; j < half * 32 + 32; ++j)
      if (j < valid) tile_max = fmaxf(tile_max, s[j] * scale_log2);
    tile_max = fmaxf(tile_max, __shfl_xor_sync(REPDIFF_FULL_MASK, tile_max, ATT_ROWS));
    const float new_max = fmaxf(row_max[row], tile_max);
    float tile_sum = 0.f;
    for (int j = half * 32; j < half * 32 + 32; ++j) {
      float p = j < valid ? exp2f(s[j] * scale_log2 - new_max) : 0.f;
      probs[row * ATT_TILE + j] = Storage<S>::from(p);
      tile_sum += p;
    }
    tile_sum += __shfl_xor_sync(REPDIFF_FULL_MASK, tile_sum, ATT_ROWS);
    __syncwarp();
    if (half == 0) {
      const float a = exp2f(row_max[row] - new_max);
      row_sum[row] = row_sum[row] * a + tile_sum;
      row_max[row] = new_max;
      alpha[row] = a;
    }
    __syncwarp();
    for (int e = lane; e < ATT_ROWS * h.padded; e += REPDIFF_WARP) acc[e] *= alpha[e / h.padded];
    __syncwarp();
    warp_gemm<false>(acc, h.padded, probs, ATT_TILE, v, h.padded, h.padded, ATT_TILE, true);
    __syncwarp();
  }
  for (int e = lane; e < ATT_ROWS * h.head_dim; e += REPDIFF_WARP) {
    const int r = e / h.head_dim, c = e % h.head_dim, t = first_query + w * ATT_ROWS + r;
    if (t < h.tokens) out[(item * h.tokens + t) * dim + head * h.head_dim + c] = acc[r * h.padded + c] / row_sum[r];
  }
  if (lane < ATT_ROWS) {
    const int t = first_query + w * ATT_ROWS + lane;
    if (t < h.tokens) lse[size_t(blockIdx.x) * h.tokens + t] = row_max[lane] * 0.6931471805599453f + logf(row_sum[lane]);
  }
}

// delta [N heads, T] = the sum over the head's columns of out * g (the softmax backward's row term). One warp
// per (item, token, head), 256 threads per block.
extern "C" __global__ void repdiff_attention_delta(const float* __restrict__ out, const float* __restrict__ g,
                                                   float* __restrict__ delta, size_t rows, int tokens, int heads,
                                                   int head_dim) {
  size_t row = size_t(blockIdx.x) * (blockDim.x / REPDIFF_WARP) + warp_index();
  if (row >= rows) return;  // whole warps leave together
  const size_t item = row / (size_t(tokens) * heads);
  const int t = int((row / heads) % tokens), head = int(row % heads);
  const size_t at = (item * tokens + t) * size_t(heads) * head_dim + size_t(head) * head_dim;
  float sum = 0.f;
  for (int c = lane_index(); c < head_dim; c += REPDIFF_WARP) sum += out[at + c] * g[at + c];
  sum = warp_sum(sum);
  if (lane_index() == 0) delta[(item * heads + head) * tokens + t] = sum;
}

// lse and delta of the block's 64 queries from `first` (lse +inf and delta 0 past the tokens: weight 0).
__device__ void load_query_stats(float* lse_tile, float* delta_tile, const float* lse, const float* delta, int first,
                                 const Heads& h) {
  for (int i = threadIdx.x; i < ATT_TILE; i += ATT_THREADS) {
    const int t = first + i;
    const size_t at = size_t(blockIdx.x) * h.tokens + t;
    lse_tile[i] = t < h.tokens ? lse[at] : repdiff_inf();
    delta_tile[i] = t < h.tokens ? delta[at] : 0.f;
  }
}

// The key and value gradients of a tile of 64 keys (grid (N heads, ceil(T / 64))), into the k and v columns
// of grad [N, T, 3D]: dV = P^T dO, dK = scale dS^T Q with dS = P (dP - delta), dP = dO V^T.
template <class S>
__device__ void attention_grad_kv(const float* qkv, const float* g, const float* lse, const float* delta, float* grad,
                                  Heads h, float scale) {
  REPDIFF_DYNAMIC_SHARED(shared);
  Carve carve{shared};
  S* k = carve.take<S>(ATT_TILE * h.padded);
  S* v = carve.take<S>(ATT_TILE * h.padded);
  S* q = carve.take<S>(ATT_TILE * h.padded);
  S* dout = carve.take<S>(ATT_TILE * h.padded);
  float* lse_tile = carve.take<float>(ATT_TILE);
  float* delta_tile = carve.take<float>(ATT_TILE);
  float* scores_all = carve.take<float>(ATT_WARPS * ATT_ROWS * ATT_TILE);
  float* dprobs_all = carve.take<float>(ATT_WARPS * ATT_ROWS * ATT_TILE);
  S* probs_all = carve.take<S>(ATT_WARPS * ATT_ROWS * ATT_TILE);
  S* dscores_all = carve.take<S>(ATT_WARPS * ATT_ROWS * ATT_TILE);
  float* dk_all = carve.take<float>(ATT_WARPS * ATT_ROWS * h.padded);
  float* dv_all = carve.take<float>(ATT_WARPS * ATT_ROWS * h.padded);

  const int w = warp_index(), lane = lane_index();
  float* scores = scores_all + w * ATT_ROWS * ATT_TILE;
  float* dprobs = dprobs_all + w * ATT_ROWS * ATT_TILE;
  S* probs = probs_all + w * ATT_ROWS * ATT_TILE;
  S* dscores = dscores_all + w * ATT_ROWS * ATT_TILE;
  float* dk = dk_all + w * ATT_ROWS * h.padded;
  float* dv = dv_all + w * ATT_ROWS * h.padded;

  const size_t item = blockIdx.x / h.heads, dim = h.dim(), width = 3 * dim;
  const int head = blockIdx.x % h.heads, first_key = blockIdx.y * ATT_TILE;
  const float* base = qkv + item * h.tokens * width + head * h.head_dim;
  const float* g_base = g + item * h.tokens * dim + head * h.head_dim;
  load_rows(k, base + dim, width, first_key, h);
  load_rows(v, base + 2 * dim, width, first_key, h);
  for (int e = lane; e < ATT_ROWS * h.padded; e += REPDIFF_WARP) dk[e] = dv[e] = 0.f;
  const S* my_k = k + w * ATT_ROWS * h.padded;
  const S* my_v = v + w * ATT_ROWS * h.padded;
  for (int first_query = 0; first_query < h.tokens; first_query += ATT_TILE) {
    __syncthreads();
    load_rows(q, base, width, first_query, h);
    load_rows(dout, g_base, dim, first_query, h);
    load_query_stats(lse_tile, delta_tile, lse, delta, first_query, h);
    __syncthreads();
    // S^T and dP^T of this warp's keys against the tile's queries: [16 keys, 64 queries].
    warp_gemm<true>(scores, ATT_TILE, my_k, h.padded, q, h.padded, ATT_TILE, h.padded, false);
    warp_gemm<true>(dprobs, ATT_TILE, my_v, h.padded, dout, h.padded, ATT_TILE, h.padded, false);
    __syncwarp();
    for (int e = lane; e < ATT_ROWS * ATT_TILE; e += REPDIFF_WARP) {
      const int r = e / ATT_TILE, c = e % ATT_TILE;
      const bool key_valid = first_key + w * ATT_ROWS + r < h.tokens;
      const float p = key_valid ? expf(scores[e] * scale - lse_tile[c]) : 0.f;
      probs[e] = Storage<S>::from(p);
      dscores[e] = Storage<S>::from(p * (dprobs[e] - delta_tile[c]));
    }
    __syncwarp();
    warp_gemm<false>(dv, h.padded, probs, ATT_TILE, dout, h.padded, h.padded, ATT_TILE, true);
    warp_gemm<false>(dk, h.padded, dscores, ATT_TILE, q, h.padded, h.padded, ATT_TILE, true);
    __syncwarp();
  }
  for (int e = lane; e < ATT_ROWS * h.head_dim; e += REPDIFF_WARP) {
    const int r = e / h.head_dim, c = e % h.head_dim, t = first_key + w * ATT_ROWS + r;
    if (t < h.tokens) {
      float* row = grad + (item * h.tokens + t) * width + head * h.head_dim + c;
      row[dim] = dk[r * h.padded + c] * scale;
      row[2 * dim] = dv[r * h.padded + c];
    }
  }
}

// The query gradients of a tile of 64 queries (grid (N heads, ceil(T / 64))), into the q columns of grad:
// dQ = scale dS K.
template <class S>
__device__ void attention_grad_q(const float* qkv, const float* g, const float* lse, const float* delta, float* grad,
                                 Heads h, float scale) {
  REPDIFF_DYNAMIC_SHARED(shared);
  Carve carve{shared};
  S* q = carve.take<S>(ATT_TILE * h.padded);
  S* dout = carve.take<S>(ATT_TILE * h.padded);
  S* k = carve.take<S>(ATT_TILE * h.padded);
  S* v = carve.take<S>(ATT_TILE * h.padded);
  float* lse_tile = carve.take<float>(ATT_TILE);
  float* delta_tile = carve.take<float>(ATT_TILE);
  float* scores_all = carve.take<float>(ATT_WARPS * ATT_ROWS * ATT_TILE);
  float* dprobs_all = carve.take<float>(ATT_WARPS * ATT_ROWS * ATT_TILE);
  S* dscores_all = carve.take<S>(ATT_WARPS * ATT_ROWS * ATT_TILE);
  float* dq_all = carve.take<float>(ATT_WARPS * ATT_ROWS * h.padded);

  const int w = warp_index(), lane = lane_index();
  float* scores = scores_all + w * ATT_ROWS * ATT_TILE;
  float* dprobs = dprobs_all + w * ATT_ROWS * ATT_TILE;
  S* dscores = dscores_all + w * ATT_ROWS * ATT_TILE;
  float* dq = dq_all + w * ATT_ROWS * h.padded;

  const size_t item = blockIdx.x / h.heads, dim = h.dim(), width = 3 * dim;
  const int head = blockIdx.x % h.heads, first_query = blockIdx.y * ATT_TILE;
  const float* base = qkv + item * h.tokens * width + head * h.head_dim;
  const float* g_base = g + item * h.tokens * dim + head * h.head_dim;
  load_rows(q, base, width, first_query, h);
  load_rows(dout, g_base, dim, first_query, h);
  load_query_stats(lse_tile, delta_tile, lse, delta, first_query, h);
  for (int e = lane; e < ATT_ROWS * h.padded; e += REPDIFF_WARP) dq[e] = 0.f;
  const S* my_q = q + w * ATT_ROWS * h.padded;
  const S* my_dout = dout + w * ATT_ROWS * h.padded;
  for (int first_key = 0; first_key < h.tokens; first_key += ATT_TILE) {
    __syncthreads();
    load_rows(k, base + dim, width, first_key, h);
    load_rows(v, base + 2 * dim, width, first_key, h);
    __syncthreads();
    warp_gemm<true>(scores, ATT_TILE, my_q, h.padded, k, h.padded, ATT_TILE, h.padded, false);
    warp_gemm<true>(dprobs, ATT_TILE, my_dout, h.padded, v, h.padded, ATT_TILE, h.padded, false);
    __syncwarp();
    for (int e = lane; e < ATT_ROWS * ATT_TILE; e += REPDIFF_WARP) {
      const int r = e / ATT_TILE, c = e % ATT_TILE, query = w * ATT_ROWS + r;
      const float p = first_key + c < h.tokens ? expf(scores[e] * scale - lse_tile[query]) : 0.f;
      dscores[e] = Storage<S>::from(p * (dprobs[e] - delta_tile[query]));
    }
    __syncwarp();
    warp_gemm<false>(dq, h.padded, dscores, ATT_TILE, k, h.padded, h.padded, ATT_TILE, true);
    __syncwarp();
  }
  for (int e = lane; e < ATT_ROWS * h.head_dim; e += REPDIFF_WARP) {
    const int r = e / h.head_dim, c = e % h.head_dim, t = first_query + w * ATT_ROWS + r;
    if (t < h.tokens) grad[(item * h.tokens + t) * width + head * h.head_dim + c] = dq[r * h.padded + c] * scale;
  }
}

#define REPDIFF_ATTENTION_KERNELS(suffix, S)                                                                       \
  extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                                        \
      repdiff_attention_fwd_##suffix(const float* __restrict__ qkv, float* __restrict__ out, float* __restrict__ lse, \
                                     int tokens, int heads, int head_dim, int padded, float scale) {              \
    attention_forward<S>(qkv, out, lse, Heads{tokens, heads, head_dim, padded}, scale);                            \
  }                                                                                                                \
  extern "C" __global__ void __launch_bounds__(ATT_THREADS) repdiff_attention_grad_kv_##suffix(                    \
      const float* __restrict__ qkv, const float* __restrict__ g, const float* __restrict__ lse,                   \
      const float* __restrict__ delta, float* __restrict__ grad, int tokens, int heads, int head_dim, int padded,   \
      float scale) {                                                                                               \
    attention_grad_kv<S>(qkv, g, lse, delta, grad, Heads{tokens, heads, head_dim, padded}, scale);                 \
  }                                                                                                                \
  extern "C" __global__ void __launch_bounds__(ATT_THREADS) repdiff_attention_grad_q_##suffix(                     \
      const float* __restrict__ qkv, const float* __restrict__ g, const float* __restrict__ lse,                   \
      const float* __restrict__ delta, float* __restrict__ grad, int tokens, int heads, int head_dim, int padded,   \
      float scale) {                                                                                               \
    attention_grad_q<S>(qkv, g, lse, delta, grad, Heads{tokens, heads, head_dim, padded}, scale);                  \
  }

REPDIFF_ATTENTION_KERNELS(f32, float)
REPDIFF_ATTENTION_KERNELS(bf16, __nv_bfloat16)
