// What every kernel file includes: the CUDA headers on a GPU build, the host emulation (emulate.h) in the
// tests, and the warp reductions the row kernels share.
#pragma once

#ifdef REPDIFF_EMULATE
#include "emulate.h"
#else
#include <cuda_bf16.h>
#include <mma.h>
#include <stdint.h>
#define REPDIFF_DYNAMIC_SHARED(name) extern __shared__ __align__(128) char name[]
#endif

#define REPDIFF_WARP 32
#define REPDIFF_FULL_MASK 0xffffffffu

__device__ __forceinline__ float repdiff_neg_inf() { return __int_as_float(int(0xff800000u)); }
__device__ __forceinline__ float repdiff_inf() { return __int_as_float(0x7f800000); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(REPDIFF_FULL_MASK, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(REPDIFF_FULL_MASK, v, offset));
  return v;
}

// The warp's index in its block and the lane in the warp (blocks are one-dimensional, whole warps).
__device__ __forceinline__ unsigned warp_index() { return threadIdx.x / REPDIFF_WARP; }
__device__ __forceinline__ unsigned lane_index() { return threadIdx.x % REPDIFF_WARP; }
