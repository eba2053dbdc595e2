// ops/retrieval.h, CPU: run-time ISA dispatch and the scalar (baseline x86-64) instantiation.
// The algorithm (packed candidates, fused GEMM-tile epilogues) is in retrieval_impl.h.
#include "molphenix/ops/retrieval.h"

#include "molphenix/cpu_features.h"
#include "retrieval_impl.h"

#include <cstdlib>
#include <cstring>
#include <memory>

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
template <typename T>
int packed_panel_width_isa();
template <typename T>
void pack_rows_isa(const T*, int64_t, int64_t, int64_t, bool, T*, T*, int);
template <typename T>
void retrieval_ranks_packed_isa(const T*, const T*, const T*, int64_t, int64_t, int64_t,
                                const int64_t*, double*, Metric, int64_t*, int);
template <typename T>
void topk_retrieve_packed_isa(const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t,
                              Metric, T*, int64_t*, int);
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
template <typename T>
int packed_panel_width_isa();
template <typename T>
void pack_rows_isa(const T*, int64_t, int64_t, int64_t, bool, T*, T*, int);
template <typename T>
void retrieval_ranks_packed_isa(const T*, const T*, const T*, int64_t, int64_t, int64_t,
                                const int64_t*, double*, Metric, int64_t*, int);
template <typename T>
void topk_retrieve_packed_isa(const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t,
                              Metric, T*, int64_t*, int);
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

// The same ISA for every step of a packed search: the handle's level, not the current one.
#if defined(MOLPHENIX_HAVE_AVX512) && defined(MOLPHENIX_HAVE_AVX2)
#define MPX_PACKED_DISPATCH(level, call)                          \
  switch (static_cast<SimdLevel>(level)) {                        \
    case SimdLevel::kAVX512: return avx512::call;                 \
    case SimdLevel::kAVX2: return avx2::call;                     \
    default: return scalar::call;                                 \
  }
#elif defined(MOLPHENIX_HAVE_AVX2)
#define MPX_PACKED_DISPATCH(level, call)                          \
  switch (static_cast<SimdLevel>(level)) {                        \
    case SimdLevel::kAVX2: return avx2::call;                     \
    default: return scalar::call;                                 \
  }
#else
#define MPX_PACKED_DISPATCH(level, call) return scalar::call;
#endif

template <typename T>
int64_t panel_width(int level) {
  MPX_PACKED_DISPATCH(level, packed_panel_width_isa<T>())
}
template <typename T>
void pack_rows_dispatch(const PackedCandidates& P, const T* rows, int64_t row0, int64_t n, int nt) {
  MPX_PACKED_DISPATCH(P.level, pack_rows_isa<T>(rows, row0, n, P.D, P.with_norms,
                                                static_cast<T*>(P.data), static_cast<T*>(P.norms), nt))
}
template <typename T>
void ranks_packed_dispatch(const T* q, const PackedCandidates& P, int64_t Q, const int64_t* t,
                           double* ts, Metric m, int64_t* r, int nt) {
  MPX_PACKED_DISPATCH(P.level, retrieval_ranks_packed_isa<T>(
      q, static_cast<const T*>(P.data), static_cast<const T*>(P.norms), Q, P.N, P.D, t, ts, m, r, nt))
}
template <typename T>
void topk_packed_dispatch(const T* q, const PackedCandidates& P, int64_t Q, int64_t k, Metric m,
                          T* s, int64_t* idx, int nt) {
  MPX_PACKED_DISPATCH(P.level, topk_retrieve_packed_isa<T>(
      q, static_cast<const T*>(P.data), static_cast<const T*>(P.norms), Q, P.N, P.D, k, m, s, idx, nt))
}
#undef MPX_PACKED_DISPATCH

void check_packed(const PackedCandidates& P, const char* op) {
  MPX_CHECK_VALUE(pack_candidates_current(P), op, ": the packed candidates were packed for SIMD level ",
                  simd_level_name(static_cast<SimdLevel>(P.level)), " but the level is now ",
                  simd_level_name(simd_level()), "; pack them again");
}
}  // namespace

PackedCandidates::~PackedCandidates() {
  std::free(data);
  std::free(norms);
}

