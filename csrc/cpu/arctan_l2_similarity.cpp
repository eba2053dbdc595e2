// arctan-L2 similarity on the CPU.
//
// Forward: per output tile, gemm_nt writes <a_i, b_j> straight into `out` and the SIMD epilogue
// turns it into s in place while the tile is in cache (tiles are independent: plain parallel for).
// Backward: per tile, recompute <a_i, b_j> (gemm_nt into a per-thread buffer), the epilogue makes
// g = -2 grad_out ds/dd2 (masked) plus float64 row / column sums of g, then
//   acc_a_i += G B_j (gemm_nn), acc_b_j += G^T A_i (gemm_tn)   (skipped for all-zero tiles)
// on the row pipeline of simd_math_kernels.h (deterministic, thread-count independent);
// finally grad_a_i = acc_a_i - a_i rowsum_i, grad_b_j = acc_b_j - b_j colsum_j.
#include "molphenix/ops/arctan_l2_similarity.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "gemm.h"
#include "molphenix/cpu_features.h"
#include "molphenix/workspace.h"
#include "simd_math_kernels.h"

namespace molphenix {
namespace cpu {
namespace detail {

void sim_fwd_epilogue_scalar(const SimConsts<float>& k, const SimTile<float>& t) {
  sim_fwd_epilogue_impl<simd::ScalarOps<float>>(k, t);
}
void sim_fwd_epilogue_scalar(const SimConsts<double>& k, const SimTile<double>& t) {
  sim_fwd_epilogue_impl<simd::ScalarOps<double>>(k, t);
}
bool sim_bwd_epilogue_scalar(const SimConsts<float>& k, const SimTile<float>& t) {
  return sim_bwd_epilogue_impl<simd::ScalarOps<float>>(k, t);
}
bool sim_bwd_epilogue_scalar(const SimConsts<double>& k, const SimTile<double>& t) {
  return sim_bwd_epilogue_impl<simd::ScalarOps<double>>(k, t);
}

}  // namespace detail

namespace {

template <typename T>
using SimFwd = void (*)(const detail::SimConsts<T>&, const detail::SimTile<T>&);
template <typename T>
using SimBwd = bool (*)(const detail::SimConsts<T>&, const detail::SimTile<T>&);

template <typename T>
SimFwd<T> pick_fwd() {
  switch (simd_level()) {
#ifdef MOLPHENIX_HAVE_AVX512
    case SimdLevel::kAVX512:
      return &detail::sim_fwd_epilogue_avx512;
#endif
#ifdef MOLPHENIX_HAVE_AVX2
    case SimdLevel::kAVX2:
      return &detail::sim_fwd_epilogue_avx2;
#endif
    default:
      return &detail::sim_fwd_epilogue_scalar;
  }
}

template <typename T>
SimBwd<T> pick_bwd() {
  switch (simd_level()) {
#ifdef MOLPHENIX_HAVE_AVX512
    case SimdLevel::kAVX512:
      return &detail::sim_bwd_epilogue_avx512;
#endif
#ifdef MOLPHENIX_HAVE_AVX2
    case SimdLevel::kAVX2:
      return &detail::sim_bwd_epilogue_avx2;
#endif
    default:
      return &detail::sim_bwd_epilogue_scalar;
  }
}

template <typename T>
detail::SimConsts<T> sim_consts(double c, bool has_threshold, double threshold) {
  detail::SimConsts<T> k;
  k.c = static_cast<T>(c);
  k.threshold = static_cast<T>(threshold);
  k.d2_skip = static_cast<T>(arctan_skip_d2(c, has_threshold, threshold));
  k.has_threshold = has_threshold;
  return k;
}

template <typename T>
int64_t sim_tile_edge(int64_t N, int64_t M) {
  const double pairs = static_cast<double>(N) * static_cast<double>(M);
  int64_t tile = pairs >= 2048.0 * 2048.0 ? 256 : pairs >= 256.0 * 256.0 ? 128 : 64;
  if (sizeof(T) == 8) tile = std::min<int64_t>(tile, 128);
  return tile;
}

template <typename T>
void fwd_impl(const T* a, const T* b, int64_t N, int64_t M, int64_t E, double c,
              bool has_threshold, double threshold, T* out, int num_threads) {
  const int nt = useful_threads(
      num_threads, 2.0 * static_cast<double>(N) * static_cast<double>(M) * static_cast<double>(E + 16));
  const auto k = sim_consts<T>(c, has_threshold, threshold);
  const SimFwd<T> epi = pick_fwd<T>();
  WsVec<T> na(N), nb(M);
  // Square tiles (edge 256 for large problems): the output is written once, in cache-sized pieces,
  // and each packed panel of b serves 256 rows (64-row panels were slower).
  const int64_t tc = sim_tile_edge<T>(N, M), tr = tc;
  const int64_t nr = (N + tr - 1) / tr, nc = (M + tc - 1) / tc;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    row_sq_norms(a, N, E, na.data());
    row_sq_norms(b, M, E, nb.data());
#pragma omp barrier
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < nr * nc; ++t) {
      const int64_t r0 = (t / nc) * tr, c0 = (t % nc) * tc;
      const int64_t rows = std::min(tr, N - r0), cols = std::min(tc, M - c0);
      T* X = out + r0 * M + c0;
      gemm_nt<T>(rows, cols, E, a + r0 * E, E, b + c0 * E, E, X, M, false);
      detail::SimTile<T> tile{rows, cols, X, M, na.data() + r0, nb.data() + c0,
                              nullptr, 0, nullptr, nullptr};
      epi(k, tile);
    }
  }
}

// Rectangles: at most 16 groups (enough parallel tiles for 16 threads) and 32 MiB of partials.
constexpr size_t kMaxGroups = 16;
constexpr size_t kMaxPartialBytes = size_t(32) << 20;

template <typename T>
void bwd_impl(const T* go, const T* a, const T* b, int64_t N, int64_t M, int64_t E, double c,
              bool has_threshold, double threshold, T* ga, T* gb, int num_threads) {
  const int nt = useful_threads(
      num_threads, 6.0 * static_cast<double>(N) * static_cast<double>(M) * static_cast<double>(E + 16));
  const auto k = sim_consts<T>(c, has_threshold, threshold);
  const SimBwd<T> epi = pick_bwd<T>();
  if (N == 0 || M == 0) {
    std::fill(ga, ga + N * E, T(0));
    std::fill(gb, gb + M * E, T(0));
    return;
  }
  const int64_t tile = sim_tile_edge<T>(N, M);
  const int64_t nr = (N + tile - 1) / tile, nc = (M + tile - 1) / tile;
  const int64_t short_rows = nc >= nr ? N : M;
  const size_t per_group = static_cast<size_t>(short_rows) * (static_cast<size_t>(E) * sizeof(T) + 8);
  const int64_t max_groups =
      1 + static_cast<int64_t>(std::min<size_t>(kMaxGroups - 1, kMaxPartialBytes / std::max<size_t>(per_group, 1)));
  const TileSchedule sched = make_tile_schedule(N, M, tile, max_groups);
  const int64_t G = sched.groups;

  WsVec<T> na(N), nb(M);
  // Row / column sums of g: the short side gets one copy per group (group 0 first).
  WsVec<double> rs(static_cast<size_t>(sched.group_cols ? G : 1) * N, 0.0);
  WsVec<double> cs(static_cast<size_t>(sched.group_cols ? 1 : G) * M, 0.0);
  WsArray<T> partial(G > 1 ? static_cast<size_t>(G - 1) * short_rows * E : 0);
  const size_t tt = static_cast<size_t>(tile) * tile;
  WsArray<T> xbuf(tt * nt);
  TileRunner runner(sched);

  auto do_tile = [&](const TilePos& tp, int tid) {
    const int64_t r0 = tp.i * tile, c0 = tp.j * tile;
    const int64_t rows = std::min(tile, N - r0), cols = std::min(tile, M - c0);
    T* X = xbuf.get() + tt * tid;
    gemm_nt<T>(rows, cols, E, a + r0 * E, E, b + c0 * E, E, X, tile, false);
    const size_t gr = sched.group_cols ? static_cast<size_t>(tp.group) : 0;
    const size_t gc = sched.group_cols ? 0 : static_cast<size_t>(tp.group);
    detail::SimTile<T> t{rows, cols, X, tile, na.data() + r0, nb.data() + c0,
                         go + r0 * M + c0, M, rs.data() + gr * N + r0, cs.data() + gc * M + c0};
    if (!epi(k, t)) return;  // all-zero g: the GEMMs would add exact zeros
    T* da = ga + r0 * E;
    T* db = gb + c0 * E;
    if (tp.group > 0) {
      T* base = partial.get() + static_cast<size_t>(tp.group - 1) * short_rows * E;
      if (sched.group_cols) da = base + r0 * E;
      else db = base + c0 * E;
    }
    gemm_nn<T>(rows, E, cols, X, tile, b + c0 * E, E, da, E, true);
    gemm_tn<T>(cols, E, rows, X, tile, a + r0 * E, E, db, E, true);
  };

  // grad = acc (+ group partials, in group order) - x * sum (sum over groups in group order).
  auto finish = [&](T* g, const T* x, int64_t n, const double* sums, int64_t ngroups,
                    bool has_partials) {
#pragma omp for schedule(static) nowait
    for (int64_t r = 0; r < n; ++r) {
      T* dst = g + r * E;
      if (has_partials)
        for (int64_t gi = 1; gi < ngroups; ++gi) {
          const T* src = partial.get() + (static_cast<size_t>(gi - 1) * n + r) * E;
          for (int64_t e = 0; e < E; ++e) dst[e] += src[e];
        }
      double s = 0.0;
      for (int64_t gi = 0; gi < ngroups; ++gi) s += sums[gi * n + r];
      const T st = static_cast<T>(s);
      const T* xr = x + r * E;
      for (int64_t e = 0; e < E; ++e) dst[e] -= xr[e] * st;
    }
  };

  // One parallel region (every extra fork / barrier costs a scheduler slice on a loaded machine).
  // The accumulators are zeroed first: all-zero tiles skip their GEMMs.
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    row_sq_norms(a, N, E, na.data());
    row_sq_norms(b, M, E, nb.data());
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < N; ++i) std::fill(ga + i * E, ga + (i + 1) * E, T(0));
#pragma omp for schedule(static) nowait
    for (int64_t j = 0; j < M; ++j) std::fill(gb + j * E, gb + (j + 1) * E, T(0));
    if (G > 1) {
      const int64_t np = (G - 1) * short_rows;
#pragma omp for schedule(static) nowait
      for (int64_t r = 0; r < np; ++r) std::fill(partial.get() + r * E, partial.get() + (r + 1) * E, T(0));
    }
#pragma omp barrier
    runner.work(do_tile, omp_tid());
#pragma omp barrier
    finish(ga, a, N, rs.data(), sched.group_cols ? G : 1, sched.group_cols && G > 1);
    finish(gb, b, M, cs.data(), sched.group_cols ? 1 : G, !sched.group_cols && G > 1);
  }
}

}  // namespace

