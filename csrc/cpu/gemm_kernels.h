// Internal: the ISA-generic GEMM driver and register-tile micro-kernel behind gemm.h.
//
// Included ONLY by the per-ISA translation units (gemm.cpp = scalar, gemm_avx2.cpp,
// gemm_avx512.cpp, and the retrieval_*.cpp kernels), each inside its own namespace and with
// its own "Ops" (vector type + primitive operations). Everything here is a template instantiated
// inside that namespace, so the AVX-512 instantiation can never be picked by the linker for a
// scalar caller.
//
// Scheme (BLIS-like, adapted to row-major C and to the one-fma-chain-per-element contract):
//   * B is packed per (K block, N block) into panels of NR = NV * W columns:
//       panel p, row k: NR consecutive values B(k, p*NR .. p*NR+NR-1), zero padded past N.
//     The packed block (KC x NC) lives in L2; one panel row is NV vector loads.
//   * A is NOT packed: the micro-kernel broadcasts A(i, k) straight from the caller's memory
//     (MR rows x KC values stay in L1 for the whole sweep over the N block).
//   * The micro-kernel holds an MR x NR tile of C in MR * NV vector registers and runs
//       for k in [0, kc): c[i][v] = fma(bcast(A(i,k)), B_panel[k][v], c[i][v])
//     so every element of C is one fma chain over increasing k. K blocks continue the chain from
//     the value stored in C (exact: the store/reload is of the same T value).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__GNUC__)
#define MPX_GEMM_INLINE inline __attribute__((always_inline))
#else
#define MPX_GEMM_INLINE inline
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include <cmath>

// The ISA namespace follows the including TU's compile flags, so each TU gets exactly one set of
// instantiations under its own name (avx512 / avx2 / scalar): no ODR mixing across ISAs.
#if defined(__AVX512F__)
#define MPX_ISA avx512
#elif defined(__AVX2__) && defined(__FMA__)
#define MPX_ISA avx2
#else
#define MPX_ISA scalar
#endif

