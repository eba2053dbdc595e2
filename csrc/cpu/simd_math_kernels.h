// Internal: the vectorised tile epilogues of s2l_loss and arctan_l2_similarity (instantiated once
// per ISA: scalar in s2l_loss.cpp / arctan_l2_similarity.cpp, AVX2 and AVX-512 in the *_avx2.cpp
// / *_avx512.cpp TUs), the plain-data structs that cross between those TUs, and the
// exclusive-writer tile schedule both drivers use.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "simd_math.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace molphenix {
namespace cpu {
namespace detail {

// ---- plain data crossing the ISA TUs (no ISA-specific code: ODR-safe) ------------------------

// Constants of the S2L epilogue, in the compute type T.
template <typename T>
struct S2LEpilogueConsts {
  T scale, bias;       // z = scale * x + bias
  T gamma, delta;      // w- = gamma - delta * s
  T c;                 // arctan width
  T threshold;         // s~ < threshold -> 0 (when has_threshold)
  T d2_skip;           // d2 > d2_skip guarantees s~ < threshold: atan not evaluated (+inf if none)
  T gscale;            // stored gradient tile = g * gscale (scale / normalizer)
  bool has_u, has_threshold, hard_diagonal;
  int64_t diag_offset;
};

// One S2L tile: rows x cols, global offsets row0/col0.
//   x  [rows, ldx]  in: raw dots <p_i, q_j>; out (want_grad): scale * dl/dz / normalizer
//   y  [rows, ldy]  <u_i, v_j> (null without u); nu [rows], nv [cols]: squared norms
// out[0..2] = sum over the tile of (l, g * x, g), g = dl/dz (not divided by the normalizer).
template <typename T>
struct S2LTile {
  int64_t rows, cols, row0, col0;
  T* x;
  int64_t ldx;
  const T* y;
  int64_t ldy;
  const T* nu;
  const T* nv;
  bool want_grad;
};

// arctan-L2 similarity tile epilogues.
template <typename T>
struct SimConsts {
  T c;
  T threshold;
  T d2_skip;  // d2 > d2_skip guarantees s~ < threshold (+inf without threshold)
  bool has_threshold;
};
// Forward: x [rows, ldx] holds <a_i, b_j>; overwritten with s. na [rows], nb [cols].
// Backward: x holds <a_i, b_j>; overwritten with g = -2 * grad_out * ds/dd2 (masked);
//   grad_out [rows, ldg]; row_sum[i] += sum_j g_ij, col_sum[j] += sum_i g_ij (float64, in row
//   order; the caller passes the global sums of this tile's rows / columns).
//   Returns whether any g is non-zero.
template <typename T>
struct SimTile {
  int64_t rows, cols;
  T* x;
  int64_t ldx;
  const T* na;
  const T* nb;
  const T* grad_out;
  int64_t ldg;
  double* row_sum;
  double* col_sum;
};

void s2l_epilogue_scalar(const S2LEpilogueConsts<float>&, const S2LTile<float>&, double*);
void s2l_epilogue_scalar(const S2LEpilogueConsts<double>&, const S2LTile<double>&, double*);
void s2l_epilogue_avx2(const S2LEpilogueConsts<float>&, const S2LTile<float>&, double*);
void s2l_epilogue_avx2(const S2LEpilogueConsts<double>&, const S2LTile<double>&, double*);
void s2l_epilogue_avx512(const S2LEpilogueConsts<float>&, const S2LTile<float>&, double*);
void s2l_epilogue_avx512(const S2LEpilogueConsts<double>&, const S2LTile<double>&, double*);

void sim_fwd_epilogue_scalar(const SimConsts<float>&, const SimTile<float>&);
void sim_fwd_epilogue_scalar(const SimConsts<double>&, const SimTile<double>&);
void sim_fwd_epilogue_avx2(const SimConsts<float>&, const SimTile<float>&);
void sim_fwd_epilogue_avx2(const SimConsts<double>&, const SimTile<double>&);
void sim_fwd_epilogue_avx512(const SimConsts<float>&, const SimTile<float>&);
void sim_fwd_epilogue_avx512(const SimConsts<double>&, const SimTile<double>&);
bool sim_bwd_epilogue_scalar(const SimConsts<float>&, const SimTile<float>&);
bool sim_bwd_epilogue_scalar(const SimConsts<double>&, const SimTile<double>&);
bool sim_bwd_epilogue_avx2(const SimConsts<float>&, const SimTile<float>&);
bool sim_bwd_epilogue_avx2(const SimConsts<double>&, const SimTile<double>&);
bool sim_bwd_epilogue_avx512(const SimConsts<float>&, const SimTile<float>&);
bool sim_bwd_epilogue_avx512(const SimConsts<double>&, const SimTile<double>&);

}  // namespace detail

namespace {  // NOLINT: per-TU instantiations (see simd_math.h)

// ---- deterministic tile schedule: a row pipeline ---------------------------------------------
//
// The B1 x B2 pair matrix is cut into square tiles (edge `tile`): nr row blocks x nc column
// blocks. Gradient tiles accumulate into their row block's accumulator (dP_i += G Q_j) and their
// column block's (dQ_j += G^T P_i). Every accumulator receives its contributions in natural
// order: a row block in increasing column order, a column block in increasing row order. That
// order is a function of the shapes only, so results are bitwise independent of num_threads, and
// no atomics on data or per-thread copies are needed.
//
// Execution: a "unit" is one row block's sweep over its columns, run by one thread start to end
// (the row side -- P_i, U_i, dP_i -- stays in L2 for the whole sweep). Units are handed out in
// row order through an atomic counter. Before tile (i, j) a thread waits until column j has
// received the contributions of all rows before i (a per-column progress counter, acquire /
// release); the thread on row i - 1 is then at most about one tile ahead, so with T threads T
// consecutive rows sweep in a pipeline, each a tile behind the previous one (the column side is
// reused from the shared cache). The first unit never waits, and a unit only waits on units
// handed out before it, so there is no deadlock for any thread count.
//
// Rectangles (say 1 row block x 64 column blocks) would leave a single unit. There the long side
// is split into `groups` contiguous ranges, each an independent sub-problem whose short-side
// accumulators are private partial buffers (group 0 writes the output itself), added in group
// order at the end. The group count is a function of the shapes (and a memory cap), never of the
// threads.
struct TilePos {
  int64_t i, j, group;
  bool first_row, first_col;
};
struct TileSchedule {
  int64_t tile = 0, nr = 0, nc = 0;
  int64_t groups = 1;
  bool group_cols = true;      // the column blocks are grouped (partials for the row side)
  std::vector<int64_t> start;  // long-side block range of each group: [start[g], start[g + 1])
};

inline TileSchedule make_tile_schedule(int64_t B1, int64_t B2, int64_t tile, int64_t max_groups) {
  TileSchedule s;
  s.tile = tile;
  s.nr = (B1 + tile - 1) / tile;
  s.nc = (B2 + tile - 1) / tile;
  s.group_cols = s.nc >= s.nr;
  const int64_t ns = std::min(s.nr, s.nc), nl = std::max(s.nr, s.nc);
  s.groups = std::max<int64_t>(1, std::min<int64_t>((nl + ns - 1) / ns, max_groups));
  s.start.resize(s.groups + 1);
  for (int64_t g = 0; g <= s.groups; ++g) s.start[g] = g * nl / s.groups;
  return s;
}

// Runs the schedule. Construct it outside the parallel region, then every thread of the region
// calls work(fn, thread_index); fn(tile_pos, thread_index) gets each tile once. work() does not
// end with a barrier. TilePos::first_row / first_col say whether the tile is the first
// contribution to its row-side / column-side accumulator (so callers need not zero them).
class TileRunner {
 public:
  explicit TileRunner(const TileSchedule& s) {
    int64_t max_rows = 0;
    for (int64_t g = 0; g < s.groups; ++g)
      max_rows = std::max(max_rows, s.group_cols ? s.nr : s.start[g + 1] - s.start[g]);
    // Interleave the groups (they are independent): unit k of every group before unit k + 1.
    for (int64_t k = 0; k < max_rows; ++k)
      for (int64_t g = 0; g < s.groups; ++g) {
        if (s.group_cols) {
          units_.push_back({g, k, s.start[g], s.start[g + 1], k, 0});
        } else if (s.start[g] + k < s.start[g + 1]) {
          units_.push_back({g, s.start[g] + k, 0, s.nc, k, g * s.nc});
        }
      }
    ntok_ = s.group_cols ? s.nc : s.groups * s.nc;
    done_.reset(new std::atomic<int64_t>[ntok_]);
    for (int64_t t = 0; t < ntok_; ++t) done_[t].store(0, std::memory_order_relaxed);
    next_.store(0, std::memory_order_relaxed);
  }

