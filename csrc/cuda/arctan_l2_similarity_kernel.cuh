// arctan-L2 similarity on CUDA, forward and backward.
//   s_ij = 1 - (4/pi) atan(d2_ij / c),  d2 = max(|a_i|^2 + |b_j|^2 - 2<a_i, b_j>, 0), zeroed below
//   the threshold. <a_i, b_j> comes from tile_nt (WMMA with float accumulation for bf16/f16, SIMT
//   fp32/fp64 otherwise); norms are fp32/fp64 sums of the input values, computed in-block.
// Backward (no workspace in the interface): W_ij = g_ij ds/dd2 (0 where thresholded or clamped),
//   grad_a_i = 2 (sum_j W_ij a_i - sum_j W_ij b_j)   (row kernel: block owns a row tile of a)
//   grad_b_j = 2 (sum_i W_ij b_j - sum_i W_ij a_i)   (column kernel: block owns a row tile of b)
//   float32/float64 accumulate in place in the output (owned rows, fixed order: deterministic);
//   bf16/f16 accumulate in fp32 shared memory, E in chunks of at most 512 columns (the tile
//   products are recomputed per chunk when E > 512).
#pragma once
// Kernels and host drivers; the entry points are in arctan_l2_similarity_fwd.cu and _bwd.cu.
#include <algorithm>
#include <cmath>

#include "molphenix/ops/arctan_l2_similarity.h"
#include "tile.cuh"

