// Fast tensor-core mainloop for bf16 / f16 (Ampere and Hopper, sm_80+):
//
//   acc[128 x 128] (float) = A[m0 : m0 + 128, 0 : K] . B[n0 : n0 + 128, 0 : K]^T
//
// A and B are row-major with K contiguous ([rows, K], leading dimensions lda, ldb in elements).
// * Block: 256 threads = 8 warps as 2 (rows) x 4 (columns); warp tile 64 x 32; per warp 4 x 4
//   `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}` per 16-wide k step (inline PTX).
// * Shared memory: kStages (4) stages of A [128][32] and B [128][32] 16-bit elements (64-byte
//   rows), filled with 16-byte `cp.async.cg.shared.global` copies (zero-fill predication for rows
//   >= M / N and for k >= K), read with `ldmatrix.sync.aligned.x4`. XOR swizzle: the 16-byte chunk
//   c of row r lives at chunk c ^ ((r >> 1) & 3), so the 8 row addresses of every ldmatrix phase
//   fall into 8 distinct 16-byte bank groups (no conflicts).
// * Requirements (checked by `fast_ok` on the host): K % 8 == 0, lda % 8 == 0, ldb % 8 == 0, A and
//   B 16-byte aligned. Callers fall back to the simple engine (tile.cuh) otherwise.
// * Accumulator layout (the mma m16n8 C fragment): acc[mi][ni][e] of a thread with lane l in warp
//   w is element (row, col) of the 128 x 128 tile with
//       row = (w >> 2) * 64 + mi * 16 + (l >> 2) + (e >= 2 ? 8 : 0)
//       col = (w & 3) * 32 + ni * 8 + 2 * (l & 3) + (e & 1).
//   `frag_row` / `frag_col` compute them.
// * Determinism / position independence: the value of acc for tile element (r, c) is produced by
//   the same instruction sequence (same k order: k tiles ascending, two k16 steps each, one mma per
//   step) whatever the tile's position in the grid, because every block runs the same code on its
//   own tile. Retrieval nevertheless recomputes a target's key with the SAME tile coordinates and
//   the same thread / register, so it does not even rely on tensor-core results being independent
//   of the position inside the tile.
// * Pipelining across tiles: `prologue()` issues the first kStages - 1 k tiles of a tile;
//   `compute()` consumes them and ends with __syncthreads() (all shared stages are free again), so a
//   caller can issue the next tile's prologue BEFORE running its register-only epilogue on the
//   current accumulators (loads overlap the epilogue).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "molphenix/options.h"