  template <class F>
  void work(F&& fn, int tid) {
    const int64_t nunits = static_cast<int64_t>(units_.size());
    for (;;) {
      const int64_t k = next_.fetch_add(1, std::memory_order_relaxed);
      if (k >= nunits) return;
      const Unit& u = units_[k];
      for (int64_t j = u.j0; j < u.j1; ++j) {
        std::atomic<int64_t>& d = done_[u.tok + j];
        for (int spins = 0; d.load(std::memory_order_acquire) != u.pos; ++spins) {
          if (spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
          } else {
            std::this_thread::yield();  // a loaded machine may have descheduled the producer
          }
        }
        fn(TilePos{u.row, j, u.group, j == u.j0, u.pos == 0}, tid);
        d.store(u.pos + 1, std::memory_order_release);
      }
    }
  }

 private:
  struct Unit {
    int64_t group, row, j0, j1, pos, tok;  // row block, its columns [j0, j1), rank in the columns
  };
  std::vector<Unit> units_;
  int64_t ntok_ = 0;
  std::unique_ptr<std::atomic<int64_t>[]> done_;
  std::atomic<int64_t> next_{0};
};

inline int omp_tid() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Squared row norms, accumulated in float64 and rounded once to T. An orphaned `omp for` with
// nowait: inside a parallel region the rows are shared out (the caller puts the barrier);
// outside one it runs serially.
template <typename T>
void row_sq_norms(const T* a, int64_t n, int64_t dim, T* out) {
#pragma omp for schedule(static) nowait
  for (int64_t i = 0; i < n; ++i) {
    const T* r = a + i * dim;
    double acc = 0.0;
    for (int64_t k = 0; k < dim; ++k) acc += static_cast<double>(r[k]) * static_cast<double>(r[k]);
    out[i] = static_cast<T>(acc);
  }
}

// Threads worth starting: tiny problems (below ~8 MFLOP, tens of microseconds) run on the calling
// thread, since waking a team costs more, and far more on a loaded machine. Results do not depend
// on the thread count, so this changes only the speed.
inline int useful_threads(int num_threads, double flops) {
  return flops < 8e6 ? 1 : std::max(1, num_threads);
}

// The largest d2 for which s~ = 1 - (4/pi) atan(d2 / c) can still be >= threshold, with a margin
// (relative 1e-3 plus an absolute 1e-6 in r) far larger than the rounding of the computed s~;
// beyond it the threshold zeroes s and atan is not evaluated. +inf when there is no threshold.
inline double arctan_skip_d2(double c, bool has_threshold, double threshold) {
  if (!has_threshold || threshold <= -1.0) return HUGE_VAL;
  const double r = std::tan((1.0 - threshold) * 0.78539816339744830962);
  if (!(r < 1e30)) return HUGE_VAL;
  return c * (r * (1.0 + 1e-3) + 1e-6);
}

constexpr double kFourOverPi = 1.27323954473516268615;  // 4 / pi

// s~ = 1 - (4/pi) atan(d2 / c), the reference's arithmetic order; thresholded.
template <class O>
MPX_SIMD_INLINE typename O::V arctan_sim(typename O::V d2, typename O::T c, bool has_threshold,
                                         typename O::T threshold) {
  using T = typename O::T;
  using V = typename O::V;
  const V r = O::div(d2, O::set1(c));
  V s = O::fnmadd(O::set1(T(kFourOverPi)), simd::atan_nonneg<O>(r), O::set1(T(1)));
  if (has_threshold) s = O::zero_unless(O::ge(s, O::set1(threshold)), s);
  return s;
}

// The S2L epilogue over one tile; see S2LTile. Per pair:
//   z = scale x + bias;  s (positive pair: 1; with u: thresholded arctan-L2; else 0)
//   w+ = s, w- = gamma - delta s (hard diagonal: 1, 0 on the positive pair), a = w+ + w-
//   e = exp(-|z|), softplus(z) = max(z, 0) + log1p(e), sigmoid(z) = (z >= 0 ? 1 : e) / (1 + e)
//   l = a softplus(z) - w+ z,  g = a sigmoid(z) - w+
template <class O>
void s2l_epilogue_impl(const detail::S2LEpilogueConsts<typename O::T>& k,
                       const detail::S2LTile<typename O::T>& t, double* out) {
  using T = typename O::T;
  using V = typename O::V;
  using M = typename O::M;
  constexpr int W = O::W;
  const V vscale = O::set1(k.scale), vbias = O::set1(k.bias);
  const V vgamma = O::set1(k.gamma), vdelta = O::set1(k.delta), vgs = O::set1(k.gscale);
  const V one = O::set1(T(1)), zero = O::set1(T(0)), two = O::set1(T(2));
  const V vskip = O::set1(k.d2_skip);
  const V iota = O::iota();
  typename O::Acc acc_l = O::acc_zero(), acc_gx = O::acc_zero(), acc_g = O::acc_zero();
  for (int64_t i = 0; i < t.rows; ++i) {
    T* xr = t.x + i * t.ldx;
    const T* yr = k.has_u ? t.y + i * t.ldy : nullptr;
    const V vnu = k.has_u ? O::set1(t.nu[i]) : zero;
    // Column (tile-local) of this row's positive pair; may be outside [0, cols).
    const int64_t jpos = t.row0 + i + k.diag_offset - t.col0;
    for (int64_t j = 0; j < t.cols; j += W) {
      const int n = static_cast<int>(std::min<int64_t>(W, t.cols - j));
      const M valid = O::valid(n);
      const V x = n == W ? O::load(xr + j) : O::load_n(xr + j, n);
      const V z = O::add(O::mul(vscale, x), vbias);
      V s = zero;
      if (k.has_u) {
        const V y = n == W ? O::load(yr + j) : O::load_n(yr + j, n);
        const V nv = n == W ? O::load(t.nv + j) : O::load_n(t.nv + j, n);
        const V d2 = O::max(O::fnmadd(two, y, O::add(vnu, nv)), zero);
        if (!k.has_threshold || O::any(O::mand(valid, O::le(d2, vskip))))
          s = arctan_sim<O>(d2, k.c, k.has_threshold, k.threshold);
      }
      M pos = O::none();
      if (jpos >= j && jpos < j + n) {
        pos = O::eq(iota, O::set1(static_cast<T>(jpos - j)));
        s = O::select(pos, one, s);
      }
      V wp = s;
      V a = O::add(wp, O::fnmadd(vdelta, s, vgamma));  // w+ + w-
      if (k.hard_diagonal) a = O::select(pos, one, a);
      const V e = simd::exp_nonpos<O>(O::sub(zero, O::abs(z)));
      const V m = O::add(one, e);
      const V inv = O::div(one, m);
      const V sp = O::add(O::max(z, zero), simd::log1p_01<O>(e, m, inv));
      const V l = O::fnmadd(wp, z, O::mul(a, sp));
      const V sig = O::select(O::ge(z, zero), inv, O::mul(e, inv));
      const V g = O::fnmadd(one, wp, O::mul(a, sig));
      if (n == W) {
        acc_l = O::acc_add(acc_l, l);
        acc_g = O::acc_add(acc_g, g);
        acc_gx = O::acc_add(acc_gx, O::mul(g, x));
      } else {
        acc_l = O::acc_add(acc_l, O::zero_unless(valid, l));
        acc_g = O::acc_add(acc_g, O::zero_unless(valid, g));
        acc_gx = O::acc_add(acc_gx, O::zero_unless(valid, O::mul(g, x)));
      }
      if (t.want_grad) {
        const V gs = O::mul(g, vgs);
        if (n == W) O::store(xr + j, gs);
        else O::store_n(xr + j, gs, n);
      }
    }
  }
  out[0] = O::acc_sum(acc_l);
  out[1] = O::acc_sum(acc_gx);
  out[2] = O::acc_sum(acc_g);
}

// arctan-L2 forward epilogue: x <- s~ (thresholded) from x = <a_i, b_j>.
template <class O>
void sim_fwd_epilogue_impl(const detail::SimConsts<typename O::T>& k,
                           const detail::SimTile<typename O::T>& t) {
  using T = typename O::T;
  using V = typename O::V;
  constexpr int W = O::W;
  const V zero = O::set1(T(0)), two = O::set1(T(2)), vskip = O::set1(k.d2_skip);
  for (int64_t i = 0; i < t.rows; ++i) {
    T* xr = t.x + i * t.ldx;
    const V vna = O::set1(t.na[i]);
    for (int64_t j = 0; j < t.cols; j += W) {
      const int n = static_cast<int>(std::min<int64_t>(W, t.cols - j));
      const V x = n == W ? O::load(xr + j) : O::load_n(xr + j, n);
      const V nb = n == W ? O::load(t.nb + j) : O::load_n(t.nb + j, n);
      const V d2 = O::max(O::fnmadd(two, x, O::add(vna, nb)), zero);
      V s = zero;
      if (!k.has_threshold || O::any(O::mand(O::valid(n), O::le(d2, vskip))))
        s = arctan_sim<O>(d2, k.c, k.has_threshold, k.threshold);
      if (n == W) O::store(xr + j, s);
      else O::store_n(xr + j, s, n);
    }
  }
}

// arctan-L2 backward epilogue: x <- g = -2 grad_out ds/dd2, ds/dd2 = -(4/pi)(1/c) / (1 + r^2),
// zero where s was thresholded to 0 or where the raw d2 was negative (clamped).
template <class O>
bool sim_bwd_epilogue_impl(const detail::SimConsts<typename O::T>& k,
                           const detail::SimTile<typename O::T>& t) {
  using T = typename O::T;
  using V = typename O::V;
  using M = typename O::M;
  constexpr int W = O::W;
  const V zero = O::set1(T(0)), one = O::set1(T(1)), two = O::set1(T(2));
  const V vskip = O::set1(k.d2_skip), vc = O::set1(k.c);
  // -2 * (-(4/pi) / c) = (8/pi) / c
  const V coef = O::set1(static_cast<T>(2.0 * kFourOverPi / static_cast<double>(k.c)));
  bool any_nonzero = false;
  for (int64_t i = 0; i < t.rows; ++i) {
    T* xr = t.x + i * t.ldx;
    const T* gr = t.grad_out + i * t.ldg;
    const V vna = O::set1(t.na[i]);
    typename O::Acc rs = O::acc_zero();
    bool row_nonzero = false;
    for (int64_t j = 0; j < t.cols; j += W) {
      const int n = static_cast<int>(std::min<int64_t>(W, t.cols - j));
      const M valid = O::valid(n);
      const V x = n == W ? O::load(xr + j) : O::load_n(xr + j, n);
      const V nb = n == W ? O::load(t.nb + j) : O::load_n(t.nb + j, n);
      const V raw = O::fnmadd(two, x, O::add(vna, nb));
      const M in = O::mand(valid, O::ge(raw, zero));
      V g = zero;
      if (O::any(in) && (!k.has_threshold || O::any(O::mand(in, O::le(raw, vskip))))) {
        const V d2 = O::max(raw, zero);
        M keep = in;
        if (k.has_threshold) {
          const V s = arctan_sim<O>(d2, k.c, false, k.threshold);
          keep = O::mand(keep, O::ge(s, O::set1(k.threshold)));
        }
        if (O::any(keep)) {
          const V r = O::div(d2, vc);
          const V go = n == W ? O::load(gr + j) : O::load_n(gr + j, n);
          g = O::zero_unless(keep, O::div(O::mul(coef, go), O::fmadd(r, r, one)));
          row_nonzero = true;
          rs = O::acc_add(rs, g);
          // column sums (float64), lane by lane in row order: deterministic
          alignas(64) T gl[W];
          O::store_n(gl, g, n);
          for (int l = 0; l < n; ++l) t.col_sum[j + l] += static_cast<double>(gl[l]);
        }
      }
      if (n == W) O::store(xr + j, g);
      else O::store_n(xr + j, g, n);
    }
    if (row_nonzero) {
      t.row_sum[i] += O::acc_sum(rs);
      any_nonzero = true;
    }
  }
  return any_nonzero;
}

}  // namespace
}  // namespace cpu
}  // namespace molphenix
