// Shared building blocks of the molphenix CUDA kernels: one 64 x 64 tile engine used by every op.
//
// Design (docs/design/cuda_kernels.md has the long form):
//  * A block of 256 threads (8 warps) owns one 64 x 64 output tile at a time.
//  * tile_nt()   C[64][64] = A[rows] . B[rows]^T, streamed over K in chunks of 32, zero-padded.
//                bf16/f16: WMMA m16n16k16 (mma.sync) with float accumulators; each warp owns a
//                16 x 32 strip (two 16 x 16 fragments). float/double: SIMT, each thread owns a
//                4 x 4 micro-tile (rows ty + 16 i, cols tx + 16 j) and accumulates with explicit
//                fma in increasing k order. The result lands in shared memory (Acc precision) for
//                the op's epilogue.
//  * tile_update() acc[64][d] += G[64][64] . S[64 rows][d]   (or G^T, for the column owner), in
//                chunks of 64 along d. bf16/f16: G is split into hi + lo halves (G = hi + lo up to
//                2^-16 relative) and both are multiplied, so the gradient keeps ~fp32 accuracy;
//                float/double: SIMT in Acc precision.
//  * Every element of a tile is produced by the same instruction sequence whatever its position,
//    and the k order is fixed, so results are bitwise reproducible run to run. Retrieval relies on
//    this: the target's key is recomputed by the SAME tile call (same row tile, same column tile,
//    same position) as in the counting pass.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "molphenix/common.h"
#include "mma_mainloop.cuh"