void arctan_l2_similarity_fwd(DType dtype, const void* a, const void* b, int64_t N, int64_t M,
                              int64_t E, double c, bool has_threshold, double threshold, void* out,
                              int num_threads) {
  if (N == 0 || M == 0) return;
  switch (dtype) {
    case DType::kFloat32:
      fwd_impl<float>(static_cast<const float*>(a), static_cast<const float*>(b), N, M, E, c,
                      has_threshold, threshold, static_cast<float*>(out), num_threads);
      return;
    case DType::kFloat64:
      fwd_impl<double>(static_cast<const double*>(a), static_cast<const double*>(b), N, M, E, c,
                       has_threshold, threshold, static_cast<double*>(out), num_threads);
      return;
    default:
      throw TypeError(::molphenix::detail::concat("arctan_l2_similarity: dtype ", dtype_name(dtype),
                                     " is not supported on the CPU (float32 or float64)"));
  }
}

void arctan_l2_similarity_bwd(DType dtype, const void* grad_out, const void* a, const void* b,
                              int64_t N, int64_t M, int64_t E, double c, bool has_threshold,
                              double threshold, void* grad_a, void* grad_b, int num_threads) {
  switch (dtype) {
    case DType::kFloat32:
      bwd_impl<float>(static_cast<const float*>(grad_out), static_cast<const float*>(a),
                      static_cast<const float*>(b), N, M, E, c, has_threshold, threshold,
                      static_cast<float*>(grad_a), static_cast<float*>(grad_b), num_threads);
      return;
    case DType::kFloat64:
      bwd_impl<double>(static_cast<const double*>(grad_out), static_cast<const double*>(a),
                       static_cast<const double*>(b), N, M, E, c, has_threshold, threshold,
                       static_cast<double*>(grad_a), static_cast<double*>(grad_b), num_threads);
      return;
    default:
      throw TypeError(::molphenix::detail::concat("arctan_l2_similarity: dtype ", dtype_name(dtype),
                                     " is not supported on the CPU (float32 or float64)"));
  }
}

}  // namespace cpu
}  // namespace molphenix