namespace molphenix {
namespace cuda {
namespace {

using namespace detail;

constexpr double kFourOverPi = 1.2732395447351628;

__device__ __forceinline__ float m_atan(float x) { return atanf(x); }
__device__ __forceinline__ double m_atan(double x) { return atan(x); }

// out[r] = |X[map[r]]|^2 for the 64 rows of a tile (Acc, fma in increasing k, warp per row).
template <class T>
__device__ __forceinline__ void tile_norms(const T* __restrict__ X, int64_t K, const int64_t* map,
                                           typename Traits<T>::Acc* out) {
  using Acc = typename Traits<T>::Acc;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int r = warp; r < kBM; r += kThreads / 32) {
    const int64_t g = map[r];
    Acc s = Acc(0);
    if (g >= 0)
      for (int64_t k = lane; k < K; k += 32) {
        const Acc v = to_acc(X[g * K + k]);
        s = fma_acc(v, v, s);
      }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s = add_rn(s, __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) out[r] = s;
  }
}

template <class T>
constexpr size_t fwd_smem_bytes() {
  using Acc = typename Traits<T>::Acc;
  return align_up(nt_operand_bytes<T>(), 128) + align_up(size_t(kBM) * kLdC * sizeof(Acc), 128) +
         2 * kBM * sizeof(int64_t) + 2 * kBM * sizeof(Acc);
}

template <class T>
__global__ void __launch_bounds__(kThreads) arctan_fwd_kernel(const T* __restrict__ a,
                                                              const T* __restrict__ b, int64_t N,
                                                              int64_t M, int64_t E,
                                                              typename Traits<T>::Acc c,
                                                              bool has_thr,
                                                              typename Traits<T>::Acc thr,
                                                              T* __restrict__ out) {
  using Acc = typename Traits<T>::Acc;
  extern __shared__ __align__(128) unsigned char smem[];
  const size_t ops_b = align_up(nt_operand_bytes<T>(), 128);
  unsigned char* ops = smem;
  Acc* Zs = reinterpret_cast<Acc*>(smem + ops_b);
  int64_t* rmap = reinterpret_cast<int64_t*>(smem + ops_b + align_up(size_t(kBM) * kLdC * sizeof(Acc), 128));
  int64_t* cmap = rmap + kBM;
  Acc* an = reinterpret_cast<Acc*>(cmap + kBN);
  Acc* bn = an + kBM;
  const int64_t col_tiles = (M + kBN - 1) / kBN;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int tid = threadIdx.x;
  const int er = tid >> 2, ec0 = (tid & 3) * 16;
  fill_row_map(rmap, r0, N);
  __syncthreads();
  tile_norms<T>(a, E, rmap, an);
  for (int64_t ct = blockIdx.y; ct < col_tiles; ct += gridDim.y) {
    const int64_t c0 = ct * kBN;
    __syncthreads();
    fill_row_map(cmap, c0, M);
    __syncthreads();
    tile_norms<T>(b, E, cmap, bn);
    tile_nt<T>(a, E, rmap, b, E, cmap, E, ops, Zs);  // ends with __syncthreads
    const int64_t i = r0 + er;
    if (i < N) {
      for (int m = 0; m < 16; ++m) {
        const int cc = ec0 + m;
        const int64_t j = c0 + cc;
        if (j >= M) break;
        Acc d2 = an[er] + bn[cc] - Acc(2) * Zs[er * kLdC + cc];
        d2 = d2 > Acc(0) ? d2 : Acc(0);
        Acc s = Acc(1) - Acc(kFourOverPi) * m_atan(d2 / c);
        if (has_thr && !(s >= thr)) s = Acc(0);
        out[i * M + j] = from_acc<T>(s);
      }
    }
  }
}

// ---- backward ---------------------------------------------------------------------------------
template <class T>
struct BwdArgs {
  using Acc = typename Traits<T>::Acc;
  const T* g;     // [N, M]
  const T* own;   // rows owned: a (row kernel) or b (column kernel)
  const T* oth;   // the other side
  int64_t n_own, n_oth, N, M, E;
  Acc c, thr;
  bool has_thr;
  T* grad;        // [n_own, E]
  int64_t ec;     // MMA path: E chunk (multiple of 64)
};

template <class T>
constexpr size_t bwd_fixed_smem_bytes() {
  using Acc = typename Traits<T>::Acc;
  size_t ops = align_up(cmax(nt_operand_bytes<T>(), update_operand_bytes<T>()), 128);
  const size_t tileC = align_up(size_t(kBM) * kLdC * sizeof(Acc), 128);
  const size_t gh = Traits<T>::kMMA ? align_up(size_t(kBM) * kLdG * sizeof(T), 128) : 0;
  return ops + tileC + 2 * gh + 2 * kBM * sizeof(int64_t) + 3 * kBM * sizeof(Acc) + 128;
}

// kTransposed == false: rows of the tile are the owned rows (a), columns are b.
// kTransposed == true : rows of the tile are a (other), columns are the owned rows (b).
template <class T, bool kTransposed>
__global__ void __launch_bounds__(kThreads) arctan_bwd_kernel(const BwdArgs<T> p) {
  using Acc = typename Traits<T>::Acc;
  extern __shared__ __align__(128) unsigned char smem[];
  const size_t ops_b = align_up(cmax(nt_operand_bytes<T>(), update_operand_bytes<T>()), 128);
  const size_t tileC = align_up(size_t(kBM) * kLdC * sizeof(Acc), 128);
  const size_t gh = Traits<T>::kMMA ? align_up(size_t(kBM) * kLdG * sizeof(T), 128) : 0;
  unsigned char* ops = smem;
  Acc* Zs = reinterpret_cast<Acc*>(smem + ops_b);
  T* Ghi = reinterpret_cast<T*>(smem + ops_b + tileC);
  T* Glo = reinterpret_cast<T*>(smem + ops_b + tileC + gh);
  int64_t* omap = reinterpret_cast<int64_t*>(smem + ops_b + tileC + 2 * gh);  // owned rows
  int64_t* xmap = omap + kBM;                                                 // other rows
  Acc* on = reinterpret_cast<Acc*>(xmap + kBM);
  Acc* xn = on + kBM;
  Acc* rsum = xn + kBM;
  Acc* accs = reinterpret_cast<Acc*>(smem + bwd_fixed_smem_bytes<T>());  // MMA: [64][ec]

  const int tid = threadIdx.x;
  const int er = tid >> 2, ec0 = (tid & 3) * 16;
  const int64_t own0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t own_rows = std::min<int64_t>(kBM, p.n_own - own0);
  const int64_t oth_tiles = (p.n_oth + kBM - 1) / kBM;
  const int64_t Ep = (p.E + kDC - 1) / kDC * kDC;
  const Acc coef = -Acc(kFourOverPi) / p.c;
  fill_row_map(omap, own0, p.n_own);
  __syncthreads();
  tile_norms<T>(p.own, p.E, omap, on);

  // SIMT: one pass, accumulating in the output. MMA: one pass per E chunk.
  const int64_t chunk = Traits<T>::kMMA ? p.ec : Ep;
  for (int64_t e0 = 0; e0 < Ep; e0 += chunk) {
    const int64_t e1 = std::min<int64_t>(Ep, e0 + chunk);
    Acc my_sum = Acc(0);  // thread tid < 64: running sum of W over its owned row
    if constexpr (Traits<T>::kMMA) {
      for (int64_t idx = tid; idx < kBM * chunk; idx += kThreads) accs[idx] = Acc(0);
    }
    for (int64_t t = 0; t < oth_tiles; ++t) {
      const int64_t x0 = t * kBM;
      __syncthreads();
      fill_row_map(xmap, x0, p.n_oth);
      __syncthreads();
      tile_norms<T>(p.oth, p.E, xmap, xn);
      if (kTransposed)
        tile_nt<T>(p.oth, p.E, xmap, p.own, p.E, omap, p.E, ops, Zs);
      else
        tile_nt<T>(p.own, p.E, omap, p.oth, p.E, xmap, p.E, ops, Zs);
      // Epilogue: element (er, ec0 + m) of the [a rows][b rows] tile.
      const int64_t r0 = kTransposed ? x0 : own0;
      const int64_t c0 = kTransposed ? own0 : x0;
      const int64_t i = r0 + er;
      const Acc ni = kTransposed ? xn[er] : on[er];
      for (int m = 0; m < 16; ++m) {
        const int cc = ec0 + m;
        const int64_t j = c0 + cc;
        Acc w = Acc(0);
        if (i < p.N && j < p.M) {
          const Acc nj = kTransposed ? on[cc] : xn[cc];
          const Acc raw = ni + nj - Acc(2) * Zs[er * kLdC + cc];
          if (raw >= Acc(0)) {
            const Acc x = raw / p.c;
            const Acc s = Acc(1) - Acc(kFourOverPi) * m_atan(x);
            if (!p.has_thr || s >= p.thr) w = to_acc(p.g[i * p.M + j]) * coef / (Acc(1) + x * x);
          }
        }
        store_g<T>(Ghi, Glo, Zs, er, cc, w);
        if constexpr (Traits<T>::kMMA) Zs[er * kLdC + cc] = w;  // for the row/column sums
      }
      __syncthreads();
      if (tid < kBM) {
        Acc s = Acc(0);
        for (int k = 0; k < kBM; ++k) s += kTransposed ? Zs[k * kLdC + tid] : Zs[tid * kLdC + k];
        my_sum += s;
      }
      if constexpr (Traits<T>::kMMA) {
        tile_update<T, kTransposed, false>(accs, chunk, kBM, e1, e0, e1, e0, p.oth, p.E, xmap, p.E,
                                           Ghi, Glo, Zs, ops, nullptr);
      } else {
        tile_update<T, kTransposed, false>(reinterpret_cast<Acc*>(p.grad) + own0 * p.E, p.E,
                                           own_rows, p.E, 0, Ep, 0, p.oth, p.E, xmap, p.E, Ghi,
                                           Glo, Zs, ops, nullptr);
      }
    }
    if (tid < kBM) rsum[tid] = my_sum;
    __syncthreads();
    // grad = 2 (rowsum * own - acc)
    const int64_t ecols = std::min<int64_t>(e1, p.E) - e0;
    for (int64_t idx = tid; idx < own_rows * ecols; idx += kThreads) {
      const int64_t r = idx / ecols, e = e0 + idx % ecols;
      const Acc x = to_acc(p.own[(own0 + r) * p.E + e]);
      Acc acc;
      if constexpr (Traits<T>::kMMA)
        acc = accs[r * chunk + (e - e0)];
      else
        acc = to_acc(p.grad[(own0 + r) * p.E + e]);
      p.grad[(own0 + r) * p.E + e] = from_acc<T>(Acc(2) * (rsum[r] * x - acc));
    }
    __syncthreads();
  }
}

template <class T>
void run_fwd(const void* a, const void* b, int64_t N, int64_t M, int64_t E, double c,
             bool has_thr, double thr, void* out, cudaStream_t st) {
  using Acc = typename Traits<T>::Acc;
  const int64_t rt = ceil_div(N, kBM), ct = ceil_div(M, kBN);
  if (rt > 2147483647) throw ValueError("arctan_l2_similarity: too many rows");
  const unsigned gy = static_cast<unsigned>(std::min<int64_t>(ct, 65535));
  const size_t smem = fwd_smem_bytes<T>();
  auto k = arctan_fwd_kernel<T>;
  set_smem(k, smem, "arctan_fwd_kernel smem");
  k<<<dim3(static_cast<unsigned>(rt), gy), kThreads, smem, st>>>(
      static_cast<const T*>(a), static_cast<const T*>(b), N, M, E, static_cast<Acc>(c), has_thr,
      static_cast<Acc>(thr), static_cast<T*>(out));
  check_launch("arctan_fwd_kernel");
}

template <class T>
void run_bwd(const void* g, const void* a, const void* b, int64_t N, int64_t M, int64_t E,
             double c, bool has_thr, double thr, void* ga, void* gb, cudaStream_t st) {
  using Acc = typename Traits<T>::Acc;
  const int64_t Ep = round_up(E, kDC);
  int64_t ec = Ep;
  size_t smem = bwd_fixed_smem_bytes<T>();
  if (Traits<T>::kMMA) {
    const int64_t avail = static_cast<int64_t>(max_optin_smem()) - static_cast<int64_t>(smem);
    ec = std::min<int64_t>({Ep, 512, avail / (kBM * static_cast<int64_t>(sizeof(float))) / kDC * kDC});
    if (ec < kDC) throw std::runtime_error("arctan_l2_similarity backward: not enough shared memory");
    smem += static_cast<size_t>(kBM * ec) * sizeof(float);
  } else {
    check_cuda(cudaMemsetAsync(ga, 0, sizeof(T) * N * E, st), "memset grad_a");
    check_cuda(cudaMemsetAsync(gb, 0, sizeof(T) * M * E, st), "memset grad_b");
  }
  BwdArgs<T> pa;
  pa.g = static_cast<const T*>(g);
  pa.N = N;
  pa.M = M;
  pa.E = E;
  pa.c = static_cast<Acc>(c);
  pa.thr = static_cast<Acc>(thr);
  pa.has_thr = has_thr;
  pa.ec = ec;
  if (N > 0) {
    BwdArgs<T> r = pa;
    r.own = static_cast<const T*>(a);
    r.oth = static_cast<const T*>(b);
    r.n_own = N;
    r.n_oth = M;
    r.grad = static_cast<T*>(ga);
    auto k = arctan_bwd_kernel<T, false>;
    set_smem(k, smem, "arctan_bwd_kernel smem");
    k<<<static_cast<unsigned>(ceil_div(N, kBM)), kThreads, smem, st>>>(r);
    check_launch("arctan_bwd_kernel (a)");
  }
  if (M > 0) {
    BwdArgs<T> r = pa;
    r.own = static_cast<const T*>(b);
    r.oth = static_cast<const T*>(a);
    r.n_own = M;
    r.n_oth = N;
    r.grad = static_cast<T*>(gb);
    auto k = arctan_bwd_kernel<T, true>;
    set_smem(k, smem, "arctan_bwd_kernel smem");
    k<<<static_cast<unsigned>(ceil_div(M, kBM)), kThreads, smem, st>>>(r);
    check_launch("arctan_bwd_kernel (b)");
  }
}

}  // namespace
}  // namespace cuda
}  // namespace molphenix