std::unique_ptr<PackedCandidates> pack_candidates_create(DType dtype, int64_t N, int64_t D,
                                                         bool with_norms) {
  MPX_CHECK_VALUE(N > 0, "pack_candidates: the candidate set is empty");
  MPX_CHECK_VALUE(D > 0, "pack_candidates: expected a non-zero embedding width");
  MPX_CHECK_TYPE(dtype == DType::kFloat32 || dtype == DType::kFloat64,
                 "pack_candidates: CPU supports float32/float64, got ", dtype_name(dtype));
  auto P = std::make_unique<PackedCandidates>();
  P->dtype = dtype;
  P->level = static_cast<int>(simd_level());
  P->panel_width = dtype == DType::kFloat32 ? panel_width<float>(P->level) : panel_width<double>(P->level);
  P->N = N;
  P->D = D;
  P->with_norms = with_norms;
  const size_t es = dtype == DType::kFloat32 ? sizeof(float) : sizeof(double);
  const int64_t np = (N + P->panel_width - 1) / P->panel_width;
  auto alloc = [](size_t bytes) {
    bytes = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    return std::make_pair(p, bytes);
  };
  auto d = alloc(static_cast<size_t>(np * D * P->panel_width) * es);
  P->data = d.first;
  auto n = alloc(static_cast<size_t>(np * P->panel_width) * es);
  P->norms = n.first;
  P->nbytes = d.second + n.second;
  // Zero the last panel (its padding lanes) and the norms; rows are written by fill.
  const size_t panel_bytes = static_cast<size_t>(D * P->panel_width) * es;
  std::memset(static_cast<char*>(P->data) + static_cast<size_t>(np - 1) * panel_bytes, 0, panel_bytes);
  std::memset(P->norms, 0, n.second);
  return P;
}

bool pack_candidates_current(const PackedCandidates& P) {
  return P.level == static_cast<int>(simd_level());
}

void pack_candidates_fill(PackedCandidates& P, const void* rows, int64_t row0, int64_t n,
                          int num_threads) {
  check_packed(P, "pack_candidates_fill");
  MPX_CHECK_VALUE(row0 >= 0 && n >= 0 && row0 + n <= P.N, "pack_candidates_fill: rows [", row0,
                  ", ", row0 + n, ") out of [0, ", P.N, ")");
  const int nt = num_threads > 0 ? num_threads : 1;
  if (P.dtype == DType::kFloat32)
    pack_rows_dispatch(P, static_cast<const float*>(rows), row0, n, nt);
  else
    pack_rows_dispatch(P, static_cast<const double*>(rows), row0, n, nt);
}

void retrieval_ranks_packed(const void* queries, const PackedCandidates& P, int64_t Q,
                            const int64_t* targets, double* target_scores, Metric metric,
                            int64_t* ranks, int num_threads) {
  if (Q <= 0) return;
  check_packed(P, "retrieval_ranks");
  MPX_CHECK_VALUE(metric != Metric::kSqL2 || P.with_norms,
                  "retrieval_ranks: squared-L2 needs candidates packed with their norms");
  const int nt = num_threads > 0 ? num_threads : 1;
  if (P.dtype == DType::kFloat32)
    ranks_packed_dispatch(static_cast<const float*>(queries), P, Q, targets, target_scores, metric,
                          ranks, nt);
  else
    ranks_packed_dispatch(static_cast<const double*>(queries), P, Q, targets, target_scores,
                          metric, ranks, nt);
}

void topk_retrieve_packed(const void* queries, const PackedCandidates& P, int64_t Q, int64_t k,
                          Metric metric, void* out_scores, int64_t* out_indices, int num_threads) {
  if (Q <= 0) return;
  check_packed(P, "topk_retrieve");
  MPX_CHECK_VALUE(k >= 1 && k <= P.N, "topk_retrieve: k must be in [1, N]");
  MPX_CHECK_VALUE(metric != Metric::kSqL2 || P.with_norms,
                  "topk_retrieve: squared-L2 needs candidates packed with their norms");
  const int nt = num_threads > 0 ? num_threads : 1;
  if (P.dtype == DType::kFloat32)
    topk_packed_dispatch(static_cast<const float*>(queries), P, Q, k, metric,
                         static_cast<float*>(out_scores), out_indices, nt);
  else
    topk_packed_dispatch(static_cast<const double*>(queries), P, Q, k, metric,
                         static_cast<double*>(out_scores), out_indices, nt);
}

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