namespace molphenix {
namespace cuda {
namespace detail {

constexpr int kBM = 64;         // rows per tile
constexpr int kBN = 64;         // columns per tile
constexpr int kKC = 32;         // k chunk of tile_nt
constexpr int kThreads = 256;   // threads per block (8 warps)
constexpr int kLdC = kBN + 4;   // row stride of Acc tiles in shared memory (elements)
constexpr int kLdH = kKC + 8;   // row stride of 16-bit operand chunks (multiple of 8 for WMMA)
constexpr int kLdS = kBM + 4;   // row stride of transposed SIMT operand chunks
constexpr int kLdG = kBN + 8;   // row stride of 16-bit G tiles and update chunks
constexpr int kDC = 64;         // d chunk of tile_update

template <class T>
struct Traits;
template <>
struct Traits<float> {
  using Acc = float;
  static constexpr bool kMMA = false;
};
template <>
struct Traits<double> {
  using Acc = double;
  static constexpr bool kMMA = false;
};
template <>
struct Traits<__nv_bfloat16> {
  using Acc = float;
  static constexpr bool kMMA = true;
};
template <>
struct Traits<__half> {
  using Acc = float;
  static constexpr bool kMMA = true;
};

// ---- conversions ----------------------------------------------------------------------------
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }

template <class T>
__device__ __forceinline__ T from_acc(float x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <class T>
__device__ __forceinline__ T from_acc(double x);
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }

template <class T>
__device__ __forceinline__ T zero_val() { return from_acc<T>(typename Traits<T>::Acc(0)); }

// Correctly rounded arithmetic that the compiler may not contract into fma: keys that must be
// recomputed bit-identically (retrieval) are built from these.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float fma_acc(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_acc(double a, double b, double c) { return __fma_rn(a, b, c); }

// ---- shared-memory sizing --------------------------------------------------------------------
template <class T>
constexpr size_t nt_operand_bytes() {
  return Traits<T>::kMMA ? size_t(2) * kBM * kLdH * sizeof(T) : size_t(2) * kKC * kLdS * sizeof(T);
}
// kAsync (the fast engine's s2l): two operand buffers, cp.async double buffering.
template <class T, bool kAsync>
constexpr size_t nt_operand_bytes_v() {
  return (kAsync && Traits<T>::kMMA ? 2 : 1) * nt_operand_bytes<T>();
}
template <class T>
constexpr size_t update_operand_bytes() {
  // MMA: one [64][kLdG] chunk of T; SIMT: one [64][kLdC] chunk of Acc.
  return Traits<T>::kMMA ? size_t(kBM) * kLdG * sizeof(T)
                         : size_t(kBM) * kLdC * sizeof(typename Traits<T>::Acc);
}
constexpr size_t cmax(size_t a, size_t b) { return a > b ? a : b; }
constexpr size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// ---- row maps ---------------------------------------------------------------------------------
// A row map is a [64] int64 array in shared memory: global row index of tile row r, or -1 (zero row).
__device__ __forceinline__ void fill_row_map(int64_t* map, int64_t base, int64_t n) {
  if (threadIdx.x < kBM) {
    const int64_t g = base + threadIdx.x;
    map[threadIdx.x] = g < n ? g : -1;
  }
}

// ---- pieces shared by the WMMA paths of tile_nt and tile_nt_3xtf32 ------------------------------
// Warp w owns the 16 x 32 strip at rows wr = (w >> 1) * 16, columns wc = (w & 1) * 32 of the tile:
// two 16 x 16 accumulator fragments acc[0] (columns wc..wc+15) and acc[1] (wc+16..wc+31).

// Stores the two accumulator fragments of this warp into C ([64][kLdC] float, shared) and waits
// for the whole block (the tile engines' closing barrier).
template <class Frag>
__device__ __forceinline__ void store_acc_strip(float* C, int wr, int wc, const Frag (&acc)[2]) {
  using namespace nvcuda;
  wmma::store_matrix_sync(C + wr * kLdC + wc, acc[0], kLdC, wmma::mem_row_major);
  wmma::store_matrix_sync(C + wr * kLdC + wc + 16, acc[1], kLdC, wmma::mem_row_major);
  __syncthreads();
}

// cp.async double buffering over the ceil(K / kKC) k chunks of a tile (the fast engine's s2l):
// issue(c, b) starts the copies of chunk c into operand buffer b (0 or 1); consume(b) multiplies
// buffer b once its copies have landed. Chunk c + 1 is in flight while chunk c is multiplied.
// Called by all threads after a barrier; returns with no copy in flight.
template <class Issue, class Consume>
__device__ __forceinline__ void double_buffered_chunks(int64_t K, Issue&& issue,
                                                       Consume&& consume) {
  const int64_t nch = (K + kKC - 1) / kKC;
  issue(0, 0);
  fast::cp_async_commit();
  for (int64_t c = 0; c < nch; ++c) {
    if (c + 1 < nch) issue(c + 1, static_cast<int>((c + 1) & 1));
    fast::cp_async_commit();
    fast::cp_async_wait<1>();
    __syncthreads();
    consume(static_cast<int>(c & 1));
    __syncthreads();  // buffer c & 1 is refilled at iteration c + 1
  }
  fast::cp_async_wait<0>();
}

// One k chunk (kKC wide) of tile_nt's WMMA path: As, Bs are [64][kLdH] 16-bit operand chunks in
// shared memory (rows of A, rows of B); acc[j] += A[wr..wr+15] . B[wc+16j..wc+16j+15]^T over the
// chunk, in increasing k (two k16 steps).
template <class T>
__device__ __forceinline__ void wmma_chunk(
    const T* As, const T* Bs, int wr, int wc,
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> (&acc)[2]) {
  using namespace nvcuda;
#pragma unroll
  for (int kk = 0; kk < kKC; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
    wmma::load_matrix_sync(a, As + wr * kLdH + kk, kLdH);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
      wmma::load_matrix_sync(b, Bs + (wc + 16 * j) * kLdH + kk, kLdH);
      wmma::mma_sync(acc[j], a, b, acc[j]);
    }
  }
}

// ---- tile_nt ----------------------------------------------------------------------------------
// C[r][c] = sum_k A[amap[r]][k] * B[bmap[c]][k], for k in [0, K). A, B row-major with leading
// dimensions lda, ldb. `ops` is nt_operand_bytes<T>() of shared memory; C is [64][kLdC] Acc in
// shared memory. Must be called by all threads of the block; ends with __syncthreads().
// kAsync (bf16/f16 only; used by the fast engine's s2l): the 16-byte path streams the k chunks
// with cp.async into two operand buffers (chunk c + 1 in flight while chunk c is multiplied);
// `ops` must then hold nt_operand_bytes_v<T, true>(). Same WMMA sequence, same results.
template <class T, bool kAsync = false>
__device__ __forceinline__ void tile_nt(const T* __restrict__ A, int64_t lda, const int64_t* amap,
                                        const T* __restrict__ B, int64_t ldb, const int64_t* bmap,
                                        int64_t K, unsigned char* ops,
                                        typename Traits<T>::Acc* C) {
  using Acc = typename Traits<T>::Acc;
  const int tid = threadIdx.x;
  if constexpr (Traits<T>::kMMA) {
    using namespace nvcuda;
    T* As = reinterpret_cast<T*>(ops);
    T* Bs = As + kBM * kLdH;
    const int warp = tid >> 5;
    const int wr = (warp >> 1) * 16;
    const int wc = (warp & 1) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
    wmma::fill_fragment(acc[0], 0.0f);
    wmma::fill_fragment(acc[1], 0.0f);
    // 16-byte loads when every row start is 16-byte aligned and K is a multiple of 8.
    const bool vec = (K % 8 == 0) && (lda % 8 == 0) && (ldb % 8 == 0) &&
                     (reinterpret_cast<uintptr_t>(A) % 16 == 0) &&
                     (reinterpret_cast<uintptr_t>(B) % 16 == 0);
    if constexpr (kAsync) {
      if (vec) {
        const int r = tid >> 2, kv = (tid & 3) * 8;
        __syncthreads();  // maps written, previous users of `ops` done
        const int64_t ga = amap[r], gb = bmap[r];
        double_buffered_chunks(
            K,
            [&](int64_t c, int b) {
              T* Ab = As + b * 2 * kBM * kLdH;
              T* Bb = Ab + kBM * kLdH;
              const int64_t k = c * kKC + kv;
              const bool va = ga >= 0 && k < K, vb = gb >= 0 && k < K;
              fast::cp_async16(fast::smem_addr(Ab + r * kLdH + kv), va ? A + ga * lda + k : A, va);
              fast::cp_async16(fast::smem_addr(Bb + r * kLdH + kv), vb ? B + gb * ldb + k : B, vb);
            },
            [&](int b) {
              const T* Ab = As + b * 2 * kBM * kLdH;
              wmma_chunk<T>(Ab, Ab + kBM * kLdH, wr, wc, acc);
            });
        store_acc_strip(C, wr, wc, acc);
        return;
      }
    }
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      __syncthreads();  // previous chunk fully consumed
      if (vec) {
        const int r = tid >> 2, kv = (tid & 3) * 8;
        const int64_t k = k0 + kv;
        uint4 va = make_uint4(0, 0, 0, 0), vb = make_uint4(0, 0, 0, 0);
        const int64_t ga = amap[r], gb = bmap[r];
        if (ga >= 0 && k < K) va = *reinterpret_cast<const uint4*>(A + ga * lda + k);
        if (gb >= 0 && k < K) vb = *reinterpret_cast<const uint4*>(B + gb * ldb + k);
        *reinterpret_cast<uint4*>(As + r * kLdH + kv) = va;
        *reinterpret_cast<uint4*>(Bs + r * kLdH + kv) = vb;
      } else {
#pragma unroll
        for (int i = 0; i < (kBM * kKC) / kThreads; ++i) {
          const int idx = tid + i * kThreads;
          const int r = idx / kKC, kk = idx % kKC;
          const int64_t k = k0 + kk;
          const int64_t ga = amap[r], gb = bmap[r];
          As[r * kLdH + kk] = (ga >= 0 && k < K) ? A[ga * lda + k] : zero_val<T>();
          Bs[r * kLdH + kk] = (gb >= 0 && k < K) ? B[gb * ldb + k] : zero_val<T>();
        }
      }
      __syncthreads();
      wmma_chunk<T>(As, Bs, wr, wc, acc);
    }
    store_acc_strip(C, wr, wc, acc);  // Acc is float on this path
  } else {
    static_assert(sizeof(T) == sizeof(Acc), "SIMT path computes in the input precision");
    T* As = reinterpret_cast<T*>(ops);  // [kKC][kLdS], transposed
    T* Bs = As + kKC * kLdS;
    const int tx = tid & 15, ty = tid >> 4;
    Acc acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = Acc(0);
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      __syncthreads();
#pragma unroll
      for (int i = 0; i < (kBM * kKC) / kThreads; ++i) {
        const int idx = tid + i * kThreads;
        const int r = idx / kKC, kk = idx % kKC;
        const int64_t k = k0 + kk;
        const int64_t ga = amap[r], gb = bmap[r];
        As[kk * kLdS + r] = (ga >= 0 && k < K) ? A[ga * lda + k] : T(0);
        Bs[kk * kLdS + r] = (gb >= 0 && k < K) ? B[gb * ldb + k] : T(0);
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kKC; ++kk) {
        Acc a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = As[kk * kLdS + ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = Bs[kk * kLdS + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fma_acc(a[i], b[j], acc[i][j]);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) C[(ty + 16 * i) * kLdC + tx + 16 * j] = acc[i][j];
    __syncthreads();
  }
}

// ---- tile_nt_3xtf32 ---------------------------------------------------------------------------
// Same contract as tile_nt<float> (float inputs, float C), on tensor cores: every operand x is
// split into tf32 hi = tf32(x) and lo = tf32(x - hi), and C += a_lo.b_hi + a_hi.b_lo + a_hi.b_hi
// (the lo.lo term, ~2^-22 relative, is dropped): float32-level accuracy at tensor-core speed
// (the "3xTF32" scheme of CUTLASS). Used for the u . v^T product of s2l_loss with bf16/f16 p, q
// (MOLPHENIX_S2L_U_SIMT=1 forces the SIMT float32 path instead). `ops` needs
// tf32_operand_bytes(). Must be called by all threads; ends with __syncthreads().
constexpr int kLdF = kKC + 4;  // row stride of float operand chunks (multiple of 4)
constexpr size_t tf32_operand_bytes() { return size_t(2) * kBM * kLdF * sizeof(float); }
template <bool kAsync>
constexpr size_t tf32_operand_bytes_v() { return (kAsync ? 2 : 1) * tf32_operand_bytes(); }

// hi = tf32(x), lo = tf32(x - hi) for every element x of a loaded tf32 fragment (x is read from
// `hi` and overwritten by its high part): x = hi + lo up to ~2^-22 relative.
template <class Frag>
__device__ __forceinline__ void split_tf32(Frag& hi, Frag& lo) {
#pragma unroll
  for (int t = 0; t < hi.num_elements; ++t) {
    const float x = hi.x[t];
    const float h = nvcuda::wmma::__float_to_tf32(x);
    hi.x[t] = h;
    lo.x[t] = nvcuda::wmma::__float_to_tf32(x - h);
  }
}

// 3xTF32 on one k chunk (kKC wide, four k8 steps in increasing k) held in As / Bs ([64][kLdF]
// float, shared), accumulating into acc[2]: acc[j] += a_lo.b_hi + a_hi.b_lo + a_hi.b_hi, in that
// order. The only 3xTF32 product: both the synchronous and the cp.async paths of tile_nt_3xtf32
// call it.
__device__ __forceinline__ void tf32x3_chunk(
    const float* As, const float* Bs, int wr, int wc,
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float> (&acc)[2]) {
  using namespace nvcuda;
#pragma unroll
  for (int kk = 0; kk < kKC; kk += 8) {
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> ahi, alo;
    wmma::load_matrix_sync(ahi, As + wr * kLdF + kk, kLdF);
    split_tf32(ahi, alo);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> bhi, blo;
      wmma::load_matrix_sync(bhi, Bs + (wc + 16 * j) * kLdF + kk, kLdF);
      split_tf32(bhi, blo);
      wmma::mma_sync(acc[j], alo, bhi, acc[j]);
      wmma::mma_sync(acc[j], ahi, blo, acc[j]);
      wmma::mma_sync(acc[j], ahi, bhi, acc[j]);
    }
  }
}

template <bool kAsync = false>
__device__ __forceinline__ void tile_nt_3xtf32(const float* __restrict__ A, int64_t lda,
                                               const int64_t* amap, const float* __restrict__ B,
                                               int64_t ldb, const int64_t* bmap, int64_t K,
                                               unsigned char* ops, float* C) {
  using namespace nvcuda;
  const int tid = threadIdx.x;
  float* As = reinterpret_cast<float*>(ops);
  float* Bs = As + kBM * kLdF;
  const int warp = tid >> 5;
  const int wr = (warp >> 1) * 16;
  const int wc = (warp & 1) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  const bool vec = (K % 4 == 0) && (lda % 4 == 0) && (ldb % 4 == 0) &&
                   (reinterpret_cast<uintptr_t>(A) % 16 == 0) &&
                   (reinterpret_cast<uintptr_t>(B) % 16 == 0);
  if constexpr (kAsync) {
    if (vec) {
      __syncthreads();  // maps written, previous users of `ops` done
      double_buffered_chunks(
          K,
          [&](int64_t c, int b) {
            float* Ab = As + b * 2 * kBM * kLdF;
            float* Bb = Ab + kBM * kLdF;
#pragma unroll
            for (int i = 0; i < (kBM * kKC) / (4 * kThreads); ++i) {
              const int v = tid + i * kThreads;
              const int r = v / (kKC / 4), kv = (v % (kKC / 4)) * 4;
              const int64_t k = c * kKC + kv;
              const int64_t ga = amap[r], gb = bmap[r];
              const bool va = ga >= 0 && k < K, vb = gb >= 0 && k < K;
              fast::cp_async16(fast::smem_addr(Ab + r * kLdF + kv), va ? A + ga * lda + k : A, va);
              fast::cp_async16(fast::smem_addr(Bb + r * kLdF + kv), vb ? B + gb * ldb + k : B, vb);
            }
          },
          [&](int b) {
            const float* Ab = As + b * 2 * kBM * kLdF;
            tf32x3_chunk(Ab, Ab + kBM * kLdF, wr, wc, acc);
          });
      store_acc_strip(C, wr, wc, acc);
      return;
    }
  }
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    __syncthreads();
    if (vec) {
#pragma unroll
      for (int i = 0; i < (kBM * kKC) / (4 * kThreads); ++i) {
        const int v = tid + i * kThreads;
        const int r = v / (kKC / 4), kv = (v % (kKC / 4)) * 4;
        const int64_t k = k0 + kv;
        float4 va = make_float4(0.f, 0.f, 0.f, 0.f), vb = va;
        const int64_t ga = amap[r], gb = bmap[r];
        if (ga >= 0 && k < K) va = *reinterpret_cast<const float4*>(A + ga * lda + k);
        if (gb >= 0 && k < K) vb = *reinterpret_cast<const float4*>(B + gb * ldb + k);
        *reinterpret_cast<float4*>(As + r * kLdF + kv) = va;
        *reinterpret_cast<float4*>(Bs + r * kLdF + kv) = vb;
      }
    } else {
#pragma unroll
      for (int i = 0; i < (kBM * kKC) / kThreads; ++i) {
        const int idx = tid + i * kThreads;
        const int r = idx / kKC, kk = idx % kKC;
        const int64_t k = k0 + kk;
        const int64_t ga = amap[r], gb = bmap[r];
        As[r * kLdF + kk] = (ga >= 0 && k < K) ? A[ga * lda + k] : 0.0f;
        Bs[r * kLdF + kk] = (gb >= 0 && k < K) ? B[gb * ldb + k] : 0.0f;
      }
    }
    __syncthreads();
    tf32x3_chunk(As, Bs, wr, wc, acc);
  }
  store_acc_strip(C, wr, wc, acc);
}

