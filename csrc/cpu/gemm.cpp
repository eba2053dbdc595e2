// gemm.h: run-time ISA dispatch and the scalar (baseline x86-64) path.
// The scalar path uses std::fma (one rounding), so it is bitwise equal to the vector paths.
#include "gemm.h"

#include <cstdint>

#include "gemm_kernels.h"
#include "molphenix/cpu_features.h"

namespace molphenix {
namespace cpu {
namespace detail {
#if defined(MOLPHENIX_HAVE_AVX512)
template <typename T>
void gemm_strided_avx512(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
                         const T* B, int64_t rsb, int64_t csb, T* C, int64_t ldc, bool acc);
template <typename T>
T dot_fma_avx512(const T* a, const T* b, int64_t K);
#endif
#if defined(MOLPHENIX_HAVE_AVX2)
template <typename T>
void gemm_strided_avx2(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
                       const T* B, int64_t rsb, int64_t csb, T* C, int64_t ldc, bool acc);
template <typename T>
T dot_fma_avx2(const T* a, const T* b, int64_t K);
#endif

// C[M,N] (+)= A * B with A(i, k) = A[i*rsa + k*csa], B(k, j) = B[k*rsb + j*csb].
template <typename T>
void gemm_strided(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
                  const T* B, int64_t rsb, int64_t csb, T* C, int64_t ldc, bool acc) {
  switch (simd_level()) {
#if defined(MOLPHENIX_HAVE_AVX512)
    case SimdLevel::kAVX512:
      return gemm_strided_avx512<T>(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, acc);
#endif
#if defined(MOLPHENIX_HAVE_AVX2)
    case SimdLevel::kAVX2:
      return gemm_strided_avx2<T>(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, acc);
#endif
    default:
      return scalar::Kernel<T>::run(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, acc);
  }
}
}  // namespace detail

template <typename T>
void gemm_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc, bool accumulate) {
  detail::gemm_strided<T>(M, N, K, A, lda, 1, B, 1, ldb, C, ldc, accumulate);
}

template <typename T>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc, bool accumulate) {
  detail::gemm_strided<T>(M, N, K, A, lda, 1, B, ldb, 1, C, ldc, accumulate);
}

template <typename T>
void gemm_tn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc, bool accumulate) {
  detail::gemm_strided<T>(M, N, K, A, 1, lda, B, ldb, 1, C, ldc, accumulate);
}

template <typename T>
T dot_fma(const T* a, const T* b, int64_t K) {
  switch (simd_level()) {
#if defined(MOLPHENIX_HAVE_AVX512)
    case SimdLevel::kAVX512: return detail::dot_fma_avx512<T>(a, b, K);
#endif
#if defined(MOLPHENIX_HAVE_AVX2)
    case SimdLevel::kAVX2: return detail::dot_fma_avx2<T>(a, b, K);
#endif
    default: return scalar::dot_fma_chain<T>(a, b, K);
  }
}

#define MPX_INSTANTIATE(T)                                                                     \
  template void gemm_nt<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, \
                           int64_t, bool);                                                     \
  template void gemm_nn<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, \
                           int64_t, bool);                                                     \
  template void gemm_tn<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, \
                           int64_t, bool);                                                     \
  template T dot_fma<T>(const T*, const T*, int64_t);
MPX_INSTANTIATE(float)
MPX_INSTANTIATE(double)
#undef MPX_INSTANTIATE

}  // namespace cpu
}  // namespace molphenix
