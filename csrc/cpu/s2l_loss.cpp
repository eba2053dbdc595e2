// Fused S2L loss on the CPU: loss and gradients in one tiled pass, never materialising B1 x B2.
//
// Per tile (rows of p/u x columns of q/u_cols, edge 64..256):
//   X  = P_i Q_j^T            (gemm_nt, K = D)   raw dots, in a per-thread tile buffer
//   Y  = U_i V_j^T            (gemm_nt, K = E)   only with u
//   epilogue (SIMD, simd_math_kernels.h): z, soft labels, weights, loss / dscale / dbias partial
//     sums (float64, per tile), and G = scale * dl/dz / normalizer written over X
//   dP_i += G Q_j             (gemm_nn, K = tile columns)
//   dQ_j += G^T P_i           (gemm_tn, K = tile rows)
// Tiles run on the row pipeline of simd_math_kernels.h (every accumulator gets its contributions
// in a fixed natural order; no atomics on data, no per-thread B x D buffers). The loss / dscale /
// dbias sums: each unit (one row block's sweep over its columns, run start to end by one thread)
// adds its tiles' sums in column order into its own slot; the slots are added in unit order at
// the end. That order is a function of the shapes only, so results are bitwise independent of
// num_threads (they do depend on the SIMD level and on the tile edge: both change the rounding).
//
// Working memory (counted by workspace.h; bounds stated in ops.s2l_loss's docstring): squared
// norms of u rows and columns (B1 + B2 values, with u only), per-thread tile buffers (2 tile^2
// values), 3 doubles per unit (at most ceil(B1 / tile) * 16 units: 24 bytes per tile row instead
// of per tile), and for very rectangular shapes at most 32 MiB of group partials.
#include "molphenix/ops/s2l_loss.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "gemm.h"
#include "molphenix/cpu_features.h"
#include "molphenix/options.h"
#include "molphenix/workspace.h"
#include "simd_math_kernels.h"

