// Fused S2L loss on CUDA: loss and gradients (p, q, scale, bias) without materialising B1 x B2.
//
// Per 64 x 64 tile (i rows of p, j rows of q):
//   Z = P_i . Q_j^T (tile_nt: WMMA for bf16/f16, SIMT fp32/fp64 otherwise)
//   U = u_i . v_j^T (tile_nt in Acc precision: u is float32 / float64, never rounded to 16 bits)
//   epilogue: z = t Z + b; s from d2 = max(|u_i|^2 + |v_j|^2 - 2U, 0); l and g = dl/dz
//   dP_i += G . Q_j,  dQ_j += G^T . P_i  (tile_update; the factor t / normalizer is applied at the end)
// Deterministic mode (default): kernel R (one block per row tile, looping over all column tiles)
// accumulates dP_i and the per-row-tile loss partials; kernel C (one block per column tile,
// looping over all row tiles, recomputing Z, U and G) accumulates dQ_j. Every accumulator is
// owned by one block and updated in a fixed order: bitwise reproducible, no float atomics.
// Fast mode (deterministic=false): kernel R also adds G^T . P_i into dQ with float atomicAdd, and
// kernel C is skipped (about 40% fewer FLOPs; the last bits of dQ vary run to run).
// Workspace (Acc = float, double for float64): accP [B1p, Dp], accQ [B2p, Dp] (when
// compute_grad; B?p, Dp rounded up to 64), |u_i|^2 [B1p], |v_j|^2 [B2p] (with u), and one double
// triple per row tile. Peak at B = 2^20, D = 256: 2 GiB (float32 accumulators).
#pragma once
// Kernels and the host driver run_s2l<T>; included by s2l_loss.cu (public entry points, float32
// and float64) and by s2l_loss_bf16.cu / s2l_loss_f16.cu, so the instantiations compile in
// parallel.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <type_traits>

#include "molphenix/ops/s2l_loss.h"
#include "molphenix/options.h"
#include "tile.cuh"