// ---- tile_update ------------------------------------------------------------------------------
// For d in [d_begin, d_end) (a multiple of kDC apart on the MMA path):
//   kTrans == false: acc[r][d - acc_d0] += sum_c G[r][c] * S[smap[c]][d]   (row owner:  dP += G.Q)
//   kTrans == true : acc[c][d - acc_d0] += sum_r G[r][c] * S[smap[r]][d]   (col owner:  dQ += G^T.P)
// `acc` points at the owner's first row; ldacc is its row stride. Rows of acc beyond `acc_rows`
// and columns >= `acc_cols` are never touched on the SIMT path (which can therefore write into
// an unpadded output); the MMA path requires a padded buffer (rows multiple of 64, ldacc and
// d range multiples of 64, 32-byte aligned) and touches all of it.
// kAtomic: add into acc with atomicAdd instead of read-modify-write (fast non-deterministic mode).
// G: MMA path -> Ghi, Glo [64][kLdG] of T (G = Ghi + Glo); SIMT path -> Gs [64][kLdC] of Acc.
// `ops` >= update_operand_bytes<T>(); `scratch` (MMA + kAtomic only): [64][kLdC] float.
// Must be called by all threads; ends with __syncthreads().
// kVec (fast engine): the S chunk is read with 16-byte loads when Dsrc, lds % 8 == 0 and S is
// 16-byte aligned (else element loads, as without it). Same values in shared memory.
template <class T, bool kTrans, bool kAtomic, bool kVec = false>
__device__ __forceinline__ void tile_update(typename Traits<T>::Acc* acc, int64_t ldacc,
                                            int64_t acc_rows, int64_t acc_cols,
                                            int64_t d_begin, int64_t d_end, int64_t acc_d0,
                                            const T* __restrict__ S, int64_t lds,
                                            const int64_t* smap, int64_t Dsrc, const T* Ghi,
                                            const T* Glo, const typename Traits<T>::Acc* Gs,
                                            unsigned char* ops, float* scratch) {
  using Acc = typename Traits<T>::Acc;
  const int tid = threadIdx.x;
  if constexpr (Traits<T>::kMMA) {
    using namespace nvcuda;
    T* Cs = reinterpret_cast<T*>(ops);  // [64][kLdG]: S rows (tile k index) x d chunk
    const int warp = tid >> 5;
    const int wr = (warp >> 1) * 16;
    const int wc = (warp & 1) * 32;
    const bool svec = kVec && (Dsrc % 8 == 0) && (lds % 8 == 0) &&
                      (reinterpret_cast<uintptr_t>(S) % 16 == 0);
    for (int64_t d0 = d_begin; d0 < d_end; d0 += kDC) {
      __syncthreads();
      if (svec) {
#pragma unroll
        for (int i = 0; i < (kBM * kDC) / (8 * kThreads); ++i) {
          const int idx = tid + i * kThreads;
          const int r = idx / (kDC / 8), dd = (idx % (kDC / 8)) * 8;
          const int64_t d = d0 + dd;
          const int64_t g = smap[r];
          uint4 v = make_uint4(0, 0, 0, 0);
          if (g >= 0 && d < Dsrc) v = *reinterpret_cast<const uint4*>(S + g * lds + d);
          *reinterpret_cast<uint4*>(Cs + r * kLdG + dd) = v;
        }
      } else {
#pragma unroll
        for (int i = 0; i < (kBM * kDC) / kThreads; ++i) {
          const int idx = tid + i * kThreads;
          const int r = idx / kDC, dd = idx % kDC;
          const int64_t d = d0 + dd;
          const int64_t g = smap[r];
          Cs[r * kLdG + dd] = (g >= 0 && d < Dsrc) ? S[g * lds + d] : zero_val<T>();
        }
      }
      __syncthreads();
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> f[2];
      float* out0 = acc + wr * ldacc + (d0 - acc_d0) + wc;
      if constexpr (kAtomic) {
        wmma::fill_fragment(f[0], 0.0f);
        wmma::fill_fragment(f[1], 0.0f);
      } else {
        wmma::load_matrix_sync(f[0], out0, static_cast<unsigned>(ldacc), wmma::mem_row_major);
        wmma::load_matrix_sync(f[1], out0 + 16, static_cast<unsigned>(ldacc), wmma::mem_row_major);
      }
#pragma unroll
      for (int kk = 0; kk < kBN; kk += 16) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const T* Gp = h == 0 ? Ghi : Glo;
          if constexpr (kTrans) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> a;
            wmma::load_matrix_sync(a, Gp + kk * kLdG + wr, kLdG);
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
              wmma::load_matrix_sync(b, Cs + kk * kLdG + wc + 16 * j, kLdG);
              wmma::mma_sync(f[j], a, b, f[j]);
            }
          } else {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::load_matrix_sync(a, Gp + wr * kLdG + kk, kLdG);
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
              wmma::load_matrix_sync(b, Cs + kk * kLdG + wc + 16 * j, kLdG);
              wmma::mma_sync(f[j], a, b, f[j]);
            }
          }
        }
      }
      if constexpr (kAtomic) {
        wmma::store_matrix_sync(scratch + wr * kLdC + wc, f[0], kLdC, wmma::mem_row_major);
        wmma::store_matrix_sync(scratch + wr * kLdC + wc + 16, f[1], kLdC, wmma::mem_row_major);
        __syncthreads();
#pragma unroll 4
        for (int i = 0; i < (kBM * kDC) / kThreads; ++i) {
          const int idx = tid + i * kThreads;
          const int r = idx / kDC, dd = idx % kDC;
          const float v = scratch[r * kLdC + dd];
          if (r < acc_rows && d0 + dd < acc_cols && v != 0.0f)
            atomicAdd(acc + r * ldacc + (d0 + dd - acc_d0), v);
        }
      } else {
        wmma::store_matrix_sync(out0, f[0], static_cast<unsigned>(ldacc), wmma::mem_row_major);
        wmma::store_matrix_sync(out0 + 16, f[1], static_cast<unsigned>(ldacc), wmma::mem_row_major);
      }
    }
    __syncthreads();
  } else {
    Acc* Cs = reinterpret_cast<Acc*>(ops);  // [64][kLdC]
    const int tx = tid & 15, ty = tid >> 4;
    for (int64_t d0 = d_begin; d0 < d_end; d0 += kDC) {
      __syncthreads();
#pragma unroll
      for (int i = 0; i < (kBM * kDC) / kThreads; ++i) {
        const int idx = tid + i * kThreads;
        const int r = idx / kDC, dd = idx % kDC;
        const int64_t d = d0 + dd;
        const int64_t g = smap[r];
        Cs[r * kLdC + dd] = (g >= 0 && d < Dsrc) ? to_acc(S[g * lds + d]) : Acc(0);
      }
      __syncthreads();
      Acc f[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) f[i][j] = Acc(0);
#pragma unroll 4
      for (int k = 0; k < kBN; ++k) {
        Acc a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
          a[i] = kTrans ? Gs[k * kLdC + ty + 16 * i] : Gs[(ty + 16 * i) * kLdC + k];
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = Cs[k * kLdC + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) f[i][j] = fma_acc(a[i], b[j], f[i][j]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = ty + 16 * i;
        if (r >= acc_rows) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t d = d0 + tx + 16 * j;
          if (d >= acc_cols) continue;
          Acc* o = acc + r * ldacc + (d - acc_d0);
          if constexpr (kAtomic) {
            if (f[i][j] != Acc(0)) atomicAdd(o, f[i][j]);
          } else {
            *o += f[i][j];
          }
        }
      }
    }
    __syncthreads();
  }
}