namespace molphenix {
namespace cpu {
namespace MPX_ISA {

// ---- vector primitives ("Ops"): T, V, W and load/store/fma -------------------------------------
template <typename T_>
struct ScalarOps {
  using T = T_;
  using V = T;
  static constexpr int W = 1;
  static MPX_GEMM_INLINE V zero() { return T(0); }
  static MPX_GEMM_INLINE V set1(T x) { return x; }
  static MPX_GEMM_INLINE V load(const T* p) { return *p; }
  static MPX_GEMM_INLINE V loadu(const T* p) { return *p; }
  static MPX_GEMM_INLINE void storeu(T* p, V v) { *p = v; }
  static MPX_GEMM_INLINE V load_n(const T* p, int) { return *p; }
  static MPX_GEMM_INLINE void store_n(T* p, V v, int) { *p = v; }
  static MPX_GEMM_INLINE V fma(V a, V b, V c) { return std::fma(a, b, c); }
  // epilogue helpers (retrieval): IEEE ops lane-wise, masks as bit sets (bit l = lane l)
  static MPX_GEMM_INLINE V add(V a, V b) { return a + b; }
  static MPX_GEMM_INLINE V sub(V a, V b) { return a - b; }
  static MPX_GEMM_INLINE V mul(V a, V b) { return a * b; }
  static MPX_GEMM_INLINE V max0(V a) { return a > T(0) ? a : T(0); }  // NaN -> 0, like maxps
  static MPX_GEMM_INLINE V neg(V a) { return -a; }
  static MPX_GEMM_INLINE uint32_t ge(V a, V b) { return a >= b ? 1u : 0u; }
  static MPX_GEMM_INLINE uint32_t le(V a, V b) { return a <= b ? 1u : 0u; }
  static MPX_GEMM_INLINE void store_all(T* p, V v) { *p = v; }
};

#if defined(__AVX512F__)
struct OpsF {
  using T = float;
  using V = __m512;
  static constexpr int W = 16;
  static MPX_GEMM_INLINE V zero() { return _mm512_setzero_ps(); }
  static MPX_GEMM_INLINE V set1(T x) { return _mm512_set1_ps(x); }
  static MPX_GEMM_INLINE V load(const T* p) { return _mm512_loadu_ps(p); }
  static MPX_GEMM_INLINE V loadu(const T* p) { return _mm512_loadu_ps(p); }
  static MPX_GEMM_INLINE void storeu(T* p, V v) { _mm512_storeu_ps(p, v); }
  static MPX_GEMM_INLINE __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static MPX_GEMM_INLINE V load_n(const T* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static MPX_GEMM_INLINE void store_n(T* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static MPX_GEMM_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static MPX_GEMM_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
  static MPX_GEMM_INLINE V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static MPX_GEMM_INLINE V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  // max(a, +0) returns the second operand when a is NaN or +-0: a > 0 ? a : +0.
  static MPX_GEMM_INLINE V max0(V a) { return _mm512_max_ps(a, _mm512_setzero_ps()); }
  static MPX_GEMM_INLINE V neg(V a) { return _mm512_sub_ps(_mm512_setzero_ps(), a); }
  static MPX_GEMM_INLINE void store_all(T* p, V v) { _mm512_storeu_ps(p, v); }
  static MPX_GEMM_INLINE uint32_t ge(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static MPX_GEMM_INLINE uint32_t le(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
};
struct OpsD {
  using T = double;
  using V = __m512d;
  static constexpr int W = 8;
  static MPX_GEMM_INLINE V zero() { return _mm512_setzero_pd(); }
  static MPX_GEMM_INLINE V set1(T x) { return _mm512_set1_pd(x); }
  static MPX_GEMM_INLINE V load(const T* p) { return _mm512_loadu_pd(p); }
  static MPX_GEMM_INLINE V loadu(const T* p) { return _mm512_loadu_pd(p); }
  static MPX_GEMM_INLINE void storeu(T* p, V v) { _mm512_storeu_pd(p, v); }
  static MPX_GEMM_INLINE __mmask8 mask(int n) { return static_cast<__mmask8>((1u << n) - 1u); }
  static MPX_GEMM_INLINE V load_n(const T* p, int n) { return _mm512_maskz_loadu_pd(mask(n), p); }
  static MPX_GEMM_INLINE void store_n(T* p, V v, int n) { _mm512_mask_storeu_pd(p, mask(n), v); }
  static MPX_GEMM_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static MPX_GEMM_INLINE V add(V a, V b) { return _mm512_add_pd(a, b); }
  static MPX_GEMM_INLINE V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static MPX_GEMM_INLINE V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  // max(a, +0) returns the second operand when a is NaN or +-0: a > 0 ? a : +0.
  static MPX_GEMM_INLINE V max0(V a) { return _mm512_max_pd(a, _mm512_setzero_pd()); }
  static MPX_GEMM_INLINE V neg(V a) { return _mm512_sub_pd(_mm512_setzero_pd(), a); }
  static MPX_GEMM_INLINE void store_all(T* p, V v) { _mm512_storeu_pd(p, v); }
  static MPX_GEMM_INLINE uint32_t ge(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_GE_OQ); }
  static MPX_GEMM_INLINE uint32_t le(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_LE_OQ); }
};
#elif defined(__AVX2__) && defined(__FMA__)
struct OpsF {
  using T = float;
  using V = __m256;
  static constexpr int W = 8;
  static MPX_GEMM_INLINE V zero() { return _mm256_setzero_ps(); }
  static MPX_GEMM_INLINE V set1(T x) { return _mm256_set1_ps(x); }
  static MPX_GEMM_INLINE V load(const T* p) { return _mm256_loadu_ps(p); }
  static MPX_GEMM_INLINE V loadu(const T* p) { return _mm256_loadu_ps(p); }
  static MPX_GEMM_INLINE void storeu(T* p, V v) { _mm256_storeu_ps(p, v); }
  static MPX_GEMM_INLINE __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static MPX_GEMM_INLINE V load_n(const T* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static MPX_GEMM_INLINE void store_n(T* p, V v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static MPX_GEMM_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static MPX_GEMM_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
  static MPX_GEMM_INLINE V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static MPX_GEMM_INLINE V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  // max(a, +0) returns the second operand when a is NaN or +-0: a > 0 ? a : +0.
  static MPX_GEMM_INLINE V max0(V a) { return _mm256_max_ps(a, _mm256_setzero_ps()); }
  static MPX_GEMM_INLINE V neg(V a) { return _mm256_sub_ps(_mm256_setzero_ps(), a); }
  static MPX_GEMM_INLINE void store_all(T* p, V v) { _mm256_storeu_ps(p, v); }
  static MPX_GEMM_INLINE uint32_t ge(V a, V b) {
    return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)));
  }
  static MPX_GEMM_INLINE uint32_t le(V a, V b) {
    return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LE_OQ)));
  }
};
struct OpsD {
  using T = double;
  using V = __m256d;
  static constexpr int W = 4;
  static MPX_GEMM_INLINE V zero() { return _mm256_setzero_pd(); }
  static MPX_GEMM_INLINE V set1(T x) { return _mm256_set1_pd(x); }
  static MPX_GEMM_INLINE V load(const T* p) { return _mm256_loadu_pd(p); }
  static MPX_GEMM_INLINE V loadu(const T* p) { return _mm256_loadu_pd(p); }
  static MPX_GEMM_INLINE void storeu(T* p, V v) { _mm256_storeu_pd(p, v); }
  static MPX_GEMM_INLINE __m256i mask(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static MPX_GEMM_INLINE V load_n(const T* p, int n) { return _mm256_maskload_pd(p, mask(n)); }
  static MPX_GEMM_INLINE void store_n(T* p, V v, int n) { _mm256_maskstore_pd(p, mask(n), v); }
  static MPX_GEMM_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static MPX_GEMM_INLINE V add(V a, V b) { return _mm256_add_pd(a, b); }
  static MPX_GEMM_INLINE V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static MPX_GEMM_INLINE V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  // max(a, +0) returns the second operand when a is NaN or +-0: a > 0 ? a : +0.
  static MPX_GEMM_INLINE V max0(V a) { return _mm256_max_pd(a, _mm256_setzero_pd()); }
  static MPX_GEMM_INLINE V neg(V a) { return _mm256_sub_pd(_mm256_setzero_pd(), a); }
  static MPX_GEMM_INLINE void store_all(T* p, V v) { _mm256_storeu_pd(p, v); }
  static MPX_GEMM_INLINE uint32_t ge(V a, V b) {
    return static_cast<uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_GE_OQ)));
  }
  static MPX_GEMM_INLINE uint32_t le(V a, V b) {
    return static_cast<uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_LE_OQ)));
  }
};
#endif

