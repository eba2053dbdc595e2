// Internal: SIMD vector "ops" types and the transcendental functions of the CPU tile epilogues
// (s2l_loss, arctan_l2_similarity): exp on (-inf, 0], log1p on [0, 1], atan on [0, inf).
//
// Included by the scalar TU (s2l_loss.cpp, arctan_l2_similarity.cpp) and by the per-ISA TUs
// (*_avx2.cpp, *_avx512.cpp, compiled with those flags). Everything lives in an unnamed namespace,
// so each TU gets its own copy: an AVX-512 instantiation can never be picked by the linker for a
// caller in the baseline TU (the classic ODR trap with inline functions and -m flags).
//
// Each ops type O provides: T (element), V (vector), M (lane mask), W (lanes), Acc (a float64
// accumulator of W lanes), and static load/store (full and first-n lanes), arithmetic, fma,
// compares, select, any, round-to-nearest, scale2 (x * 2^n for integral n), and the double
// accumulation helpers. The scalar ops (W = 1) use libm for the transcendental functions; the
// vector ops use the polynomials below.
//
// Accuracy of the polynomial versions: a few ulp against libm in float64 / long double for
// exp_nonpos, log1p_01 and atan_nonneg (float and double); the measured errors are not logged.
// Polynomials are Taylor series on short reduced intervals (coefficients are exact rationals
// rounded to T), with enough terms that truncation is far below half an ulp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) || defined(__AVX512F__)
// GCC 12 reports false "may be used uninitialized" inside its own AVX-512 intrinsics
// (_mm512_undefined_ps in the pass-through operand) once they are inlined; silence it for the
// TUs that include this header (the diagnostic points into immintrin.h, so it must precede it).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

#if defined(__GNUC__)
#define MPX_SIMD_INLINE inline __attribute__((always_inline))
#else
#define MPX_SIMD_INLINE inline
#endif

