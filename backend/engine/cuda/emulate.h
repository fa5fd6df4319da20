// Runs the engine's CUDA C kernels on the host, so that CI (which has no GPU) checks them against the CPU
// ops. Each CUDA thread of a block is a fiber (a ucontext with a stack of its own) on one OS thread:
// `__syncthreads` parks it until every thread of the block that has not returned is parked there too,
// `__syncwarp` and the shuffles do the same for its warp, and the scheduler (kernel-emulator's
// launch.cpp) runs the block's fibers round-robin until they all return. `__shared__` memory is a static
// (blocks run one after another), bf16 a 16-bit value rounded to nearest even, and a WMMA fragment the
// whole 16x16 tile in every lane (each lane computes the full product; the `*_sync` calls are warp
// barriers, as they are collective on a GPU). The same input gives the same interleaving every run.
// What it cannot check is speed, and code that relies on a fragment's element layout (none here).
//
// Included instead of the CUDA headers when REPDIFF_EMULATE is defined (see common.cuh); the launcher
// (backend/engine/kernel-emulator) compiles the kernels with a host C++20 compiler.
#pragma once

#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x = 1, unsigned y = 1, unsigned z = 1) : x(x), y(y), z(z) {}
};

namespace emu {

// Where a fiber stopped.
enum class Parked { Running, Block, Warp, Done };

// The running block, as the kernels see it (launch.cpp keeps the rest).
struct Block {
  char* dynamic_shared = nullptr;
  // The slot each lane of each warp writes for a shuffle.
  uint64_t (*slots)[32] = nullptr;
};

inline dim3 thread_index, block_index;  // the running fiber's (one OS thread runs them all)
inline Block block;
inline dim3 block_dim, grid_dim;

// Parks the running fiber at a barrier of the block or of its warp (launch.cpp defines it).
void park(Parked at);

inline unsigned linear_thread() {
  return thread_index.x + block_dim.x * (thread_index.y + block_dim.y * thread_index.z);
}
inline unsigned lane() { return linear_thread() % 32; }
inline uint64_t* warp_slots() { return block.slots[linear_thread() / 32]; }

}  // namespace emu

#define threadIdx (emu::thread_index)
#define blockIdx (emu::block_index)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::park(emu::Parked::Block); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::park(emu::Parked::Warp); }

// The dynamic shared memory of the running block (`extern __shared__` on a GPU).
#define REPDIFF_DYNAMIC_SHARED(name) char* name = emu::block.dynamic_shared

template <class T>
T emu_shuffle(T value, unsigned source) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  uint64_t* slot = emu::warp_slots();
  unsigned self = emu::lane();
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  slot[self] = bits;
  __syncwarp();
  uint64_t got = slot[source < 32 ? source : self];
  __syncwarp();
  T out;
  std::memcpy(&out, &got, sizeof(T));
  return out;
}
template <class T>
T __shfl_xor_sync(unsigned, T value, int mask) {
  return emu_shuffle(value, emu::lane() ^ unsigned(mask));
}
template <class T>
T __shfl_sync(unsigned, T value, int source) {
  return emu_shuffle(value, unsigned(source) % 32);
}

inline float __int_as_float(int bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }

// bf16: the high half of an f32, rounded to nearest even (as __float2bfloat16).
struct __nv_bfloat16 {
  uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 b) {
  uint32_t u = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// The whole tile in every lane.
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  T x[rows * cols];
};

inline float value_of(float v) { return v; }
inline float value_of(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class Use, int M, int N, int K, class T, class Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same_v<Layout, col_major> ? p[c * ldm + r] : p[r * ldm + c];
  __syncwarp();
}
template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm, layout_t layout) {
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c];
  __syncwarp();
}
template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  // Every lane has loaded what it reads before any lane writes (the call is collective on a GPU).
  __syncwarp();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[r * N + c];
  __syncwarp();
}
template <class Use, int M, int N, int K, class T, class Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T value) {
  for (auto& v : f.x) v = value;
}
template <int M, int N, int K, class T, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int r = 0; r < M; ++r)
    for (int n = 0; n < N; ++n) {
      float acc = c.x[r * N + n];
      for (int k = 0; k < K; ++k) acc += value_of(a.x[r * K + k]) * value_of(b.x[k * N + n]);
      out[r * N + n] = acc;
    }
  std::memcpy(d.x, out, sizeof(out));
}
}  // namespace wmma
}  // namespace nvcuda