namespace molphenix {
namespace cpu {
namespace detail {

void s2l_epilogue_scalar(const S2LEpilogueConsts<float>& k, const S2LTile<float>& t, double* out) {
  s2l_epilogue_impl<simd::ScalarOps<float>>(k, t, out);
}
void s2l_epilogue_scalar(const S2LEpilogueConsts<double>& k, const S2LTile<double>& t,
                         double* out) {
  s2l_epilogue_impl<simd::ScalarOps<double>>(k, t, out);
}

}  // namespace detail

namespace {

template <typename T>
using S2LEpilogue = void (*)(const detail::S2LEpilogueConsts<T>&, const detail::S2LTile<T>&,
                             double*);

template <typename T>
S2LEpilogue<T> pick_s2l_epilogue() {
  switch (simd_level()) {
#ifdef MOLPHENIX_HAVE_AVX512
    case SimdLevel::kAVX512:
      return &detail::s2l_epilogue_avx512;
#endif
#ifdef MOLPHENIX_HAVE_AVX2
    case SimdLevel::kAVX2:
      return &detail::s2l_epilogue_avx2;
#endif
    default:
      return &detail::s2l_epilogue_scalar;
  }
}

// Tile edge: large tiles keep the four GEMMs efficient (their K is D, E or the tile edge); small
// problems use smaller tiles so that both threads get work.
template <typename T>
int64_t s2l_tile_edge(int64_t B1, int64_t B2) {
  const double pairs = static_cast<double>(B1) * static_cast<double>(B2);
  int64_t tile = pairs >= 2048.0 * 2048.0 ? 256 : pairs >= 256.0 * 256.0 ? 128 : 64;
  if (sizeof(T) == 8) tile = std::min<int64_t>(tile, 128);
  // Tuning setting (RuntimeOptions::s2l_tile, molphenix.set_options(s2l_tile=...)): 64, 128,
  // 256 or 512. It changes the rounding (the order of the sums); results stay independent of
  // the thread count for any tile edge.
  const int forced = runtime_options().s2l_tile;
  if (forced == 64 || forced == 128 || forced == 256 || forced == 512) tile = forced;
  return tile;
}

// Rectangles: at most 16 groups (enough parallel tiles for 16 threads) and 32 MiB of partials.
constexpr size_t kMaxGroups = 16;
constexpr size_t kMaxPartialBytes = size_t(32) << 20;

template <typename T>
void s2l_impl(const T* p, const T* q, const T* u, const T* uc, int64_t B1, int64_t B2, int64_t D,
              int64_t E, const S2LParams& prm, double* stats, T* gp, T* gq, int num_threads) {
  const bool grad = prm.compute_grad;
  const bool has_u = prm.has_u;
  const int nt = useful_threads(
      num_threads, 2.0 * static_cast<double>(B1) * static_cast<double>(B2) * static_cast<double>(3 * D + E + 16));
  const int64_t tile = s2l_tile_edge<T>(B1, B2);

  // Group partials hold the gradient of the short side: cap them in memory.
  const int64_t nr = (B1 + tile - 1) / tile, nc = (B2 + tile - 1) / tile;
  const int64_t short_rows = nc >= nr ? B1 : B2;
  const size_t per_group = static_cast<size_t>(short_rows) * static_cast<size_t>(D) * sizeof(T);
  const int64_t max_groups =
      1 + static_cast<int64_t>(per_group == 0 ? kMaxGroups - 1 : std::min<size_t>(kMaxGroups - 1, kMaxPartialBytes / per_group));
  const TileSchedule sched = make_tile_schedule(B1, B2, tile, max_groups);

  detail::S2LEpilogueConsts<T> k;
  k.scale = static_cast<T>(prm.scale);
  k.bias = static_cast<T>(prm.bias);
  k.gamma = static_cast<T>(prm.gamma);
  k.delta = static_cast<T>(prm.delta);
  k.c = static_cast<T>(prm.c);
  k.threshold = static_cast<T>(prm.threshold);
  k.d2_skip = static_cast<T>(arctan_skip_d2(prm.c, prm.has_threshold, prm.threshold));
  k.gscale = static_cast<T>(prm.scale / prm.normalizer);
  k.has_u = has_u;
  k.has_threshold = prm.has_threshold;
  k.hard_diagonal = prm.hard_diagonal;
  k.diag_offset = prm.diag_offset;
  const S2LEpilogue<T> epilogue = pick_s2l_epilogue<T>();

  // Gradient accumulators: the outputs themselves, plus partials of the short side for groups
  // >= 1. No zero fill: each accumulator's first contribution overwrites (TilePos::first_*).
  const int64_t G = sched.groups;
  WsArray<T> partial;
  if (grad && G > 1) partial.reset(static_cast<size_t>(G - 1) * short_rows * D);
  WsArray<T> nu, nv;
  if (has_u) {
    nu.reset(B1);
    nv.reset(B2);
  }
  // One slot of (loss, g x, g) sums per unit: unit (group g, row block i) is slot g * nr + i
  // when the columns are grouped, else the row block i (each row block is in one group).
  const int64_t nslots = sched.group_cols ? sched.groups * sched.nr : sched.nr;
  WsVec<double> unit_sums(static_cast<size_t>(nslots) * 3, 0.0);
  const size_t tt = static_cast<size_t>(tile) * tile;
  WsArray<T> xbuf(tt * nt), ybuf(has_u ? tt * nt : 0);
  TileRunner runner(sched);

  auto do_tile = [&](const TilePos& tp, int tid) {
    const int64_t r0 = tp.i * tile, c0 = tp.j * tile;
    const int64_t rows = std::min(tile, B1 - r0), cols = std::min(tile, B2 - c0);
    T* X = xbuf.get() + tt * tid;
    gemm_nt<T>(rows, cols, D, p + r0 * D, D, q + c0 * D, D, X, tile, false);
    T* Y = nullptr;
    if (has_u) {
      Y = ybuf.get() + tt * tid;
      gemm_nt<T>(rows, cols, E, u + r0 * E, E, uc + c0 * E, E, Y, tile, false);
    }
    detail::S2LTile<T> t{rows, cols, r0, c0, X, tile, Y, tile,
                         has_u ? nu.get() + r0 : nullptr, has_u ? nv.get() + c0 : nullptr, grad};
    double ts[3];
    epilogue(k, t, ts);
    // The unit's tiles arrive in column order, on one thread: a fixed order of the sums.
    double* slot = unit_sums.data() + 3 * (sched.group_cols ? tp.group * sched.nr + tp.i : tp.i);
    if (tp.first_row) {
      slot[0] = ts[0];
      slot[1] = ts[1];
      slot[2] = ts[2];
    } else {
      slot[0] += ts[0];
      slot[1] += ts[1];
      slot[2] += ts[2];
    }
    if (!grad) return;
    // Group g >= 1 accumulates the short side into its partial buffer.
    T* dp = gp + r0 * D;
    T* dq = gq + c0 * D;
    if (tp.group > 0) {
      T* base = partial.get() + static_cast<size_t>(tp.group - 1) * short_rows * D;
      if (sched.group_cols) dp = base + r0 * D;
      else dq = base + c0 * D;
    }
    gemm_nn<T>(rows, D, cols, X, tile, q + c0 * D, D, dp, D, !tp.first_row);
    gemm_tn<T>(cols, D, rows, X, tile, p + r0 * D, D, dq, D, !tp.first_col);
  };

  // One parallel region (every extra fork / barrier costs a scheduler slice on a loaded machine).
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    if (has_u) {
      row_sq_norms(u, B1, E, nu.get());
      row_sq_norms(uc, B2, E, nv.get());
#pragma omp barrier
    }
    runner.work(do_tile, omp_tid());
    if (grad && G > 1) {
#pragma omp barrier
      T* out = sched.group_cols ? gp : gq;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < short_rows; ++r)
        for (int64_t g = 1; g < G; ++g) {
          const T* src = partial.get() + (static_cast<size_t>(g - 1) * short_rows + r) * D;
          T* dst = out + r * D;
          for (int64_t d = 0; d < D; ++d) dst[d] += src[d];
        }
    }
  }