namespace molphenix {
namespace cuda {
namespace fast {

constexpr int kBM = 128;
constexpr int kBN = 128;
constexpr int kBK = 32;
constexpr int kStages = 4;
constexpr int kThreads = 256;
constexpr int kStageBytes = (kBM + kBN) * kBK * 2;           // 16 KiB
constexpr size_t kSmemBytes = size_t(kStages) * kStageBytes;  // 64 KiB

template <class T>
struct IsMMA16 {
  static constexpr bool value = false;
};
template <>
struct IsMMA16<__nv_bfloat16> {
  static constexpr bool value = true;
};
template <>
struct IsMMA16<__half> {
  static constexpr bool value = true;
};

// Host: may the fast mainloop read these operands?
inline bool fast_ok(const void* A, int64_t lda, const void* B, int64_t ldb, int64_t K) {
  return K > 0 && K % 8 == 0 && lda % 8 == 0 && ldb % 8 == 0 &&
         reinterpret_cast<uintptr_t>(A) % 16 == 0 && reinterpret_cast<uintptr_t>(B) % 16 == 0;
}

// Host: the run-time setting cuda_mainloop (molphenix.set_options(cuda_mainloop="simple")) selects
// the validated 64 x 64 WMMA engine; "fast" (the default) the fast mainloop for bf16 / f16. Read at
// every launch, so a test can switch it between calls.
inline bool fast_enabled() { return runtime_options().cuda_mainloop == 0; }

__device__ __forceinline__ int frag_row(int mi, int e) {
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  return (w >> 2) * 64 + mi * 16 + (l >> 2) + (e >= 2 ? 8 : 0);
}
__device__ __forceinline__ int frag_col(int ni, int e) {
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  return (w & 3) * 32 + ni * 8 + 2 * (l & 3) + (e & 1);
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Byte offset of 16-byte chunk `c` (0..3) of row `r` in a [rows][32] 16-bit tile.
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return static_cast<uint32_t>(r * 64 + ((c ^ ((r >> 1) & 3)) << 4));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;  // src-size 0: the 16 bytes are zero-filled, nothing is read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                            uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

template <class T>
__device__ __forceinline__ void mma16816(float* d, const uint32_t* a, const uint32_t* b);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float* d, const uint32_t* a,
                                                        const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float* d, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Operands of one tile: rows [m0, m0 + 128) of A (valid below M), rows [n0, n0 + 128) of B (valid
// below N), k in [0, K).
template <class T>
struct TileOps {
  const T* A;
  int64_t lda, m0, M;
  const T* B;
  int64_t ldb, n0, N;
  int64_t K;
};

template <class T>
struct Mainloop {
  unsigned char* smem;  // kSmemBytes, 128-byte aligned

  // Issues the cp.async copies of k tile `kt` into stage `s` (one commit group per call site).
  __device__ __forceinline__ void load_stage(const TileOps<T>& op, int s, int64_t kt) const {
    const uint32_t base = smem_addr(smem + s * kStageBytes);
    const int tid = threadIdx.x;
    const int64_t k0 = kt * kBK;
#pragma unroll
    for (int it = 0; it < 2; ++it) {
      const int idx = tid + it * kThreads;  // 0..511
      const int r = idx >> 2, c = idx & 3;
      const int64_t k = k0 + c * 8;
      const bool kin = k < op.K;  // K % 8 == 0: a chunk is wholly in or out
      {
        const int64_t g = op.m0 + r;
        const bool v = kin && g < op.M;
        const T* src = v ? op.A + g * op.lda + k : op.A;
        cp_async16(base + swz(r, c), src, v);
      }
      {
        const int64_t g = op.n0 + r;
        const bool v = kin && g < op.N;
        const T* src = v ? op.B + g * op.ldb + k : op.B;
        cp_async16(base + kBM * 64 + swz(r, c), src, v);
      }
    }
  }

  __device__ __forceinline__ void prologue(const TileOps<T>& op) const {
    const int64_t KT = (op.K + kBK - 1) / kBK;
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < KT) load_stage(op, s, s);
      cp_async_commit();
    }
  }

  // acc = A_tile . B_tile^T (overwrites acc). The prologue for `op` must have been issued (and no
  // other cp.async group after it). Ends with __syncthreads(): shared stages are free.
  __device__ __forceinline__ void compute(const TileOps<T>& op, float (&acc)[4][4][4]) const {
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
    const int64_t KT = (op.K + kBK - 1) / kBK;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
    // ldmatrix row / chunk of this lane. A (x4 = rows 0-15 x k 0-15 of one m16 tile): lane l
    // addresses row l & 15, k chunk (l >> 4). B (x4 = two n8 tiles x k 0-15): row (l & 7) +
    // ((l >> 4) << 3), k chunk (l >> 3) & 1.
    const int a_row = wm + (lane & 15), a_ch = lane >> 4;
    const int b_row = wn + (lane & 7) + ((lane >> 4) << 3), b_ch = (lane >> 3) & 1;
    for (int64_t kt = 0; kt < KT; ++kt) {
      cp_async_wait<kStages - 2>();
      __syncthreads();  // stage kt % S is visible to all; stage (kt - 1) % S is consumed
      {
        const int64_t nk = kt + kStages - 1;
        if (nk < KT) load_stage(op, static_cast<int>(nk % kStages), nk);
        cp_async_commit();
      }
      const uint32_t sa = smem_addr(smem + static_cast<int>(kt % kStages) * kStageBytes);
      const uint32_t sb = sa + kBM * 64;
#pragma unroll
      for (int ks = 0; ks < 2; ++ks) {
        uint32_t af[4][4], bf[4][2];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
          ldmatrix_x4(sa + swz(a_row + mi * 16, ks * 2 + a_ch), af[mi][0], af[mi][1], af[mi][2],
                      af[mi][3]);
#pragma unroll
        for (int nj = 0; nj < 2; ++nj)
          ldmatrix_x4(sb + swz(b_row + nj * 16, ks * 2 + b_ch), bf[2 * nj][0], bf[2 * nj][1],
                      bf[2 * nj + 1][0], bf[2 * nj + 1][1]);
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) mma16816<T>(acc[mi][ni], af[mi], bf[ni]);
      }
    }
    cp_async_wait<0>();
    __syncthreads();
  }
};

}  // namespace fast
}  // namespace cuda
}  // namespace molphenix