// ---- the driver + micro-kernel -----------------------------------------------------------------
template <class O, int MR_, int NV_>
struct GemmKernel {
  using Ops = O;
  using T = typename O::T;
  using V = typename O::V;
  static constexpr int W = O::W;
  static constexpr int MR = MR_;
  static constexpr int NV = NV_;
  static constexpr int NR = NV * W;
  // K block: MR rows x KC values of A (about 12 KiB) stay in L1 during the sweep over N.
  static constexpr int64_t KC = sizeof(T) == 4 ? 256 : 128;
  // N block: the packed KC x NC block of B (512 KiB) stays in L2.
  static constexpr int64_t NC = 512;

  // Pack B(k, j) = B[k * rsb + j * csb], k < kc, j < nc, into panels of NR columns.
  // out must hold panels(nc) * kc * NR values.
  static int64_t panels(int64_t nc) { return (nc + NR - 1) / NR; }
  static void pack_b(int64_t kc, int64_t nc, const T* B, int64_t rsb, int64_t csb, T* out) {
    const int64_t np = panels(nc);
    for (int64_t p = 0; p < np; ++p) {
      T* dst = out + p * kc * NR;
      const int64_t j0 = p * NR;
      const int64_t nj = std::min<int64_t>(NR, nc - j0);
      if (csb == 1) {
        for (int64_t k = 0; k < kc; ++k) {
          const T* src = B + k * rsb + j0;
          T* d = dst + k * NR;
          int64_t j = 0;
          for (; j < nj; ++j) d[j] = src[j];
          for (; j < NR; ++j) d[j] = T(0);
        }
      } else {
        // Transposing pack (B is K-contiguous per column, e.g. the NT layout): walk each source
        // column contiguously; the strided writes stay inside this kc x NR panel (L1/L2).
        for (int64_t j = 0; j < nj; ++j) {
          const T* src = B + (j0 + j) * csb;
          T* d = dst + j;
          if (rsb == 1) {
            for (int64_t k = 0; k < kc; ++k) d[k * NR] = src[k];
          } else {
            for (int64_t k = 0; k < kc; ++k) d[k * NR] = src[k * rsb];
          }
        }
        for (int64_t j = nj; j < NR; ++j)
          for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = T(0);
      }
    }
  }