// Stores g into the G tile(s) of the update: MMA -> hi/lo split in T; SIMT -> Acc tile.
template <class T>
__device__ __forceinline__ void store_g(T* Ghi, T* Glo, typename Traits<T>::Acc* Gs, int r, int c,
                                        typename Traits<T>::Acc g) {
  if constexpr (Traits<T>::kMMA) {
    const T hi = from_acc<T>(g);
    Ghi[r * kLdG + c] = hi;
    Glo[r * kLdG + c] = from_acc<T>(g - to_acc(hi));
  } else {
    Gs[r * kLdC + c] = g;
  }
}

// ---- host helpers -----------------------------------------------------------------------------
inline void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("molphenix CUDA: ") + what + " failed: " +
                             cudaGetErrorString(e));
}
inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string("molphenix CUDA: ") + what + ": " + cudaGetErrorString(e));
  }
}

// Makes the device that owns `ptr` current for the scope (the stream must belong to it too).
class DeviceGuard {
 public:
  explicit DeviceGuard(const void* ptr) {
    check_cuda(cudaGetDevice(&prev_), "cudaGetDevice");
    cudaPointerAttributes attr{};
    if (ptr != nullptr && cudaPointerGetAttributes(&attr, ptr) == cudaSuccess &&
        attr.type == cudaMemoryTypeDevice && attr.device != prev_) {
      check_cuda(cudaSetDevice(attr.device), "cudaSetDevice");
      switched_ = true;
    }
    cudaGetLastError();
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool switched_ = false;
};

inline int sm_count() {
  int dev = 0, n = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "SM count");
  return n;
}
inline int max_optin_smem() {
  int dev = 0, n = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
             "shared memory limit");
  return n;
}