  double sl = 0.0, sgx = 0.0, sg = 0.0;
  for (size_t t = 0; t < unit_sums.size(); t += 3) {
    sl += unit_sums[t];
    sgx += unit_sums[t + 1];
    sg += unit_sums[t + 2];
  }
  stats[0] = sl / prm.normalizer;
  stats[1] = sgx / prm.normalizer;
  stats[2] = sg / prm.normalizer;
}

}  // namespace

void s2l_loss_fwd(DType dtype, const void* p, const void* q, const void* u, const void* u_cols,
                  int64_t B1, int64_t B2, int64_t D, int64_t E, const S2LParams& prm,
                  double* stats, void* grad_p, void* grad_q, int num_threads) {
  MPX_CHECK_VALUE(B1 > 0 && B2 > 0, "s2l_loss: empty batch (B1 = ", B1, ", B2 = ", B2, ")");
  MPX_CHECK_VALUE(!prm.has_u || (u != nullptr && u_cols != nullptr), "s2l_loss: u is null");
  MPX_CHECK_VALUE(!prm.compute_grad || (grad_p != nullptr && grad_q != nullptr),
                  "s2l_loss: gradient outputs are null");
  switch (dtype) {
    case DType::kFloat32:
      s2l_impl<float>(static_cast<const float*>(p), static_cast<const float*>(q),
                      static_cast<const float*>(u), static_cast<const float*>(u_cols), B1, B2, D,
                      prm.has_u ? E : 0, prm, stats, static_cast<float*>(grad_p),
                      static_cast<float*>(grad_q), num_threads);
      return;
    case DType::kFloat64:
      s2l_impl<double>(static_cast<const double*>(p), static_cast<const double*>(q),
                       static_cast<const double*>(u), static_cast<const double*>(u_cols), B1, B2, D,
                       prm.has_u ? E : 0, prm, stats, static_cast<double*>(grad_p),
                       static_cast<double*>(grad_q), num_threads);
      return;
    default:
      throw TypeError(::molphenix::detail::concat("s2l_loss: dtype ", dtype_name(dtype),
                                     " is not supported on the CPU (float32 or float64)"));
  }
}

}  // namespace cpu
}  // namespace molphenix
