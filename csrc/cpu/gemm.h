// Single-threaded tile GEMMs for the CPU kernels (s2l_loss, arctan_l2_similarity, retrieval).
// Callers parallelise over tiles (OpenMP); each call runs on the calling thread only.
//
// Layout: row-major with leading dimensions (element strides between consecutive rows).
//
// NUMERICAL CONTRACT (the retrieval kernels depend on it for exact ties):
//   every output element is ONE fma chain over k = 0..K-1 in increasing order, starting from +0
//   (or from the existing C value when `accumulate`):
//       acc = accumulate ? C[i][j] : 0;  for k: acc = fma(a_ik, b_kj, acc);  C[i][j] = acc
//   The kernels vectorise across output rows/columns (broadcast A, vector B, register
//   accumulators), never across k, and never split K with a later reduction. So on every ISA path
//   (scalar / AVX2 / AVX-512, picked at run time by cpu::simd_level()):
//       gemm_nt(A, B)[i][j] == dot_fma(A_i, B_j, K)   bitwise.
//   K blocking (for cache) keeps the chain: a K block continues from the value stored in C.
//   K == 0 leaves C unchanged when accumulate, else writes zeros. M == 0 or N == 0: no-op.
//   Pointers of different operands must not alias C.
#pragma once

#include <cstddef>
#include <cstdint>

namespace molphenix {
namespace cpu {

// C[M,N] (+)= A[M,K] * B[N,K]^T      ("NT": both operands K-contiguous)
//   A [M, K] row stride lda, B [N, K] row stride ldb, C [M, N] row stride ldc.
template <typename T>
void gemm_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc, bool accumulate);

// C[M,N] (+)= A[M,K] * B[K,N]        ("NN")
//   A [M, K] row stride lda, B [K, N] row stride ldb, C [M, N] row stride ldc.
template <typename T>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc, bool accumulate);

// C[M,N] (+)= A[K,M]^T * B[K,N]      ("TN")
//   A [K, M] row stride lda, B [K, N] row stride ldb, C [M, N] row stride ldc.
template <typename T>
void gemm_tn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc, bool accumulate);

// The arithmetic of one element of gemm_nt: acc = +0; for k = 0..K-1: acc = fma(a[k], b[k], acc).
// a [K], b [K] contiguous.
template <typename T>
T dot_fma(const T* a, const T* b, int64_t K);

extern template void gemm_nt<float>(int64_t, int64_t, int64_t, const float*, int64_t,
                                    const float*, int64_t, float*, int64_t, bool);
extern template void gemm_nt<double>(int64_t, int64_t, int64_t, const double*, int64_t,
                                     const double*, int64_t, double*, int64_t, bool);
extern template void gemm_nn<float>(int64_t, int64_t, int64_t, const float*, int64_t,
                                    const float*, int64_t, float*, int64_t, bool);
extern template void gemm_nn<double>(int64_t, int64_t, int64_t, const double*, int64_t,
                                     const double*, int64_t, double*, int64_t, bool);
extern template void gemm_tn<float>(int64_t, int64_t, int64_t, const float*, int64_t,
                                    const float*, int64_t, float*, int64_t, bool);
extern template void gemm_tn<double>(int64_t, int64_t, int64_t, const double*, int64_t,
                                     const double*, int64_t, double*, int64_t, bool);
extern template float dot_fma<float>(const float*, const float*, int64_t);
extern template double dot_fma<double>(const double*, const double*, int64_t);

}  // namespace cpu
}  // namespace molphenix