template <class Kernel>
inline void set_smem(Kernel k, size_t bytes, const char* what) {
  if (bytes > 48 * 1024)
    check_cuda(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)),
               what);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Bump allocator over the caller's workspace (256-byte aligned pieces). Used identically by the
// *_workspace_bytes functions (with base == nullptr) and the launchers.
struct Carve {
  unsigned char* base;
  size_t off = 0;
  explicit Carve(void* b) : base(static_cast<unsigned char*>(b)) {}
  template <class U>
  U* take(size_t count) {
    off = align_up(off, 256);
    U* p = base ? reinterpret_cast<U*>(base + off) : nullptr;
    off += count * sizeof(U);
    return p;
  }
};

// Row norms |x_i|^2 in Acc precision, fma in increasing k order (one warp per row).
template <class T>
__global__ void row_sqnorm_kernel(const T* __restrict__ x, int64_t n, int64_t d,
                                  typename Traits<T>::Acc* __restrict__ out) {
  using Acc = typename Traits<T>::Acc;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (row >= n) return;
  Acc s = Acc(0);
  for (int64_t k = lane; k < d; k += 32) {
    const Acc v = to_acc(x[row * d + k]);
    s = fma_acc(v, v, s);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s = add_rn(s, __shfl_xor_sync(0xffffffffu, s, o));
  if (lane == 0) out[row] = s;
}

template <class T>
inline void launch_row_sqnorm(const T* x, int64_t n, int64_t d, typename Traits<T>::Acc* out,
                              cudaStream_t st) {
  if (n <= 0) return;
  const int64_t blocks = ceil_div(n * 32, 256);
  row_sqnorm_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, st>>>(x, n, d, out);
  check_launch("row_sqnorm_kernel");
}

// Dispatch on DType: f(T{}) with T the element type.
template <class F>
inline void dispatch_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat64: f(double{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
    case DType::kFloat16: f(__half{}); break;
    default: throw ValueError("molphenix CUDA: unsupported dtype");
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace molphenix
