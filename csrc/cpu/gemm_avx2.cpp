// avx2 path of gemm.h: compiled with the avx2 ISA flags (see CMakeLists.txt) and called only
// after the runtime check (cpu::simd_level()). The kernels are in gemm_kernels.h.
#include <cstdint>

#include "gemm_kernels.h"

namespace molphenix {
namespace cpu {
namespace detail {

template <typename T>
void gemm_strided_avx2(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
                         const T* B, int64_t rsb, int64_t csb, T* C, int64_t ldc, bool acc) {
  avx2::Kernel<T>::run(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, acc);
}

template <typename T>
T dot_fma_avx2(const T* a, const T* b, int64_t K) {
  return avx2::dot_fma_chain(a, b, K);
}

template void gemm_strided_avx2<float>(int64_t, int64_t, int64_t, const float*, int64_t, int64_t,
                                         const float*, int64_t, int64_t, float*, int64_t, bool);
template void gemm_strided_avx2<double>(int64_t, int64_t, int64_t, const double*, int64_t,
                                          int64_t, const double*, int64_t, int64_t, double*,
                                          int64_t, bool);
template float dot_fma_avx2<float>(const float*, const float*, int64_t);
template double dot_fma_avx2<double>(const double*, const double*, int64_t);

}  // namespace detail
}  // namespace cpu
}  // namespace molphenix
