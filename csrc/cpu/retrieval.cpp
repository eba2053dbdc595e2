// ops/retrieval.h, CPU: run-time ISA dispatch and the scalar (baseline x86-64) instantiation.
// The algorithm (packed candidates, fused GEMM-tile epilogues) is in retrieval_impl.h.
#include "molphenix/ops/retrieval.h"

#include "molphenix/cpu_features.h"
#include "retrieval_impl.h"

namespace molphenix {
namespace cpu {

#if defined(MOLPHENIX_HAVE_AVX512)
namespace avx512 {
template <typename T>
void retrieval_ranks_isa(const T*, const T*, int64_t, int64_t, int64_t, const int64_t*, double*,
                         Metric, int64_t*, int);
template <typename T>
void topk_retrieve_isa(const T*, const T*, int64_t, int64_t, int64_t, int64_t, Metric, T*,
                       int64_t*, int);
}  // namespace avx512
#endif
#if defined(MOLPHENIX_HAVE_AVX2)
namespace avx2 {
template <typename T>
void retrieval_ranks_isa(const T*, const T*, int64_t, int64_t, int64_t, const int64_t*, double*,
                         Metric, int64_t*, int);
template <typename T>
void topk_retrieve_isa(const T*, const T*, int64_t, int64_t, int64_t, int64_t, Metric, T*,
                       int64_t*, int);
}  // namespace avx2
#endif

namespace {
template <typename T>
void ranks_dispatch(const T* q, const T* c, int64_t Q, int64_t N, int64_t D, const int64_t* t,
                    double* ts, Metric m, int64_t* r, int nt) {
  switch (simd_level()) {
#if defined(MOLPHENIX_HAVE_AVX512)
    case SimdLevel::kAVX512: return avx512::retrieval_ranks_isa<T>(q, c, Q, N, D, t, ts, m, r, nt);
#endif
#if defined(MOLPHENIX_HAVE_AVX2)
    case SimdLevel::kAVX2: return avx2::retrieval_ranks_isa<T>(q, c, Q, N, D, t, ts, m, r, nt);
#endif
    default: return scalar::retrieval_ranks_isa<T>(q, c, Q, N, D, t, ts, m, r, nt);
  }
}
template <typename T>
void topk_dispatch(const T* q, const T* c, int64_t Q, int64_t N, int64_t D, int64_t k, Metric m,
                   T* s, int64_t* idx, int nt) {
  switch (simd_level()) {
#if defined(MOLPHENIX_HAVE_AVX512)
    case SimdLevel::kAVX512: return avx512::topk_retrieve_isa<T>(q, c, Q, N, D, k, m, s, idx, nt);
#endif
#if defined(MOLPHENIX_HAVE_AVX2)
    case SimdLevel::kAVX2: return avx2::topk_retrieve_isa<T>(q, c, Q, N, D, k, m, s, idx, nt);
#endif
    default: return scalar::topk_retrieve_isa<T>(q, c, Q, N, D, k, m, s, idx, nt);
  }
}
}  // namespace

void retrieval_ranks(DType dtype, const void* queries, const void* candidates, int64_t Q,
                     int64_t N, int64_t D, const int64_t* targets, double* target_scores,
                     Metric metric, int64_t* ranks, int num_threads) {
  if (Q <= 0) return;
  MPX_CHECK_VALUE(N > 0, "retrieval_ranks: empty candidate set");
  const int nt = num_threads > 0 ? num_threads : 1;
  if (dtype == DType::kFloat32)
    ranks_dispatch(static_cast<const float*>(queries), static_cast<const float*>(candidates), Q,
                   N, D, targets, target_scores, metric, ranks, nt);
  else if (dtype == DType::kFloat64)
    ranks_dispatch(static_cast<const double*>(queries), static_cast<const double*>(candidates), Q,
                   N, D, targets, target_scores, metric, ranks, nt);
  else
    throw TypeError(detail::concat("retrieval_ranks: CPU supports float32/float64, got ",
                                   dtype_name(dtype)));
}

void topk_retrieve(DType dtype, const void* queries, const void* candidates, int64_t Q, int64_t N,
                   int64_t D, int64_t k, Metric metric, void* out_scores, int64_t* out_indices,
                   int num_threads) {
  if (Q <= 0) return;
  MPX_CHECK_VALUE(k >= 1 && k <= N, "topk_retrieve: k must be in [1, N]");
  const int nt = num_threads > 0 ? num_threads : 1;
  if (dtype == DType::kFloat32)
    topk_dispatch(static_cast<const float*>(queries), static_cast<const float*>(candidates), Q, N,
                  D, k, metric, static_cast<float*>(out_scores), out_indices, nt);
  else if (dtype == DType::kFloat64)
    topk_dispatch(static_cast<const double*>(queries), static_cast<const double*>(candidates), Q,
                  N, D, k, metric, static_cast<double*>(out_scores), out_indices, nt);
  else
    throw TypeError(detail::concat("topk_retrieve: CPU supports float32/float64, got ",
                                   dtype_name(dtype)));
}

}  // namespace cpu
}  // namespace molphenix