  // c[MR][NV] += A(0:MR, 0:kc) * Bp(0:kc, 0:NR); A(i, k) = A[i * rsa + k * csa].
  // Rows i >= mr re-read row mr - 1 (valid memory); the caller discards them.
  static MPX_GEMM_INLINE void tile(int64_t kc, const T* A, int64_t rsa, int64_t csa, int mr,
                                   const T* Bp, V (&c)[MR][NV]) {
    const T* a[MR];
    for (int i = 0; i < MR; ++i) a[i] = A + static_cast<int64_t>(i < mr ? i : mr - 1) * rsa;
    if (csa == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        V b[NV];
        for (int v = 0; v < NV; ++v) b[v] = O::load(Bp + k * NR + v * W);
        for (int i = 0; i < MR; ++i) {
          const V ai = O::set1(a[i][k]);
          for (int v = 0; v < NV; ++v) c[i][v] = O::fma(ai, b[v], c[i][v]);
        }
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        V b[NV];
        for (int v = 0; v < NV; ++v) b[v] = O::load(Bp + k * NR + v * W);
        const int64_t off = k * csa;
        for (int i = 0; i < MR; ++i) {
          const V ai = O::set1(a[i][off]);
          for (int v = 0; v < NV; ++v) c[i][v] = O::fma(ai, b[v], c[i][v]);
        }
      }
    }
  }

  static MPX_GEMM_INLINE void zero(V (&c)[MR][NV]) {
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) c[i][v] = O::zero();
  }

  static MPX_GEMM_INLINE void load_c(V (&c)[MR][NV], const T* C, int64_t ldc, int mr, int nr) {
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) {
        const int n = nr - v * W;
        if (i >= mr || n <= 0) c[i][v] = O::zero();
        else if (n >= W) c[i][v] = O::loadu(C + i * ldc + v * W);
        else c[i][v] = O::load_n(C + i * ldc + v * W, n);
      }
  }

  static MPX_GEMM_INLINE void store_c(const V (&c)[MR][NV], T* C, int64_t ldc, int mr, int nr) {
    for (int i = 0; i < MR; ++i) {
      if (i >= mr) break;
      for (int v = 0; v < NV; ++v) {
        const int n = nr - v * W;
        if (n >= W) O::storeu(C + i * ldc + v * W, c[i][v]);
        else if (n > 0) O::store_n(C + i * ldc + v * W, c[i][v], n);
      }
    }
  }

  // C[M,N] (+)= A * B with A(i, k) = A[i*rsa + k*csa], B(k, j) = B[k*rsb + j*csb].
  static void run(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
                  const T* B, int64_t rsb, int64_t csb, T* C, int64_t ldc, bool accumulate) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
      if (!accumulate)
        for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
      return;
    }
    thread_local std::vector<T> buf;
    const int64_t need = panels(std::min(NC, N)) * std::min(KC, K) * NR + 64 / sizeof(T);
    if (static_cast<int64_t>(buf.size()) < need) buf.resize(need);
    // 64-byte aligned panels: one panel row is whole cache lines (no split vector loads).
    T* bp = buf.data();
    while (reinterpret_cast<uintptr_t>(bp) % 64 != 0) ++bp;
    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min(NC, N - jc);
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc);
        pack_b(kc, nc, B + pc * rsb + jc * csb, rsb, csb, bp);
        const bool acc = accumulate || pc > 0;
        for (int64_t ir = 0; ir < M; ir += MR) {
          const int mr = static_cast<int>(std::min<int64_t>(MR, M - ir));
          const T* Ai = A + ir * rsa + pc * csa;
          for (int64_t jr = 0; jr < nc; jr += NR) {
            const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
            T* Cij = C + ir * ldc + jc + jr;
            V c[MR][NV];
            if (acc) load_c(c, Cij, ldc, mr, nr);
            else zero(c);
            tile(kc, Ai, rsa, csa, mr, bp + (jr / NR) * kc * NR, c);
            store_c(c, Cij, ldc, mr, nr);
          }
        }
      }
    }
  }
};

// ---- the tile shape per ISA and type ------------------------------------------------------------
// AVX-512 (32 zmm): 12 x 2 accumulators + 2 B vectors + 1 broadcast.
// AVX2 (16 ymm): 6 x 2 accumulators + 2 B vectors + 1 broadcast.
template <typename T>
struct KernelSel;
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#if defined(__AVX512F__)
template <> struct KernelSel<float> { using type = GemmKernel<OpsF, 12, 2>; };
template <> struct KernelSel<double> { using type = GemmKernel<OpsD, 12, 2>; };
#else
template <> struct KernelSel<float> { using type = GemmKernel<OpsF, 6, 2>; };
template <> struct KernelSel<double> { using type = GemmKernel<OpsD, 6, 2>; };
#endif
#else
template <> struct KernelSel<float> { using type = GemmKernel<ScalarOps<float>, 4, 4>; };
template <> struct KernelSel<double> { using type = GemmKernel<ScalarOps<double>, 4, 4>; };
#endif
template <typename T>
using Kernel = typename KernelSel<T>::type;

// The one-element fma chain (gemm.h's dot_fma) in this ISA.
template <typename T>
inline T dot_fma_chain(const T* a, const T* b, int64_t K) {
  T acc = T(0);
  for (int64_t k = 0; k < K; ++k) acc = std::fma(a[k], b[k], acc);
  return acc;
}

}  // namespace MPX_ISA
}  // namespace cpu
}  // namespace molphenix