namespace molphenix {
namespace cuda {
namespace {

using namespace detail;

template <class A>
struct Epi {
  A scale, bias, gamma, delta, c, thr, d2max;
  bool has_u, has_thr, hard;
  int64_t diag_offset;
};

__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double m_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float m_atan(float x) { return atanf(x); }
__device__ __forceinline__ double m_atan(double x) { return atan(x); }

// Pair loss l and its derivative g = dl/dz for one element.
template <class A>
__device__ __forceinline__ void s2l_pair(A dot, A uv, A un, A vn, bool pos, const Epi<A>& e,
                                         A& l, A& g) {
  const A z = e.scale * dot + e.bias;
  A wp, wm;
  if (pos) {
    wp = A(1);
    wm = e.hard ? A(0) : e.gamma - e.delta;
  } else {
    A s = A(0);
    if (e.has_u) {
      A d2 = un + vn - A(2) * uv;
      d2 = d2 > A(0) ? d2 : A(0);
      // atan is skipped only where the threshold certainly zeroes s (d2max has slack).
      if (!e.has_thr || d2 <= e.d2max) {
        const A st = A(1) - A(1.2732395447351628) * m_atan(d2 / e.c);  // 4/pi
        s = (e.has_thr && st < e.thr) ? A(0) : st;
      }
    }
    wp = s;
    wm = e.gamma - e.delta * s;
  }
  const A en = m_exp(-fabs(z));                 // in (0, 1]
  const A sp = (z > A(0) ? z : A(0)) + m_log1p(en);  // softplus(z)
  const A sig = z >= A(0) ? A(1) / (A(1) + en) : en / (A(1) + en);
  const A w = wp + wm;
  l = w * sp - wp * z;
  g = w * sig - wp;
}

// f16 keeps G = dl/dz in [-1, ~2] away from its subnormal range (G ~ 1e-5 is common: sigmoid of
// z ~ -10): G is stored pre-multiplied by 2^12 and the finishing factor divides it out (exact).
template <class T>
constexpr float kGScale = 1.0f;
template <>
constexpr float kGScale<__half> = 4096.0f;

template <class T>
struct S2LArgs {
  using Acc = typename Traits<T>::Acc;
  const T* p;
  const T* q;
  const Acc* u;
  const Acc* uc;
  const Acc* un;  // [B1] |u_i|^2
  const Acc* vn;  // [B2] |v_j|^2
  int64_t B1, B2, D, E, Dp;
  Acc* accP;  // [B1p, Dp]
  Acc* accQ;  // [B2p, Dp]
  double* partials;  // [row tiles, 3]
  bool compute_grad;
  Epi<Acc> e;
};

// kFast (bf16/f16 with MOLPHENIX_CUDA_MAINLOOP != simple): cp.async double-buffered tile_nt and
// 3xTF32 chunks, 16-byte update loads, and 2 blocks per SM (__launch_bounds__(256, 2)). Same
// WMMA instruction sequence per element as the simple engine: bitwise the same results.
template <class T, bool kFast>
constexpr size_t s2l_ops_bytes() {
  using Acc = typename Traits<T>::Acc;
  return align_up(cmax(cmax(cmax(nt_operand_bytes_v<T, kFast>(), nt_operand_bytes<Acc>()),
                            update_operand_bytes<T>()),
                       tf32_operand_bytes_v<kFast>()),
                  128);
}

template <class T, bool kFast = false>
constexpr size_t s2l_smem_bytes() {
  using Acc = typename Traits<T>::Acc;
  size_t ops = s2l_ops_bytes<T, kFast>();
  ops = align_up(ops, 128);
  const size_t tileC = align_up(size_t(kBM) * kLdC * sizeof(Acc), 128);
  const size_t gh = Traits<T>::kMMA ? align_up(size_t(kBM) * kLdG * sizeof(T), 128) : 0;
  return ops + 2 * tileC + 2 * gh + 2 * kBM * sizeof(int64_t) + 8 * 3 * sizeof(double) + 128;
}

// kRowOwner: block = row tile (dP, loss); else block = column tile (dQ).
// kOcc: minimum blocks per SM of the fast variant (2, the default, spills a little; faster than 1
// in unlogged H200 runs, see docs/design/cuda_kernels.md; MOLPHENIX_S2L_BLOCKS_PER_SM=1: no spills).
template <class T, bool kRowOwner, bool kAtomicQ, bool kTf32U, bool kFast, int kOcc = 1>
__global__ void __launch_bounds__(kThreads, kOcc) s2l_kernel(const S2LArgs<T> a) {
  using Acc = typename Traits<T>::Acc;
  extern __shared__ __align__(128) unsigned char smem[];
  const size_t ops_b = s2l_ops_bytes<T, kFast>();
  const size_t tileC = align_up(size_t(kBM) * kLdC * sizeof(Acc), 128);
  const size_t gh = Traits<T>::kMMA ? align_up(size_t(kBM) * kLdG * sizeof(T), 128) : 0;
  unsigned char* ops = smem;
  Acc* Zs = reinterpret_cast<Acc*>(smem + ops_b);
  Acc* Us = reinterpret_cast<Acc*>(smem + ops_b + tileC);
  T* Ghi = reinterpret_cast<T*>(smem + ops_b + 2 * tileC);
  T* Glo = reinterpret_cast<T*>(smem + ops_b + 2 * tileC + gh);
  int64_t* rmap = reinterpret_cast<int64_t*>(smem + ops_b + 2 * tileC + 2 * gh);
  int64_t* cmap = rmap + kBM;
  double* red = reinterpret_cast<double*>(cmap + kBN);  // [8 warps][3]

  const int tid = threadIdx.x;
  const int64_t own0 = static_cast<int64_t>(blockIdx.x) * kBM;  // first owned row (or column)
  const int64_t n_other = kRowOwner ? a.B2 : a.B1;
  const int64_t other_tiles = (n_other + kBM - 1) / kBM;
  if (kRowOwner)
    fill_row_map(rmap, own0, a.B1);
  else
    fill_row_map(cmap, own0, a.B2);

  // Element ownership in the epilogue: row er = tid / 4, columns ec0 .. ec0 + 15.
  const int er = tid >> 2, ec0 = (tid & 3) * 16;
  double loss = 0.0, dscale = 0.0, dbias = 0.0;

  for (int64_t t = 0; t < other_tiles; ++t) {
    const int64_t o0 = t * kBM;
    const int64_t r0 = kRowOwner ? own0 : o0;
    const int64_t c0 = kRowOwner ? o0 : own0;
    __syncthreads();  // maps and tiles of the previous iteration are no longer read
    if (kRowOwner)
      fill_row_map(cmap, o0, a.B2);
    else
      fill_row_map(rmap, o0, a.B1);
    __syncthreads();
    tile_nt<T, kFast>(a.p, a.D, rmap, a.q, a.D, cmap, a.D, ops, Zs);
    if (a.e.has_u) {
      if constexpr (kTf32U && sizeof(Acc) == 4)
        tile_nt_3xtf32<kFast>(a.u, a.E, rmap, a.uc, a.E, cmap, a.E, ops, Us);
      else
        tile_nt<Acc>(a.u, a.E, rmap, a.uc, a.E, cmap, a.E, ops, Us);
    }
    {
      const int64_t i = r0 + er;
      const Acc un = (a.e.has_u && i < a.B1) ? a.un[i] : Acc(0);
#pragma unroll 4
      for (int m = 0; m < 16; ++m) {
        const int c = ec0 + m;
        const int64_t j = c0 + c;
        Acc g = Acc(0);
        if (i < a.B1 && j < a.B2) {
          const Acc dot = Zs[er * kLdC + c];
          const Acc uv = a.e.has_u ? Us[er * kLdC + c] : Acc(0);
          const Acc vn = a.e.has_u ? a.vn[j] : Acc(0);
          Acc l;
          s2l_pair<Acc>(dot, uv, un, vn, j == i + a.e.diag_offset, a.e, l, g);
          if (kRowOwner) {
            loss += static_cast<double>(l);
            dscale += static_cast<double>(g) * static_cast<double>(dot);
            dbias += static_cast<double>(g);
          }
        }
        store_g<T>(Ghi, Glo, Zs, er, c, g * kGScale<T>);  // SIMT: overwrites Zs in place
      }
    }
    __syncthreads();
    if (a.compute_grad) {
      if (kRowOwner) {
        tile_update<T, false, false, kFast>(a.accP + own0 * a.Dp, a.Dp, kBM, a.Dp, 0, a.Dp, 0, a.q, a.D,
                                     cmap, a.D, Ghi, Glo, Zs, ops, nullptr);
        if (kAtomicQ) {
          const int64_t rows = a.B2 - c0 < kBN ? a.B2 - c0 : kBN;
          tile_update<T, true, true, kFast>(a.accQ + c0 * a.Dp, a.Dp, rows, a.Dp, 0, a.Dp, 0, a.p, a.D,
                                     rmap, a.D, Ghi, Glo, Zs, ops, reinterpret_cast<float*>(Us));
        }
      } else {
        tile_update<T, true, false, kFast>(a.accQ + own0 * a.Dp, a.Dp, kBN, a.Dp, 0, a.Dp, 0, a.p, a.D,
                                    rmap, a.D, Ghi, Glo, Zs, ops, nullptr);
      }
    }
  }

  if (kRowOwner) {
    // Fixed-order block reduction of the three partial sums.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      loss += __shfl_xor_sync(0xffffffffu, loss, o);
      dscale += __shfl_xor_sync(0xffffffffu, dscale, o);
      dbias += __shfl_xor_sync(0xffffffffu, dbias, o);
    }
    __syncthreads();
    const int warp = tid >> 5;
    if ((tid & 31) == 0) {
      red[warp * 3 + 0] = loss;
      red[warp * 3 + 1] = dscale;
      red[warp * 3 + 2] = dbias;
    }
    __syncthreads();
    if (tid < 3) {
      double s = 0.0;
      for (int w = 0; w < kThreads / 32; ++w) s += red[w * 3 + tid];
      a.partials[blockIdx.x * 3 + tid] = s;
    }
  }
}

// Sum of the per-row-tile partials in a fixed order -> stats (divided by the normalizer).
__global__ void s2l_stats_kernel(const double* __restrict__ partials, int64_t ntiles,
                                 double inv_norm, double* __restrict__ stats) {
  __shared__ double sh[3][256];
  const int tid = threadIdx.x;
  double s[3] = {0.0, 0.0, 0.0};
  for (int64_t t = tid; t < ntiles; t += 256)
    for (int k = 0; k < 3; ++k) s[k] += partials[t * 3 + k];
  for (int k = 0; k < 3; ++k) sh[k][tid] = s[k];
  __syncthreads();
  for (int w = 128; w > 0; w >>= 1) {
    if (tid < w)
      for (int k = 0; k < 3; ++k) sh[k][tid] += sh[k][tid + w];
    __syncthreads();
  }
  if (tid < 3) stats[tid] = sh[tid][0] * inv_norm;
}

// out[i][d] = (T)(acc[i][d] * factor) for the valid rows / columns.
template <class T>
__global__ void s2l_finish_kernel(const typename Traits<T>::Acc* __restrict__ acc, int64_t n,
                                  int64_t D, int64_t Dp, typename Traits<T>::Acc factor,
                                  T* __restrict__ out) {
  const int64_t total = n * D;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / D, d = idx % D;
    out[idx] = from_acc<T>(acc[i * Dp + d] * factor);
  }
}

struct Layout {
  int64_t B1p, B2p, Dp, row_tiles;
  size_t bytes;
};

template <class Acc>
struct Pieces {
  Acc* accP = nullptr;
  Acc* accQ = nullptr;
  Acc* un = nullptr;
  Acc* vn = nullptr;
  double* partials = nullptr;
};

template <class Acc>
Pieces<Acc> carve(void* base, int64_t B1, int64_t B2, int64_t D, const S2LParams& prm,
                  size_t* bytes) {
  Carve cv(base);
  Pieces<Acc> pc;
  const int64_t B1p = round_up(B1, kBM), B2p = round_up(B2, kBN), Dp = round_up(D, kDC);
  if (prm.compute_grad) {
    pc.accP = cv.take<Acc>(static_cast<size_t>(B1p * Dp));
    pc.accQ = cv.take<Acc>(static_cast<size_t>(B2p * Dp));
  }
  if (prm.has_u) {
    pc.un = cv.take<Acc>(static_cast<size_t>(B1p));
    pc.vn = cv.take<Acc>(static_cast<size_t>(B2p));
  }
  pc.partials = cv.take<double>(static_cast<size_t>(ceil_div(B1, kBM) * 3));
  *bytes = align_up(cv.off, 256);
  return pc;
}

template <class T>
void run_s2l(const void* p, const void* q, const void* u, const void* uc, int64_t B1, int64_t B2,
             int64_t D, int64_t E, const S2LParams& prm, double* stats, void* grad_p,
             void* grad_q, void* workspace, size_t workspace_bytes, cudaStream_t st) {
  using Acc = typename Traits<T>::Acc;
  size_t need = 0;
  Pieces<Acc> pc = carve<Acc>(workspace, B1, B2, D, prm, &need);
  if (workspace_bytes < need || (need > 0 && workspace == nullptr))
    throw ValueError(::molphenix::detail::concat("s2l_loss: workspace too small: need ", need, " bytes, got ",
                                    workspace_bytes));
  const int64_t Dp = round_up(D, kDC);
  const int64_t rt = ceil_div(B1, kBM), ct = ceil_div(B2, kBN);
  if (rt > 2147483647 || ct > 2147483647) throw ValueError("s2l_loss: batch too large");

  S2LArgs<T> a;
  a.p = static_cast<const T*>(p);
  a.q = static_cast<const T*>(q);
  a.u = static_cast<const Acc*>(u);
  a.uc = static_cast<const Acc*>(uc);
  a.un = pc.un;
  a.vn = pc.vn;
  a.B1 = B1;
  a.B2 = B2;
  a.D = D;
  a.E = E;
  a.Dp = Dp;
  a.accP = pc.accP;
  a.accQ = pc.accQ;
  a.partials = pc.partials;
  a.compute_grad = prm.compute_grad;
  a.e.scale = static_cast<Acc>(prm.scale);
  a.e.bias = static_cast<Acc>(prm.bias);
  a.e.gamma = static_cast<Acc>(prm.gamma);
  a.e.delta = static_cast<Acc>(prm.delta);
  a.e.c = static_cast<Acc>(prm.c);
  a.e.thr = static_cast<Acc>(prm.threshold);
  a.e.has_u = prm.has_u;
  a.e.has_thr = prm.has_threshold;
  a.e.hard = prm.hard_diagonal;
  a.e.diag_offset = prm.diag_offset;
  {
    // s~ >= theta  <=>  d2 <= c tan((1 - theta) pi / 4); generous slack, the exact test follows.
    const double ang = (1.0 - prm.threshold) * M_PI / 4.0;
    double d2max = INFINITY;
    if (ang < M_PI / 2 - 1e-6) d2max = prm.c * std::tan(ang) * (1.0 + 1e-3) + 1e-30;
    a.e.d2max = static_cast<Acc>(d2max);
  }

  if (prm.has_u) {
    launch_row_sqnorm<Acc>(a.u, B1, E, pc.un, st);
    launch_row_sqnorm<Acc>(a.uc, B2, E, pc.vn, st);
  }
  if (prm.compute_grad) {
    check_cuda(cudaMemsetAsync(pc.accP, 0, sizeof(Acc) * round_up(B1, kBM) * Dp, st), "memset");
    check_cuda(cudaMemsetAsync(pc.accQ, 0, sizeof(Acc) * round_up(B2, kBN) * Dp, st), "memset");
  }
  const bool atomic_q = prm.compute_grad && !prm.deterministic;
  // bf16/f16: u . v^T on tensor cores with the 3xTF32 split unless the run-time setting
  // s2l_u_simt (molphenix.set_options) asks for fp32 SIMT.
  const RuntimeOptions opts = runtime_options();
  const bool tf32u = Traits<T>::kMMA && prm.has_u && !opts.s2l_u_simt;
  auto run_all = [&](auto fast_tag, auto occ_tag) {
    constexpr bool kF = decltype(fast_tag)::value;
    constexpr int kO = decltype(occ_tag)::value;
    const size_t smem = s2l_smem_bytes<T, kF>();
    auto launch = [&](auto kernel, int64_t grid, const char* what) {
      set_smem(kernel, smem, "s2l_kernel smem");
      kernel<<<static_cast<unsigned>(grid), kThreads, smem, st>>>(a);
      check_launch(what);
    };
    if (tf32u) {
      // tf32u implies Traits<T>::kMMA; the guard only keeps float / double from instantiating
      // kernels they can never launch.
      if constexpr (Traits<T>::kMMA) {
      if (atomic_q)
        launch(s2l_kernel<T, true, true, true, kF, kO>, rt, "s2l_kernel (rows)");
      else
        launch(s2l_kernel<T, true, false, true, kF, kO>, rt, "s2l_kernel (rows)");
      if (prm.compute_grad && prm.deterministic)
        launch(s2l_kernel<T, false, false, true, kF, kO>, ct, "s2l_kernel (columns)");
      }
    } else {
      if (atomic_q)
        launch(s2l_kernel<T, true, true, false, kF, kO>, rt, "s2l_kernel (rows)");
      else
        launch(s2l_kernel<T, true, false, false, kF, kO>, rt, "s2l_kernel (rows)");
      if (prm.compute_grad && prm.deterministic)
        launch(s2l_kernel<T, false, false, false, kF, kO>, ct, "s2l_kernel (columns)");
    }
  };
  using One = std::integral_constant<int, 1>;
  if (Traits<T>::kMMA && fast::fast_enabled()) {
    if (opts.s2l_blocks_per_sm == 1)
      run_all(std::integral_constant<bool, Traits<T>::kMMA>{}, One{});
    else
      run_all(std::integral_constant<bool, Traits<T>::kMMA>{},
              std::integral_constant<int, Traits<T>::kMMA ? 2 : 1>{});
  } else {
    run_all(std::false_type{}, One{});
  }
  s2l_stats_kernel<<<1, 256, 0, st>>>(pc.partials, rt, 1.0 / prm.normalizer, stats);
  check_launch("s2l_stats_kernel");
  if (prm.compute_grad) {
    const Acc factor = static_cast<Acc>(prm.scale / prm.normalizer / kGScale<T>);
    const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(B1 * D, 256), 4 * 65536));
    s2l_finish_kernel<T><<<blocks, 256, 0, st>>>(pc.accP, B1, D, Dp, factor, static_cast<T*>(grad_p));
    check_launch("s2l_finish_kernel (p)");
    const int blocks2 = static_cast<int>(std::min<int64_t>(ceil_div(B2 * D, 256), 4 * 65536));
    s2l_finish_kernel<T><<<blocks2, 256, 0, st>>>(pc.accQ, B2, D, Dp, factor, static_cast<T*>(grad_q));
    check_launch("s2l_finish_kernel (q)");
  }
}

}  // namespace

// run_s2l<T> for one dtype each (float, double: s2l_loss.cu; __nv_bfloat16: s2l_loss_bf16.cu;
// __half: s2l_loss_f16.cu); the first argument is the dtype tag.
#define MPX_S2L_RUN_PARAMS                                                                        \
  const void *p, const void *q, const void *u, const void *uc, int64_t B1, int64_t B2, int64_t D, \
      int64_t E, const S2LParams &prm, double *stats, void *grad_p, void *grad_q, void *workspace, \
      size_t workspace_bytes, cudaStream_t st
#define MPX_S2L_RUN_ARGS \
  p, q, u, uc, B1, B2, D, E, prm, stats, grad_p, grad_q, workspace, workspace_bytes, st
void s2l_run(float, MPX_S2L_RUN_PARAMS);
void s2l_run(double, MPX_S2L_RUN_PARAMS);
void s2l_run(__nv_bfloat16, MPX_S2L_RUN_PARAMS);
void s2l_run(__half, MPX_S2L_RUN_PARAMS);

}  // namespace cuda
}  // namespace molphenix