namespace molphenix {
namespace cpu {
namespace {  // NOLINT: internal linkage on purpose (see the file comment)
namespace simd {

// ---------------------------------------------------------------------------------------------
// Scalar ops (baseline x86-64; any architecture). Transcendentals from libm.
// ---------------------------------------------------------------------------------------------
template <typename T_>
struct ScalarOps {
  using T = T_;
  using V = T;
  using M = bool;
  using Acc = double;
  static constexpr int W = 1;
  static constexpr bool kLibm = true;
  static MPX_SIMD_INLINE V load(const T* p) { return *p; }
  static MPX_SIMD_INLINE V load_n(const T* p, int) { return *p; }
  static MPX_SIMD_INLINE void store(T* p, V v) { *p = v; }
  static MPX_SIMD_INLINE void store_n(T* p, V v, int) { *p = v; }
  static MPX_SIMD_INLINE V set1(T x) { return x; }
  static MPX_SIMD_INLINE V iota() { return T(0); }
  static MPX_SIMD_INLINE V add(V a, V b) { return a + b; }
  static MPX_SIMD_INLINE V sub(V a, V b) { return a - b; }
  static MPX_SIMD_INLINE V mul(V a, V b) { return a * b; }
  static MPX_SIMD_INLINE V div(V a, V b) { return a / b; }
  static MPX_SIMD_INLINE V max(V a, V b) { return a > b ? a : b; }
  static MPX_SIMD_INLINE V min(V a, V b) { return a < b ? a : b; }
  static MPX_SIMD_INLINE V abs(V a) { return std::fabs(a); }
  // No hardware fma on baseline x86-64: two roundings (std::fma would be a slow libm call).
  static MPX_SIMD_INLINE V fmadd(V a, V b, V c) { return a * b + c; }
  static MPX_SIMD_INLINE V fnmadd(V a, V b, V c) { return c - a * b; }
  static MPX_SIMD_INLINE M lt(V a, V b) { return a < b; }
  static MPX_SIMD_INLINE M le(V a, V b) { return a <= b; }
  static MPX_SIMD_INLINE M gt(V a, V b) { return a > b; }
  static MPX_SIMD_INLINE M ge(V a, V b) { return a >= b; }
  static MPX_SIMD_INLINE M eq(V a, V b) { return a == b; }
  static MPX_SIMD_INLINE M mand(M a, M b) { return a && b; }
  static MPX_SIMD_INLINE M mor(M a, M b) { return a || b; }
  static MPX_SIMD_INLINE M valid(int n) { return n > 0; }
  static MPX_SIMD_INLINE M none() { return false; }
  static MPX_SIMD_INLINE bool any(M m) { return m; }
  static MPX_SIMD_INLINE V select(M m, V a, V b) { return m ? a : b; }
  static MPX_SIMD_INLINE V zero_unless(M m, V a) { return m ? a : T(0); }
  static MPX_SIMD_INLINE Acc acc_zero() { return 0.0; }
  static MPX_SIMD_INLINE Acc acc_add(Acc a, V v) { return a + static_cast<double>(v); }
  static MPX_SIMD_INLINE double acc_sum(Acc a) { return a; }
  static MPX_SIMD_INLINE T hsum_d(V v) { return v; }
};

// ---------------------------------------------------------------------------------------------
// AVX-512 ops (only in TUs compiled with -mavx512f -mavx512dq ...).
// ---------------------------------------------------------------------------------------------
#if defined(__AVX512F__) && defined(__AVX512DQ__)
struct F32x16 {
  using T = float;
  using V = __m512;
  using M = __mmask16;
  struct Acc {
    __m512d lo, hi;
  };
  static constexpr int W = 16;
  static constexpr bool kLibm = false;
  static MPX_SIMD_INLINE V load(const T* p) { return _mm512_loadu_ps(p); }
  static MPX_SIMD_INLINE V load_n(const T* p, int n) { return _mm512_maskz_loadu_ps(valid(n), p); }
  static MPX_SIMD_INLINE void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static MPX_SIMD_INLINE void store_n(T* p, V v, int n) { _mm512_mask_storeu_ps(p, valid(n), v); }
  static MPX_SIMD_INLINE V set1(T x) { return _mm512_set1_ps(x); }
  static MPX_SIMD_INLINE V iota() {
    return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
  static MPX_SIMD_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
  static MPX_SIMD_INLINE V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static MPX_SIMD_INLINE V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static MPX_SIMD_INLINE V div(V a, V b) { return _mm512_div_ps(a, b); }
  static MPX_SIMD_INLINE V max(V a, V b) { return _mm512_maskz_max_ps(0xFFFF, a, b); }
  static MPX_SIMD_INLINE V min(V a, V b) { return _mm512_maskz_min_ps(0xFFFF, a, b); }
  static MPX_SIMD_INLINE V abs(V a) { return _mm512_abs_ps(a); }
  static MPX_SIMD_INLINE V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static MPX_SIMD_INLINE V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static MPX_SIMD_INLINE M lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static MPX_SIMD_INLINE M le(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static MPX_SIMD_INLINE M gt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static MPX_SIMD_INLINE M ge(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static MPX_SIMD_INLINE M eq(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static MPX_SIMD_INLINE M mand(M a, M b) { return static_cast<M>(a & b); }
  static MPX_SIMD_INLINE M mor(M a, M b) { return static_cast<M>(a | b); }
  static MPX_SIMD_INLINE M valid(int n) { return n >= 16 ? M(0xFFFF) : static_cast<M>((1u << n) - 1u); }
  static MPX_SIMD_INLINE M none() { return 0; }
  static MPX_SIMD_INLINE bool any(M m) { return m != 0; }
  static MPX_SIMD_INLINE V select(M m, V a, V b) { return _mm512_mask_blend_ps(m, b, a); }
  static MPX_SIMD_INLINE V zero_unless(M m, V a) { return _mm512_maskz_mov_ps(m, a); }
  static MPX_SIMD_INLINE V round(V x) {
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static MPX_SIMD_INLINE V scale2(V x, V n) { return _mm512_scalef_ps(x, n); }
  static MPX_SIMD_INLINE Acc acc_zero() { return {_mm512_setzero_pd(), _mm512_setzero_pd()}; }
  static MPX_SIMD_INLINE Acc acc_add(Acc a, V v) {
    a.lo = _mm512_add_pd(a.lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    a.hi = _mm512_add_pd(a.hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
    return a;
  }
  static MPX_SIMD_INLINE double acc_sum(Acc a) {
    alignas(64) double t[8];
    _mm512_store_pd(t, _mm512_add_pd(a.lo, a.hi));
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  }
};

struct F64x8 {
  using T = double;
  using V = __m512d;
  using M = __mmask8;
  using Acc = __m512d;
  static constexpr int W = 8;
  static constexpr bool kLibm = false;
  static MPX_SIMD_INLINE V load(const T* p) { return _mm512_loadu_pd(p); }
  static MPX_SIMD_INLINE V load_n(const T* p, int n) { return _mm512_maskz_loadu_pd(valid(n), p); }
  static MPX_SIMD_INLINE void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static MPX_SIMD_INLINE void store_n(T* p, V v, int n) { _mm512_mask_storeu_pd(p, valid(n), v); }
  static MPX_SIMD_INLINE V set1(T x) { return _mm512_set1_pd(x); }
  static MPX_SIMD_INLINE V iota() { return _mm512_setr_pd(0, 1, 2, 3, 4, 5, 6, 7); }
  static MPX_SIMD_INLINE V add(V a, V b) { return _mm512_add_pd(a, b); }
  static MPX_SIMD_INLINE V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static MPX_SIMD_INLINE V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static MPX_SIMD_INLINE V div(V a, V b) { return _mm512_div_pd(a, b); }
  static MPX_SIMD_INLINE V max(V a, V b) { return _mm512_maskz_max_pd(0xFF, a, b); }
  static MPX_SIMD_INLINE V min(V a, V b) { return _mm512_maskz_min_pd(0xFF, a, b); }
  static MPX_SIMD_INLINE V abs(V a) { return _mm512_abs_pd(a); }
  static MPX_SIMD_INLINE V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static MPX_SIMD_INLINE V fnmadd(V a, V b, V c) { return _mm512_fnmadd_pd(a, b, c); }
  static MPX_SIMD_INLINE M lt(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ); }
  static MPX_SIMD_INLINE M le(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_LE_OQ); }
  static MPX_SIMD_INLINE M gt(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
  static MPX_SIMD_INLINE M ge(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_GE_OQ); }
  static MPX_SIMD_INLINE M eq(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ); }
  static MPX_SIMD_INLINE M mand(M a, M b) { return static_cast<M>(a & b); }
  static MPX_SIMD_INLINE M mor(M a, M b) { return static_cast<M>(a | b); }
  static MPX_SIMD_INLINE M valid(int n) { return n >= 8 ? M(0xFF) : static_cast<M>((1u << n) - 1u); }
  static MPX_SIMD_INLINE M none() { return 0; }
  static MPX_SIMD_INLINE bool any(M m) { return m != 0; }
  static MPX_SIMD_INLINE V select(M m, V a, V b) { return _mm512_mask_blend_pd(m, b, a); }
  static MPX_SIMD_INLINE V zero_unless(M m, V a) { return _mm512_maskz_mov_pd(m, a); }
  static MPX_SIMD_INLINE V round(V x) {
    return _mm512_roundscale_pd(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static MPX_SIMD_INLINE V scale2(V x, V n) { return _mm512_scalef_pd(x, n); }
  static MPX_SIMD_INLINE Acc acc_zero() { return _mm512_setzero_pd(); }
  static MPX_SIMD_INLINE Acc acc_add(Acc a, V v) { return _mm512_add_pd(a, v); }
  static MPX_SIMD_INLINE double acc_sum(Acc a) {
    alignas(64) double t[8];
    _mm512_store_pd(t, a);
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  }
};
#endif  // AVX-512

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA ops (only in TUs compiled with -mavx2 -mfma and without AVX-512).
// ---------------------------------------------------------------------------------------------
#if defined(__AVX2__) && defined(__FMA__)
struct F32x8 {
  using T = float;
  using V = __m256;
  using M = __m256;  // all-ones / all-zeros lanes
  struct Acc {
    __m256d lo, hi;
  };
  static constexpr int W = 8;
  static constexpr bool kLibm = false;
  static MPX_SIMD_INLINE __m256i imask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static MPX_SIMD_INLINE V load(const T* p) { return _mm256_loadu_ps(p); }
  static MPX_SIMD_INLINE V load_n(const T* p, int n) { return _mm256_maskload_ps(p, imask(n)); }
  static MPX_SIMD_INLINE void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static MPX_SIMD_INLINE void store_n(T* p, V v, int n) { _mm256_maskstore_ps(p, imask(n), v); }
  static MPX_SIMD_INLINE V set1(T x) { return _mm256_set1_ps(x); }
  static MPX_SIMD_INLINE V iota() { return _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7); }
  static MPX_SIMD_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
  static MPX_SIMD_INLINE V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static MPX_SIMD_INLINE V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static MPX_SIMD_INLINE V div(V a, V b) { return _mm256_div_ps(a, b); }
  static MPX_SIMD_INLINE V max(V a, V b) { return _mm256_max_ps(a, b); }
  static MPX_SIMD_INLINE V min(V a, V b) { return _mm256_min_ps(a, b); }
  static MPX_SIMD_INLINE V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static MPX_SIMD_INLINE V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static MPX_SIMD_INLINE V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static MPX_SIMD_INLINE M lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static MPX_SIMD_INLINE M le(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static MPX_SIMD_INLINE M gt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static MPX_SIMD_INLINE M ge(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static MPX_SIMD_INLINE M eq(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static MPX_SIMD_INLINE M mand(M a, M b) { return _mm256_and_ps(a, b); }
  static MPX_SIMD_INLINE M mor(M a, M b) { return _mm256_or_ps(a, b); }
  static MPX_SIMD_INLINE M valid(int n) { return _mm256_castsi256_ps(imask(n)); }
  static MPX_SIMD_INLINE M none() { return _mm256_setzero_ps(); }
  static MPX_SIMD_INLINE bool any(M m) { return _mm256_movemask_ps(m) != 0; }
  static MPX_SIMD_INLINE V select(M m, V a, V b) { return _mm256_blendv_ps(b, a, m); }
  static MPX_SIMD_INLINE V zero_unless(M m, V a) { return _mm256_and_ps(m, a); }
  static MPX_SIMD_INLINE V round(V x) {
    return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // x * 2^n for integral n in [-126, 127].
  static MPX_SIMD_INLINE V scale2(V x, V n) {
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(x, _mm256_castsi256_ps(e));
  }
  static MPX_SIMD_INLINE Acc acc_zero() { return {_mm256_setzero_pd(), _mm256_setzero_pd()}; }
  static MPX_SIMD_INLINE Acc acc_add(Acc a, V v) {
    a.lo = _mm256_add_pd(a.lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    a.hi = _mm256_add_pd(a.hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    return a;
  }
  static MPX_SIMD_INLINE double acc_sum(Acc a) {
    alignas(32) double t[4];
    _mm256_store_pd(t, _mm256_add_pd(a.lo, a.hi));
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
};

struct F64x4 {
  using T = double;
  using V = __m256d;
  using M = __m256d;
  using Acc = __m256d;
  static constexpr int W = 4;
  static constexpr bool kLibm = false;
  static MPX_SIMD_INLINE __m256i imask(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static MPX_SIMD_INLINE V load(const T* p) { return _mm256_loadu_pd(p); }
  static MPX_SIMD_INLINE V load_n(const T* p, int n) { return _mm256_maskload_pd(p, imask(n)); }
  static MPX_SIMD_INLINE void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static MPX_SIMD_INLINE void store_n(T* p, V v, int n) { _mm256_maskstore_pd(p, imask(n), v); }
  static MPX_SIMD_INLINE V set1(T x) { return _mm256_set1_pd(x); }
  static MPX_SIMD_INLINE V iota() { return _mm256_setr_pd(0, 1, 2, 3); }
  static MPX_SIMD_INLINE V add(V a, V b) { return _mm256_add_pd(a, b); }
  static MPX_SIMD_INLINE V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static MPX_SIMD_INLINE V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static MPX_SIMD_INLINE V div(V a, V b) { return _mm256_div_pd(a, b); }
  static MPX_SIMD_INLINE V max(V a, V b) { return _mm256_max_pd(a, b); }
  static MPX_SIMD_INLINE V min(V a, V b) { return _mm256_min_pd(a, b); }
  static MPX_SIMD_INLINE V abs(V a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
  static MPX_SIMD_INLINE V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static MPX_SIMD_INLINE V fnmadd(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }
  static MPX_SIMD_INLINE M lt(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_LT_OQ); }
  static MPX_SIMD_INLINE M le(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_LE_OQ); }
  static MPX_SIMD_INLINE M gt(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_GT_OQ); }
  static MPX_SIMD_INLINE M ge(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_GE_OQ); }
  static MPX_SIMD_INLINE M eq(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_EQ_OQ); }
  static MPX_SIMD_INLINE M mand(M a, M b) { return _mm256_and_pd(a, b); }
  static MPX_SIMD_INLINE M mor(M a, M b) { return _mm256_or_pd(a, b); }
  static MPX_SIMD_INLINE M valid(int n) { return _mm256_castsi256_pd(imask(n)); }
  static MPX_SIMD_INLINE M none() { return _mm256_setzero_pd(); }
  static MPX_SIMD_INLINE bool any(M m) { return _mm256_movemask_pd(m) != 0; }
  static MPX_SIMD_INLINE V select(M m, V a, V b) { return _mm256_blendv_pd(b, a, m); }
  static MPX_SIMD_INLINE V zero_unless(M m, V a) { return _mm256_and_pd(m, a); }
  static MPX_SIMD_INLINE V round(V x) {
    return _mm256_round_pd(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // x * 2^n for integral n in [-1022, 1023]: n + 1.5*2^52 puts n (two's complement) in the low
  // mantissa bits; no 64-bit float->int conversion is needed (AVX2 has none).
  static MPX_SIMD_INLINE V scale2(V x, V n) {
    const __m256d magic = _mm256_set1_pd(6755399441055744.0);  // 1.5 * 2^52
    __m256i bits = _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(n, magic)),
                                    _mm256_castpd_si256(magic));
    __m256i e = _mm256_slli_epi64(_mm256_add_epi64(bits, _mm256_set1_epi64x(1023)), 52);
    return _mm256_mul_pd(x, _mm256_castsi256_pd(e));
  }
  static MPX_SIMD_INLINE Acc acc_zero() { return _mm256_setzero_pd(); }
  static MPX_SIMD_INLINE Acc acc_add(Acc a, V v) { return _mm256_add_pd(a, v); }
  static MPX_SIMD_INLINE double acc_sum(Acc a) {
    alignas(32) double t[4];
    _mm256_store_pd(t, a);
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
};
#endif  // AVX2

// ---------------------------------------------------------------------------------------------
// Transcendentals.
// ---------------------------------------------------------------------------------------------
template <class O>
MPX_SIMD_INLINE typename O::V horner(typename O::V x, const typename O::T* c, int n) {
  // c[0] + x (c[1] + x (c[2] + ...)), n coefficients.
  typename O::V p = O::set1(c[n - 1]);
  for (int k = n - 2; k >= 0; --k) p = O::fmadd(p, x, O::set1(c[k]));
  return p;
}

// exp(x) for x <= 0. Clamped below at -87 (float) / -708 (double) so the result stays a normal
// number: exp(-87) ~ 1.6e-38, an absolute error far below anything the callers resolve.
// n = round(x / ln2), r = x - n ln2 (Cody-Waite, |r| <= ln2/2), exp(r) by Taylor (degree 7 / 13).
template <class O>
MPX_SIMD_INLINE typename O::V exp_nonpos(typename O::V x) {
  using T = typename O::T;
  using V = typename O::V;
  if constexpr (O::kLibm) {
    return std::exp(x);
  } else if constexpr (sizeof(T) == 4) {
    static constexpr float c[8] = {1.0f, 1.0f, 0.5f, 1.0f / 6, 1.0f / 24, 1.0f / 120, 1.0f / 720,
                                   1.0f / 5040};
    x = O::max(x, O::set1(-87.0f));
    V n = O::round(O::mul(x, O::set1(1.44269504088896341f)));
    V r = O::fnmadd(n, O::set1(0.693359375f), x);
    r = O::fnmadd(n, O::set1(-2.12194440e-4f), r);
    return O::scale2(horner<O>(r, c, 8), n);
  } else {
    static constexpr double c[14] = {1.0,
                                     1.0,
                                     1.0 / 2,
                                     1.0 / 6,
                                     1.0 / 24,
                                     1.0 / 120,
                                     1.0 / 720,
                                     1.0 / 5040,
                                     1.0 / 40320,
                                     1.0 / 362880,
                                     1.0 / 3628800,
                                     1.0 / 39916800,
                                     1.0 / 479001600,
                                     1.0 / 6227020800.0};
    x = O::max(x, O::set1(-708.0));
    V n = O::round(O::mul(x, O::set1(1.4426950408889634)));
    V r = O::fnmadd(n, O::set1(6.93147180369123816490e-01), x);
    r = O::fnmadd(n, O::set1(1.90821492927058770002e-10), r);
    return O::scale2(horner<O>(r, c, 14), n);
  }
}

// log1p(y) for y in [0, 1], given m = 1 + y (rounded) and inv_m = 1 / m (callers need both
// for the sigmoid anyway). m in [1, 2]: m = 2^k * (1 + f) with k in {0, 1}, f in
// [sqrt(1/2) - 1, sqrt(2) - 1]; log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f),
// R = sum_k 2 s^(2k) / (2k + 1) (the fdlibm form, Taylor coefficients); the rounding of 1 + y
// is put back by the first-order correction (y - (m - 1)) / m.
template <class O>
MPX_SIMD_INLINE typename O::V log1p_01(typename O::V y, typename O::V m, typename O::V inv_m) {
  using T = typename O::T;
  using V = typename O::V;
  if constexpr (O::kLibm) {
    (void)m;
    (void)inv_m;
    return std::log1p(y);
  } else {
    constexpr bool dbl = sizeof(T) == 8;
    static constexpr T c[11] = {T(2.0 / 3),  T(2.0 / 5),  T(2.0 / 7),  T(2.0 / 9),
                                T(2.0 / 11), T(2.0 / 13), T(2.0 / 15), T(2.0 / 17),
                                T(2.0 / 19), T(2.0 / 21), T(2.0 / 23)};
    const V one = O::set1(T(1));
    const V half = O::set1(T(0.5));
    const auto big = O::gt(m, O::set1(T(1.41421356237309504880)));
    const V k = O::select(big, one, O::set1(T(0)));
    const V mr = O::select(big, O::mul(m, half), m);
    const V f = O::sub(mr, one);
    const V s = O::div(f, O::add(O::set1(T(2)), f));
    const V z = O::mul(s, s);
    const V R = O::mul(z, horner<O>(z, c, dbl ? 11 : 5));
    const V hfsq = O::mul(half, O::mul(f, f));
    const V corr = O::mul(O::sub(y, O::sub(m, one)), inv_m);
    const T ln2hi = dbl ? T(6.93147180369123816490e-01) : T(0.693359375f);
    const T ln2lo = dbl ? T(1.90821492927058770002e-10) : T(-2.12194440e-4f);
    const V lo = O::fmadd(k, O::set1(ln2lo), corr);
    const V t = O::fmadd(s, O::add(hfsq, R), lo);
    return O::fmadd(k, O::set1(ln2hi), O::sub(f, O::sub(hfsq, t)));
  }
}

// atan(r) for r >= 0. Reduction to |t| <= tan(pi/16) around the points tan(k pi/8), k = 0..4:
//   atan(r) = k pi/8 + atan((r - c_k) / (1 + r c_k)),  and for r > tan(7 pi/16): pi/2 + atan(-1/r);
// atan(t) = t + t z P(z), z = t^2 <= 0.0396, Taylor (6 / 12 terms).
template <class O>
MPX_SIMD_INLINE typename O::V atan_nonneg(typename O::V r) {
  using T = typename O::T;
  using V = typename O::V;
  if constexpr (O::kLibm) {
    return std::atan(r);
  } else {
    constexpr bool dbl = sizeof(T) == 8;
    static constexpr T c[12] = {T(-1.0 / 3),  T(1.0 / 5),   T(-1.0 / 7),  T(1.0 / 9),
                                T(-1.0 / 11), T(1.0 / 13),  T(-1.0 / 15), T(1.0 / 17),
                                T(-1.0 / 19), T(1.0 / 21),  T(-1.0 / 23), T(1.0 / 25)};
    const V one = O::set1(T(1));
    const auto m1 = O::gt(r, O::set1(T(0.19891236737965800691)));  // tan(pi/16)
    const auto m3 = O::gt(r, O::set1(T(0.66817863791929891999)));  // tan(3pi/16)
    const auto m5 = O::gt(r, O::set1(T(1.49660576266548901760)));  // tan(5pi/16)
    const auto m7 = O::gt(r, O::set1(T(5.02733949212584810451)));  // tan(7pi/16)
    V ck = O::select(m1, O::set1(T(0.41421356237309504880)), O::set1(T(0)));
    ck = O::select(m3, one, ck);
    ck = O::select(m5, O::set1(T(2.41421356237309504880)), ck);
    V base = O::select(m1, O::set1(T(0.39269908169872415481)), O::set1(T(0)));
    base = O::select(m3, O::set1(T(0.78539816339744830962)), base);
    base = O::select(m5, O::set1(T(1.17809724509617246442)), base);
    base = O::select(m7, O::set1(T(1.57079632679489661923)), base);
    const V num = O::select(m7, O::set1(T(-1)), O::sub(r, ck));
    const V den = O::select(m7, r, O::fmadd(r, ck, one));
    const V t = O::div(num, den);
    const V z = O::mul(t, t);
    const V p = O::mul(O::mul(t, z), horner<O>(z, c, dbl ? 12 : 6));
    return O::add(base, O::add(t, p));
  }
}

}  // namespace simd
}  // namespace
}  // namespace cpu
}  // namespace molphenix
