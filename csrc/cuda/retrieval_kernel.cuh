// Streamed retrieval on CUDA: rank of the true candidate and exact top-k.
//
// Keys. tile_nt gives <q_i, c_j> in Acc (float, double for float64). kDot: key = dot (larger is
// better); kSqL2: key = max(|q|^2 + |c|^2 - 2 dot, 0) built with non-contractible _rn operations
// from norms precomputed once (smaller is better). -0 is canonicalised to +0.
//
// retrieval_ranks. (1) target_key_kernel: for query i with target t, one block recomputes the
// whole tile (row tile of i, column tile of t) with the very same tile_nt call as the counting
// pass and reads the element at the same position, so the target's key is bitwise the key the
// counting pass sees (no assumption about tensor-core rounding being position independent).
// (2) ranks_kernel: grid (query tiles, column splits), each block streams its column tiles and
// counts keys at least as good as the target's (ties count against the query), then one 64-bit
// integer atomicAdd per row (exact, order independent).
//
// topk_retrieve. Exact radix select on the order-preserving unsigned image of the key (smaller is
// better): 4 passes of 8 bits (8 for float64) over streamed tiles build per-query histograms of
// the keys that share the prefix chosen so far (shared-memory histograms, flushed with integer
// atomics); select_kernel picks the digit holding the k-th best. The prefix then IS the k-th best
// key T and `need` says how many keys equal to T to keep. collect_kernel (one block per query
// tile, columns in increasing order) writes the keys better than T and the first `need` keys
// equal to T in increasing candidate index. A stable segmented radix sort (cub) orders each
// query's k entries best first; stability keeps equal keys in index order.
#pragma once
// Kernels and host drivers; the entry points are in retrieval_ranks.cu and topk_retrieve.cu.
#include <cub/device/device_segmented_radix_sort.cuh>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "molphenix/ops/retrieval.h"
#include "molphenix/options.h"
#include "mma_mainloop.cuh"
#include "tile.cuh"

namespace molphenix {
namespace cuda {
namespace {

using namespace detail;

template <class Acc>
__device__ __forceinline__ Acc make_key(Acc dot, Acc qn, Acc cn, bool sql2) {
  if (!sql2) return add_rn(dot, Acc(0));
  Acc k = sub_rn(add_rn(qn, cn), mul_rn(Acc(2), dot));
  k = k > Acc(0) ? k : Acc(0);
  return add_rn(k, Acc(0));
}

// Order-preserving unsigned image; `better first` = ascending.
__device__ __forceinline__ uint32_t ord_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ uint64_t ord_bits(double f) {
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(f));
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}
__device__ __forceinline__ float unord(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}
__device__ __forceinline__ double unord(uint64_t o) {
  return __longlong_as_double(static_cast<long long>(
      (o & 0x8000000000000000ull) ? (o & 0x7fffffffffffffffull) : ~o));
}

template <class Acc>
struct KeyOf;
template <>
struct KeyOf<float> {
  using type = uint32_t;
};
template <>
struct KeyOf<double> {
  using type = uint64_t;
};

// Smaller is better.
template <class Acc>
__device__ __forceinline__ typename KeyOf<Acc>::type key_bits(Acc key, bool sql2) {
  const auto o = ord_bits(key);
  return sql2 ? o : static_cast<decltype(o)>(~o);
}
template <class K>
__device__ __forceinline__ auto key_value(K kb, bool sql2) {
  return unord(sql2 ? kb : static_cast<K>(~kb));
}

template <class T>
constexpr size_t base_smem_bytes() {
  using Acc = typename Traits<T>::Acc;
  return align_up(nt_operand_bytes<T>(), 128) + align_up(size_t(kBM) * kLdC * sizeof(Acc), 128) +
         2 * kBM * sizeof(int64_t) + 2 * kBM * sizeof(Acc);
}

struct SmemPtrs {
  unsigned char* ops;
  void* Zs;
  int64_t* rmap;
  int64_t* cmap;
  void* qn_s;
  unsigned char* extra;
};
template <class T>
__device__ __forceinline__ SmemPtrs carve_smem(unsigned char* smem) {
  using Acc = typename Traits<T>::Acc;
  SmemPtrs s;
  const size_t ops_b = align_up(nt_operand_bytes<T>(), 128);
  const size_t tileC = align_up(size_t(kBM) * kLdC * sizeof(Acc), 128);
  s.ops = smem;
  s.Zs = smem + ops_b;
  s.rmap = reinterpret_cast<int64_t*>(smem + ops_b + tileC);
  s.cmap = s.rmap + kBM;
  s.qn_s = s.cmap + kBN;
  s.extra = smem + base_smem_bytes<T>();
  return s;
}

// ---- retrieval_ranks --------------------------------------------------------------------------
template <class T>
struct RankArgs {
  using Acc = typename Traits<T>::Acc;
  const T* q;
  const T* c;
  int64_t Q, N, D;
  const int64_t* targets;
  double* target_scores;
  const Acc* qn;  // [Q] (kSqL2)
  const Acc* cn;  // [N] (kSqL2)
  bool sql2;
  int64_t* ranks;
};

template <class T>
__global__ void __launch_bounds__(kThreads) target_key_kernel(const RankArgs<T> a) {
  using Acc = typename Traits<T>::Acc;
  extern __shared__ __align__(128) unsigned char smem[];
  SmemPtrs s = carve_smem<T>(smem);
  Acc* Zs = static_cast<Acc*>(s.Zs);
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t i = r0 + blockIdx.y;
  if (i >= a.Q) return;
  const int64_t t = a.targets[i];
  if (t < 0 || t >= a.N) return;  // uniform over the block
  const int64_t c0 = t / kBN * kBN;
  fill_row_map(s.rmap, r0, a.Q);
  if (threadIdx.x < kBN) s.cmap[threadIdx.x] = c0 + threadIdx.x < a.N ? c0 + threadIdx.x : -1;
  __syncthreads();
  tile_nt<T>(a.q, a.D, s.rmap, a.c, a.D, s.cmap, a.D, s.ops, Zs);
  if (threadIdx.x == 0) {
    const int r = static_cast<int>(i - r0), cc = static_cast<int>(t - c0);
    const Acc qn = a.sql2 ? a.qn[i] : Acc(0);
    const Acc cn = a.sql2 ? a.cn[t] : Acc(0);
    a.target_scores[i] = static_cast<double>(make_key<Acc>(Zs[r * kLdC + cc], qn, cn, a.sql2));
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) ranks_kernel(const RankArgs<T> a) {
  using Acc = typename Traits<T>::Acc;
  extern __shared__ __align__(128) unsigned char smem[];
  SmemPtrs s = carve_smem<T>(smem);
  Acc* Zs = static_cast<Acc*>(s.Zs);
  Acc* qn_s = static_cast<Acc*>(s.qn_s);
  Acc* cn_s = qn_s + kBM;
  const int tid = threadIdx.x;
  const int er = tid >> 2, ec0 = (tid & 3) * 16;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t i = r0 + er;
  fill_row_map(s.rmap, r0, a.Q);
  if (tid < kBM) qn_s[tid] = (a.sql2 && r0 + tid < a.Q) ? a.qn[r0 + tid] : Acc(0);
  const int64_t tgt = i < a.Q ? a.targets[i] : -1;
  const double tkey = i < a.Q ? a.target_scores[i] : 0.0;
  const int64_t col_tiles = (a.N + kBN - 1) / kBN;
  unsigned long long cnt = 0;
  for (int64_t ct = blockIdx.y; ct < col_tiles; ct += gridDim.y) {
    const int64_t c0 = ct * kBN;
    __syncthreads();
    fill_row_map(s.cmap, c0, a.N);
    if (tid < kBN) cn_s[tid] = (a.sql2 && c0 + tid < a.N) ? a.cn[c0 + tid] : Acc(0);
    __syncthreads();
    tile_nt<T>(a.q, a.D, s.rmap, a.c, a.D, s.cmap, a.D, s.ops, Zs);
    if (i < a.Q) {
      const Acc qn = qn_s[er];
#pragma unroll 4
      for (int m = 0; m < 16; ++m) {
        const int cc = ec0 + m;
        const int64_t j = c0 + cc;
        if (j >= a.N || j == tgt) continue;
        const double k = static_cast<double>(make_key<Acc>(Zs[er * kLdC + cc], qn, cn_s[cc], a.sql2));
        cnt += a.sql2 ? (k <= tkey) : (k >= tkey);
      }
    }
  }
  cnt += __shfl_xor_sync(0xffffffffu, cnt, 1);
  cnt += __shfl_xor_sync(0xffffffffu, cnt, 2);
  if ((tid & 3) == 0 && i < a.Q && cnt > 0)
    atomicAdd(reinterpret_cast<unsigned long long*>(a.ranks + i), cnt);
}

// ---- retrieval_ranks, fast path (bf16 / f16: mma.sync mainloop, 128 x 128 tiles) -------------
// Same contract as the simple path. target_key_fast_kernel: block (row tile x, row s) recomputes
// the tile (row tile x, column tile of t) with the same Mainloop call as the counting pass, and the
// thread whose accumulator register holds (s, t) writes the key: bitwise the value the counting
// pass compares against (same tile, same thread, same register, same epilogue arithmetic).
// ranks_fast_kernel: block (row tile, column split) streams its column tiles, compares each
// accumulator with the row's target key and counts in registers; the next tile's cp.async
// prologue is issued before the (register-only) epilogue. The float64 target key is turned into
// an equivalent float threshold: key >= t  <=>  key >= ru(t) (dot); key <= t <=> key <= rd(t)
// (sqL2), exact for every double t.
template <bool kSq>
__device__ __forceinline__ float fast_key(float dot, float qn, float cn) {
  return make_key<float>(dot, qn, cn, kSq);
}

// The streaming loop of the fast kernels (ranks, top-k histogram, prefilter): the block's row tile
// op.m0 against the column tiles ct_begin .. ct_end - 1 (op.n0 = the first one's first column,
// `step` columns apart). Each tile's accumulators go to epilogue(c0, acc), c0 = the tile's first
// column as Idx (int or int64_t, the caller's index type); the next tile's prologue is issued
// before it, so its copies overlap the register-only epilogue. (The collect kernel keeps its loop
// in line: its per-tile scan carries state from tile to tile.)
template <class Idx, class T, class Epilogue>
__device__ __forceinline__ void stream_fast_tiles(unsigned char* smem, fast::TileOps<T> op,
                                                  int64_t ct_begin, int64_t ct_end, int64_t step,
                                                  Epilogue&& epilogue) {
  fast::Mainloop<T> ml{smem};
  ml.prologue(op);
  float acc[4][4][4];
  for (int64_t ct = ct_begin; ct < ct_end; ++ct) {
    ml.compute(op, acc);
    const Idx c0 = static_cast<Idx>(op.n0);
    if (ct + 1 < ct_end) {
      op.n0 += step;
      ml.prologue(op);
    }
    epilogue(c0, acc);
  }
}

// The fragment walk of the fast kernels' epilogue (ranks, top-k histogram, collect, prefilter):
// visit(mi, h, r, c, j, valid, key) for every accumulator element this thread holds,
// acc[mi][ni][2 h + e1], in the order ni, e1, mi, h: r, c = its row and column in the 128 x 128
// tile (fast::frag_row / frag_col), j = c0 + c its candidate (Idx: int or int64_t, the caller's
// index type), valid = j < N, key = fast_key of it (|c_j|^2 read once per column from cn, only for
// kSq and valid j; |q|^2 of row r from qn_s). Every fast kernel builds its keys here, so the key of
// (r, c) is bitwise the same in each. j, valid and key reach the visitor by const reference: the
// visitor is then compiled as the code it replaced was (a by-value parameter changes the operand
// order of its comparisons; scripts/cuda_sass_diff.sh shows the machine code).
template <bool kSq, class Idx, class Visit>
__device__ __forceinline__ void for_each_fast_key(const float (&acc)[4][4][4], Idx c0, int64_t N,
                                                  const float* cn, const float* qn_s,
                                                  Visit&& visit) {
#pragma unroll
  for (int ni = 0; ni < 4; ++ni)
#pragma unroll
    for (int e1 = 0; e1 < 2; ++e1) {
      const int c = fast::frag_col(ni, e1);
      const Idx j = c0 + c;
      const bool valid = j < N;
      const float cnj = (kSq && valid) ? cn[j] : 0.0f;
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = fast::frag_row(mi, 2 * h);
          const float key = fast_key<kSq>(acc[mi][ni][2 * h + e1], kSq ? qn_s[r] : 0.0f, cnj);
          visit(mi, h, r, c, j, valid, key);
        }
    }
}

template <class T, bool kSq>
__global__ void __launch_bounds__(fast::kThreads, 2) target_key_fast_kernel(const RankArgs<T> a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * fast::kBM;
  const int s = static_cast<int>(blockIdx.y);
  const int64_t i = r0 + s;
  if (i >= a.Q) return;
  const int64_t t = a.targets[i];
  if (t < 0 || t >= a.N) return;  // uniform over the block
  const int64_t c0 = t / fast::kBN * fast::kBN;
  fast::Mainloop<T> ml{smem};
  fast::TileOps<T> op{a.q, a.D, r0, a.Q, a.c, a.D, c0, a.N, a.D};
  ml.prologue(op);
  float acc[4][4][4];
  ml.compute(op, acc);
  const int cc = static_cast<int>(t - c0);
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (fast::frag_row(mi, e) == s && fast::frag_col(ni, e) == cc) {
          const float qn = kSq ? a.qn[i] : 0.0f;
          const float cn = kSq ? a.cn[t] : 0.0f;
          a.target_scores[i] = static_cast<double>(fast_key<kSq>(acc[mi][ni][e], qn, cn));
        }
}

template <class T, bool kSq>
__global__ void __launch_bounds__(fast::kThreads, 2) ranks_fast_kernel(const RankArgs<T> a,
                                                                        int64_t tiles_per_split) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * fast::kBM;
  const int64_t col_tiles = (a.N + fast::kBN - 1) / fast::kBN;
  const int64_t ct_begin = static_cast<int64_t>(blockIdx.y) * tiles_per_split;
  const int64_t ct_end = ct_begin + tiles_per_split < col_tiles ? ct_begin + tiles_per_split
                                                                : col_tiles;
  if (ct_begin >= ct_end) return;  // uniform over the block
  // Per-row threshold, |q|^2 and target column in shared memory (behind the pipeline stages):
  // keeps them out of the register budget (128 per thread at 2 blocks per SM).
  float* thr_s = reinterpret_cast<float*>(smem + fast::kSmemBytes);
  float* qn_s = thr_s + fast::kBM;
  int* tg_s = reinterpret_cast<int*>(qn_s + fast::kBM);
  if (threadIdx.x < fast::kBM) {
    const int64_t i = r0 + threadIdx.x;
    float th = 0.0f, qv = 0.0f;
    int tv = -1;
    if (i < a.Q) {
      const double tk = a.target_scores[i];
      th = kSq ? __double2float_rd(tk) : __double2float_ru(tk);
      qv = kSq ? a.qn[i] : 0.0f;
      const int64_t t = a.targets[i];
      tv = (t >= 0 && t < a.N) ? static_cast<int>(t) : -1;
    }
    thr_s[threadIdx.x] = th;
    qn_s[threadIdx.x] = qv;
    tg_s[threadIdx.x] = tv;
  }
  unsigned cnt[4][2];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) cnt[mi][h] = 0u;
  stream_fast_tiles<int>(
      smem, fast::TileOps<T>{a.q, a.D, r0, a.Q, a.c, a.D, ct_begin * fast::kBN, a.N, a.D},
      ct_begin, ct_end, fast::kBN, [&](int c0, const float (&acc)[4][4][4]) {
        for_each_fast_key<kSq>(
            acc, c0, a.N, a.cn, qn_s,
            [&](int mi, int h, int r, int, const int& j, const bool& valid, const float& k) {
              const float th = thr_s[r];
              const bool hit = kSq ? (k <= th) : (k >= th);
              cnt[mi][h] += (valid && hit && j != tg_s[r]) ? 1u : 0u;
            });
      });
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      unsigned c = cnt[mi][h];
      c += __shfl_xor_sync(0xffffffffu, c, 1);
      c += __shfl_xor_sync(0xffffffffu, c, 2);
      const int64_t i = r0 + fast::frag_row(mi, 2 * h);
      if ((threadIdx.x & 3) == 0 && i < a.Q && c > 0u)
        atomicAdd(reinterpret_cast<unsigned long long*>(a.ranks + i),
                  static_cast<unsigned long long>(c));
    }
}

template <class T>
bool use_fast_retrieval(const void* q, const void* c, int64_t N, int64_t D) {
  if constexpr (!fast::IsMMA16<T>::value) {
    return false;
  } else {
    return fast::fast_enabled() && fast::fast_ok(q, D, c, D, D) && N < (int64_t(1) << 31) - 256;
  }
}

template <class T>
void run_ranks_fast(const RankArgs<T>& a, cudaStream_t st) {
  const int64_t rt = ceil_div(a.Q, fast::kBM), ct = ceil_div(a.N, fast::kBN);
  if (rt > 2147483647) throw ValueError("retrieval_ranks: too many queries");
  const size_t smem = fast::kSmemBytes + 3 * fast::kBM * sizeof(float);
  auto launch = [&](auto tk, auto rk) {
    set_smem(tk, smem, "target_key_fast_kernel smem");
    set_smem(rk, smem, "ranks_fast_kernel smem");
    tk<<<dim3(static_cast<unsigned>(rt), fast::kBM), fast::kThreads, smem, st>>>(a);
    check_launch("target_key_fast_kernel");
    // Column splits: enough blocks for ~2 waves of 2 blocks per SM; contiguous column ranges.
    const int64_t want = static_cast<int64_t>(sm_count()) * 4;
    int64_t ys = std::max<int64_t>(1, std::min<int64_t>(ceil_div(want, rt), ct));
    ys = std::min<int64_t>(ys, 65535);
    const int64_t per = ceil_div(ct, ys);
    ys = ceil_div(ct, per);
    rk<<<dim3(static_cast<unsigned>(rt), static_cast<unsigned>(ys)), fast::kThreads, smem, st>>>(
        a, per);
    check_launch("ranks_fast_kernel");
  };
  if (a.sql2)
    launch(target_key_fast_kernel<T, true>, ranks_fast_kernel<T, true>);
  else
    launch(target_key_fast_kernel<T, false>, ranks_fast_kernel<T, false>);
}

int column_splits(int64_t row_tiles, int64_t col_tiles) {
  const int64_t want = static_cast<int64_t>(sm_count()) * 8;
  int64_t y = ceil_div(want, std::max<int64_t>(row_tiles, 1));
  y = std::max<int64_t>(1, std::min<int64_t>({y, col_tiles, 65535}));
  return static_cast<int>(y);
}

template <class T>
void run_ranks(const void* queries, const void* candidates, int64_t Q, int64_t N, int64_t D,
               const int64_t* targets, double* target_scores, Metric metric, int64_t* ranks,
               void* workspace, size_t workspace_bytes, cudaStream_t st) {
  using Acc = typename Traits<T>::Acc;
  const bool sql2 = metric == Metric::kSqL2;
  Carve cv(workspace);
  Acc* qn = sql2 ? cv.take<Acc>(static_cast<size_t>(Q)) : nullptr;
  Acc* cn = sql2 ? cv.take<Acc>(static_cast<size_t>(N)) : nullptr;
  if (cv.off > workspace_bytes || (cv.off > 0 && workspace == nullptr))
    throw ValueError("retrieval_ranks: workspace too small");
  RankArgs<T> a;
  a.q = static_cast<const T*>(queries);
  a.c = static_cast<const T*>(candidates);
  a.Q = Q;
  a.N = N;
  a.D = D;
  a.targets = targets;
  a.target_scores = target_scores;
  a.qn = qn;
  a.cn = cn;
  a.sql2 = sql2;
  a.ranks = ranks;
  if (sql2) {
    launch_row_sqnorm<T>(a.q, Q, D, qn, st);
    launch_row_sqnorm<T>(a.c, N, D, cn, st);
  }
  check_cuda(cudaMemsetAsync(ranks, 0, sizeof(int64_t) * Q, st), "memset ranks");
  if constexpr (fast::IsMMA16<T>::value) {
    if (use_fast_retrieval<T>(queries, candidates, N, D)) {
      run_ranks_fast<T>(a, st);
      return;
    }
  }
  const int64_t rt = ceil_div(Q, kBM), ct = ceil_div(N, kBN);
  if (rt > 2147483647) throw ValueError("retrieval_ranks: too many queries");
  const size_t smem = base_smem_bytes<T>();
  {
    auto k = target_key_kernel<T>;
    set_smem(k, smem, "target_key_kernel smem");
    k<<<dim3(static_cast<unsigned>(rt), kBM), kThreads, smem, st>>>(a);
    check_launch("target_key_kernel");
  }
  {
    auto k = ranks_kernel<T>;
    set_smem(k, smem, "ranks_kernel smem");
    const int ys = column_splits(rt, ct);
    k<<<dim3(static_cast<unsigned>(rt), static_cast<unsigned>(ys)), kThreads, smem, st>>>(a);
    check_launch("ranks_kernel");
  }
}

// ---- topk_retrieve ----------------------------------------------------------------------------
template <class T>
struct TopkArgs {
  using Acc = typename Traits<T>::Acc;
  using K = typename KeyOf<Acc>::type;
  const T* q;  // chunk's first query
  const T* c;
  int64_t Q, N, D, k;  // Q: queries in this chunk
  const Acc* qn;       // chunk's first query norm
  const Acc* cn;
  bool sql2;
  unsigned* hist;  // [Q, 256]
  K* prefix;       // [Q]
  int64_t* need;   // [Q] remaining rank inside the current prefix
  K* keys;         // [Q, k] collected keys
  int64_t* idx;    // [Q, k] collected indices
};

template <class T>
__global__ void __launch_bounds__(kThreads) topk_hist_kernel(const TopkArgs<T> a, int shift,
                                                             int first_pass) {
  using Acc = typename Traits<T>::Acc;
  using K = typename KeyOf<Acc>::type;
  extern __shared__ __align__(128) unsigned char smem[];
  SmemPtrs s = carve_smem<T>(smem);
  Acc* Zs = static_cast<Acc*>(s.Zs);
  Acc* qn_s = static_cast<Acc*>(s.qn_s);
  Acc* cn_s = qn_s + kBM;
  unsigned* h = reinterpret_cast<unsigned*>(s.extra);  // [64][256]
  const int tid = threadIdx.x;
  const int er = tid >> 2, ec0 = (tid & 3) * 16;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t i = r0 + er;
  fill_row_map(s.rmap, r0, a.Q);
  if (tid < kBM) qn_s[tid] = (a.sql2 && r0 + tid < a.Q) ? a.qn[r0 + tid] : Acc(0);
  for (int x = tid; x < kBM * 256; x += kThreads) h[x] = 0u;
  const K pre = (i < a.Q && !first_pass) ? a.prefix[i] : K(0);
  const int hs = shift + 8;  // bits above the current digit must match the prefix
  const int64_t col_tiles = (a.N + kBN - 1) / kBN;
  for (int64_t ct = blockIdx.y; ct < col_tiles; ct += gridDim.y) {
    const int64_t c0 = ct * kBN;
    __syncthreads();
    fill_row_map(s.cmap, c0, a.N);
    if (tid < kBN) cn_s[tid] = (a.sql2 && c0 + tid < a.N) ? a.cn[c0 + tid] : Acc(0);
    __syncthreads();
    tile_nt<T>(a.q, a.D, s.rmap, a.c, a.D, s.cmap, a.D, s.ops, Zs);
    if (i < a.Q) {
      const Acc qn = qn_s[er];
#pragma unroll 4
      for (int m = 0; m < 16; ++m) {
        const int cc = ec0 + m;
        if (c0 + cc >= a.N) break;
        const K kb = key_bits<Acc>(make_key<Acc>(Zs[er * kLdC + cc], qn, cn_s[cc], a.sql2), a.sql2);
        if (!first_pass && (kb >> hs) != (pre >> hs)) continue;
        atomicAdd(&h[er * 256 + static_cast<int>((kb >> shift) & K(255))], 1u);
      }
    }
  }
  __syncthreads();
  for (int x = tid; x < kBM * 256; x += kThreads) {
    const int r = x >> 8;
    if (r0 + r < a.Q && h[x] != 0u) atomicAdd(&a.hist[(r0 + r) * 256 + (x & 255)], h[x]);
  }
}

template <class K>
__global__ void topk_init_kernel(int64_t Q, int64_t k, K* prefix, int64_t* need) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < Q) {
    prefix[i] = K(0);
    need[i] = k;
  }
}

template <class K>
__global__ void topk_select_kernel(int64_t Q, const unsigned* __restrict__ hist, int shift,
                                   K* prefix, int64_t* need) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= Q) return;
  int64_t rem = need[i];
  int64_t cum = 0;
  int d = 255;
  for (int b = 0; b < 256; ++b) {
    const int64_t hb = hist[i * 256 + b];
    if (cum + hb >= rem) {
      d = b;
      break;
    }
    cum += hb;
  }
  need[i] = rem - cum;
  prefix[i] |= static_cast<K>(d) << shift;
}

template <class T>
__global__ void __launch_bounds__(kThreads) topk_collect_kernel(const TopkArgs<T> a) {
  using Acc = typename Traits<T>::Acc;
  using K = typename KeyOf<Acc>::type;
  extern __shared__ __align__(128) unsigned char smem[];
  SmemPtrs s = carve_smem<T>(smem);
  Acc* Zs = static_cast<Acc*>(s.Zs);
  Acc* qn_s = static_cast<Acc*>(s.qn_s);
  Acc* cn_s = qn_s + kBM;
  const int tid = threadIdx.x;
  const int er = tid >> 2, ec0 = (tid & 3) * 16, part = tid & 3;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t i = r0 + er;
  fill_row_map(s.rmap, r0, a.Q);
  if (tid < kBM) qn_s[tid] = (a.sql2 && r0 + tid < a.Q) ? a.qn[r0 + tid] : Acc(0);
  const K kth = i < a.Q ? a.prefix[i] : K(0);
  const int64_t need = i < a.Q ? a.need[i] : 0;  // ties to keep (>= 1)
  const int64_t quota = a.k - need;               // keys strictly better than kth
  int64_t nb = 0, nt = 0;                         // written so far (same in the row's 4 lanes)
  K* keys = a.keys + (i < a.Q ? i : 0) * a.k;
  int64_t* idx = a.idx + (i < a.Q ? i : 0) * a.k;
  const int64_t col_tiles = (a.N + kBN - 1) / kBN;
  for (int64_t ct = 0; ct < col_tiles; ++ct) {
    const int64_t c0 = ct * kBN;
    __syncthreads();
    fill_row_map(s.cmap, c0, a.N);
    if (tid < kBN) cn_s[tid] = (a.sql2 && c0 + tid < a.N) ? a.cn[c0 + tid] : Acc(0);
    __syncthreads();
    tile_nt<T>(a.q, a.D, s.rmap, a.c, a.D, s.cmap, a.D, s.ops, Zs);
    const Acc qn = qn_s[er];
    int cb = 0, cq = 0;
    K kbs[16];
#pragma unroll
    for (int m = 0; m < 16; ++m) {
      const int cc = ec0 + m;
      kbs[m] = key_bits<Acc>(make_key<Acc>(Zs[er * kLdC + cc], qn, cn_s[cc], a.sql2), a.sql2);
      const bool valid = i < a.Q && c0 + cc < a.N;
      cb += (valid && kbs[m] < kth);
      cq += (valid && kbs[m] == kth);
    }
    // Exclusive prefix over the row's 4 lanes (adjacent lanes, column order).
    int ib = cb, iq = cq;
#pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
      const int yb = __shfl_up_sync(0xffffffffu, ib, o, 4);
      const int yq = __shfl_up_sync(0xffffffffu, iq, o, 4);
      if (part >= o) {
        ib += yb;
        iq += yq;
      }
    }
    const int tb = __shfl_sync(0xffffffffu, ib, 3, 4);
    const int tq = __shfl_sync(0xffffffffu, iq, 3, 4);
    int64_t pb = nb + (ib - cb), pq = nt + (iq - cq);
    if (cb + cq > 0) {
#pragma unroll
      for (int m = 0; m < 16; ++m) {
        const int cc = ec0 + m;
        const bool valid = i < a.Q && c0 + cc < a.N;
        if (!valid) continue;
        if (kbs[m] < kth) {
          if (pb < quota) {
            keys[pb] = kbs[m];
            idx[pb] = c0 + cc;
          }
          ++pb;
        } else if (kbs[m] == kth) {
          if (pq < need) {
            keys[quota + pq] = kbs[m];
            idx[quota + pq] = c0 + cc;
          }
          ++pq;
        }
      }
    }
    nb += tb;
    nt += tq;
  }
}

// ---- topk_retrieve, fast path (bf16 / f16) ------------------------------------------------------
// Same algorithm as the simple path on 128 x 128 mma.sync tiles. Histogram pass: block (row tile,
// contiguous column range), shared histograms [128 rows][256 bins] (128 KiB), one block per SM.
// Collect pass: one block per row tile, column tiles in increasing order; the tile's key bits are
// staged in shared memory so that two threads per row can scan the row's 128 columns in index
// order (the stable sort that follows relies on that order for equal keys).
// stride > 1: only column tiles 0, stride, 2 stride, ... (the prefilter's sample); fail != null:
// a block whose 128 rows all have fail == 0 does nothing (the exact fallback after a prefilter).
template <class T, bool kSq>
__global__ void __launch_bounds__(fast::kThreads, 1) topk_hist_fast_kernel(const TopkArgs<T> a,
                                                                            int shift,
                                                                            int first_pass,
                                                                            int64_t per, int stride,
                                                                            const int* fail) {
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned* h = reinterpret_cast<unsigned*>(smem + fast::kSmemBytes);  // [128][256]
  uint32_t* pre_s = reinterpret_cast<uint32_t*>(h + fast::kBM * 256);
  float* qn_s = reinterpret_cast<float*>(pre_s + fast::kBM);
  const int tid = threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * fast::kBM;
  const int64_t col_tiles = ((a.N + fast::kBN - 1) / fast::kBN + stride - 1) / stride;  // visited
  const int64_t ct_begin = static_cast<int64_t>(blockIdx.y) * per;
  const int64_t ct_end = ct_begin + per < col_tiles ? ct_begin + per : col_tiles;
  if (ct_begin >= ct_end) return;  // uniform
  if (fail != nullptr) {
    const int mine = (tid < fast::kBM && r0 + tid < a.Q) ? fail[r0 + tid] : 0;
    if (!__syncthreads_or(mine)) return;  // uniform
  }
  for (int x = tid; x < fast::kBM * 256; x += fast::kThreads) h[x] = 0u;
  if (tid < fast::kBM) {
    const int64_t i = r0 + tid;
    pre_s[tid] = (i < a.Q && !first_pass) ? a.prefix[i] : 0u;
    qn_s[tid] = (kSq && i < a.Q) ? a.qn[i] : 0.0f;
  }
  const int hs = shift + 8;
  const uint32_t himask = (first_pass || hs >= 32) ? 0u : (0xffffffffu << hs);
  // The mainloop's barriers also publish the h / pre_s / qn_s initialisation.
  stream_fast_tiles<int64_t>(
      smem, fast::TileOps<T>{a.q, a.D, r0, a.Q, a.c, a.D, ct_begin * stride * fast::kBN, a.N, a.D},
      ct_begin, ct_end, static_cast<int64_t>(stride) * fast::kBN,
      [&](int64_t c0, const float (&acc)[4][4][4]) {
        for_each_fast_key<kSq>(
            acc, c0, a.N, a.cn, qn_s,
            [&](int, int, int r, int, const int64_t&, const bool& valid, const float& k) {
              const uint32_t kb = key_bits<float>(k, kSq);
              if (valid && ((kb ^ pre_s[r]) & himask) == 0u)
                atomicAdd(&h[r * 256 + static_cast<int>((kb >> shift) & 255u)], 1u);
            });
      });
  __syncthreads();
  for (int x = tid; x < fast::kBM * 256; x += fast::kThreads) {
    const int r = x >> 8;
    if (r0 + r < a.Q && h[x] != 0u) atomicAdd(&a.hist[(r0 + r) * 256 + (x & 255)], h[x]);
  }
}

constexpr int kKsLd = 130;  // row stride of the staged key tile: column c at c + (c >> 6)

template <class T, bool kSq>
__global__ void __launch_bounds__(fast::kThreads, 1) topk_collect_fast_kernel(const TopkArgs<T> a,
                                                                               const int* fail) {
  extern __shared__ __align__(128) unsigned char smem[];
  uint32_t* Ks = reinterpret_cast<uint32_t*>(smem + fast::kSmemBytes);  // [128][kKsLd]
  float* qn_s = reinterpret_cast<float*>(Ks + fast::kBM * kKsLd);
  const int tid = threadIdx.x;
  const int er = tid >> 1, part = tid & 1;  // row er, columns part * 64 .. part * 64 + 63
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * fast::kBM;
  if (fail != nullptr) {
    const int mine = (tid < fast::kBM && r0 + tid < a.Q) ? fail[r0 + tid] : 0;
    if (!__syncthreads_or(mine)) return;  // uniform: no row of this tile needs the fallback
  }
  // Rows that the prefilter finished (fail == 0) are treated like rows past the end.
  const int64_t i = (fail == nullptr || (r0 + er < a.Q && fail[r0 + er] != 0)) ? r0 + er : a.Q;
  if (tid < fast::kBM) qn_s[tid] = (kSq && r0 + tid < a.Q) ? a.qn[r0 + tid] : 0.0f;
  const uint32_t kth = i < a.Q ? a.prefix[i] : 0u;
  const int64_t need = i < a.Q ? a.need[i] : 0;  // ties to keep (>= 1)
  const int64_t quota = a.k - need;               // keys strictly better than kth
  int64_t nb = 0, nt = 0;                         // written so far (same in both lanes of a row)
  uint32_t* keys = a.keys + (i < a.Q ? i : 0) * a.k;
  int64_t* idx = a.idx + (i < a.Q ? i : 0) * a.k;
  const int64_t col_tiles = (a.N + fast::kBN - 1) / fast::kBN;
  fast::Mainloop<T> ml{smem};
  fast::TileOps<T> op{a.q, a.D, r0, a.Q, a.c, a.D, 0, a.N, a.D};
  ml.prologue(op);
  float acc[4][4][4];
  for (int64_t ct = 0; ct < col_tiles; ++ct) {
    ml.compute(op, acc);
    const int64_t c0 = op.n0;
    if (ct + 1 < col_tiles) {
      op.n0 += fast::kBN;
      ml.prologue(op);
    }
    for_each_fast_key<kSq>(
        acc, c0, a.N, a.cn, qn_s,
        [&](int, int, int r, int c, const int64_t&, const bool&, const float& k) {
          Ks[r * kKsLd + c + (c >> 6)] = key_bits<float>(k, kSq);
        });
    __syncthreads();
    const uint32_t* krow = Ks + er * kKsLd + part * 65;
    const int64_t cbase = c0 + part * 64;
    int cb = 0, cq = 0;
    if (i < a.Q) {
      for (int m = 0; m < 64; ++m) {
        const uint32_t kb = krow[m];
        const bool valid = cbase + m < a.N;
        cb += (valid && kb < kth);
        cq += (valid && kb == kth);
      }
    }
    // Lane pair (part 0, part 1) of the row: part 1 starts after part 0's entries.
    const int ob = __shfl_xor_sync(0xffffffffu, cb, 1);
    const int oq = __shfl_xor_sync(0xffffffffu, cq, 1);
    int64_t pb = nb + (part ? ob : 0), pq = nt + (part ? oq : 0);
    if (i < a.Q && cb + cq > 0 && (pb < quota || pq < need)) {
      for (int m = 0; m < 64; ++m) {
        const uint32_t kb = krow[m];
        if (cbase + m >= a.N) break;
        if (kb < kth) {
          if (pb < quota) {
            keys[pb] = kb;
            idx[pb] = cbase + m;
          }
          ++pb;
        } else if (kb == kth) {
          if (pq < need) {
            keys[quota + pq] = kb;
            idx[quota + pq] = cbase + m;
          }
          ++pq;
        }
      }
    }
    nb += cb + ob;
    nt += cq + oq;
    __syncthreads();  // Ks is rewritten by the next tile's epilogue
  }
}

// ---- top-k threshold prefilter (fast path, large N) ---------------------------------------------
// (1) radix-select the kp-th best key T_i of query i over a sample (column tiles 0, s, 2s, ...),
// kp chosen so that about kp * N / n_sample >= k keys of the whole set are <= T_i (5 sigma slack);
// (2) one streamed pass appends every (key <= T_i) as a composite (key_bits << 32 | index) to the
// query's buffer of capacity C (an integer atomicAdd per hit); (3) a segmented radix sort of each
// buffer (composite order = best first, ties by lower index); (4) a query with k <= count <= C
// takes its first k entries: exact, because every key better than or equal to the k-th best is
// <= T_i. Any other query (sampling bad luck, ties, sorted data) is flagged and goes through the
// exact radix path, whose blocks skip row tiles without a flagged query.
struct PrefilterPlan {
  bool on = false;
  int stride = 1;
  int64_t kp = 0, cap = 0;
};

inline PrefilterPlan prefilter_plan(int64_t N, int64_t k) {
  PrefilterPlan p;
  const int64_t tiles = ceil_div(N, fast::kBN);
  const int stride = 16;
  if (tiles < 256 || N >= (int64_t(1) << 31) - 256) return p;
  int64_t sample = 0;  // candidates in column tiles 0, stride, 2 stride, ...
  for (int64_t t = 0; t < tiles; t += stride)
    sample += std::min<int64_t>(fast::kBN, N - t * fast::kBN);
  const double frac = static_cast<double>(sample) / static_cast<double>(N);
  const double kk = static_cast<double>(k) * frac;
  const int64_t kp = static_cast<int64_t>(std::ceil(kk + 5.0 * std::sqrt(kk) + 4.0));
  if (kp > sample / 2) return p;
  const double expect = static_cast<double>(kp) / frac;
  p.on = true;
  p.stride = stride;
  p.kp = kp;
  p.cap = k + static_cast<int64_t>(std::ceil(2.0 * (expect - static_cast<double>(k)))) + 1024;
  return p;
}

// Run-time setting RuntimeOptions::topk_prefilter (molphenix.set_options(topk_prefilter=...)):
// 1 = on, 0 = off, 2 = every query takes the exact fallback (a test setting).
inline bool prefilter_enabled() { return runtime_options().topk_prefilter != 0; }
inline bool prefilter_forced_fallback() { return runtime_options().topk_prefilter == 2; }

template <class T, bool kSq>
__global__ void __launch_bounds__(fast::kThreads, 2) topk_prefilter_kernel(
    const TopkArgs<T> a, int64_t per, unsigned* __restrict__ cnt, uint64_t* __restrict__ buf,
    int64_t cap) {
  extern __shared__ __align__(128) unsigned char smem[];
  uint32_t* thr_s = reinterpret_cast<uint32_t*>(smem + fast::kSmemBytes);
  float* qn_s = reinterpret_cast<float*>(thr_s + fast::kBM);
  const int tid = threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * fast::kBM;
  const int64_t col_tiles = (a.N + fast::kBN - 1) / fast::kBN;
  const int64_t ct_begin = static_cast<int64_t>(blockIdx.y) * per;
  const int64_t ct_end = ct_begin + per < col_tiles ? ct_begin + per : col_tiles;
  if (ct_begin >= ct_end) return;  // uniform
  if (tid < fast::kBM) {
    const int64_t i = r0 + tid;
    thr_s[tid] = i < a.Q ? a.prefix[i] : 0u;  // rows past the end: only key bits 0 pass, unused
    qn_s[tid] = (kSq && i < a.Q) ? a.qn[i] : 0.0f;
  }
  stream_fast_tiles<int64_t>(
      smem, fast::TileOps<T>{a.q, a.D, r0, a.Q, a.c, a.D, ct_begin * fast::kBN, a.N, a.D},
      ct_begin, ct_end, fast::kBN, [&](int64_t c0, const float (&acc)[4][4][4]) {
        for_each_fast_key<kSq>(
            acc, c0, a.N, a.cn, qn_s,
            [&](int, int, int r, int, const int64_t& j, const bool& valid, const float& k) {
              const uint32_t kb = key_bits<float>(k, kSq);
              const int64_t i = r0 + r;
              if (valid && i < a.Q && kb <= thr_s[r]) {
                const unsigned pos = atomicAdd(cnt + i, 1u);
                if (pos < cap)
                  buf[i * cap + pos] =
                      (static_cast<uint64_t>(kb) << 32) | static_cast<uint64_t>(j);
              }
            });
      });
}

__global__ void topk_segments_kernel(int64_t Q, int64_t cap, const unsigned* __restrict__ cnt,
                                     int* __restrict__ seg_begin, int* __restrict__ seg_end) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= Q) return;
  const int64_t n = cnt[i] < cap ? cnt[i] : cap;
  seg_begin[i] = static_cast<int>(i * cap);
  seg_end[i] = static_cast<int>(i * cap + n);
}

// One block per query: a query with k <= count <= cap takes its first k sorted entries; any other
// is flagged for the exact fallback.
__global__ void topk_finalize_kernel(int64_t k, int64_t cap, const unsigned* __restrict__ cnt,
                                     const uint64_t* __restrict__ sorted, uint32_t* __restrict__ keys,
                                     int64_t* __restrict__ idx, int* __restrict__ fail,
                                     int force_fallback) {
  const int64_t i = blockIdx.x;
  const int64_t n = cnt[i];
  const bool ok = !force_fallback && n >= k && n <= cap;
  if (threadIdx.x == 0) fail[i] = ok ? 0 : 1;
  if (!ok) return;
  for (int64_t m = threadIdx.x; m < k; m += blockDim.x) {
    const uint64_t v = sorted[i * cap + m];
    keys[i * k + m] = static_cast<uint32_t>(v >> 32);
    idx[i * k + m] = static_cast<int64_t>(v & 0xffffffffull);
  }
}

template <class T>
size_t topk_fast_smem(bool hist) {
  return hist ? fast::kSmemBytes + size_t(fast::kBM) * 256 * 4 + 2 * fast::kBM * 4
              : fast::kSmemBytes + size_t(fast::kBM) * kKsLd * 4 + fast::kBM * 4;
}

// One chunk of queries on the fast path (the caller has initialised prefix / need).
// Prefilter buffers of one chunk (all null when the plan is off).
struct PrefilterBufs {
  PrefilterPlan plan;
  unsigned* cnt = nullptr;   // [qc]
  int* fail = nullptr;       // [qc]
  uint64_t* buf = nullptr;   // [qc, cap]
  uint64_t* sbuf = nullptr;  // [qc, cap] sorted
  int* seg_begin = nullptr;  // [qc]
  int* seg_end = nullptr;    // [qc]
  void* temp = nullptr;
  size_t temp_bytes = 0;
  int end_bit = 64;
};

// One chunk of queries on the fast path. Leaves, for every query, its k (key bits, index) pairs
// in a.keys / a.idx (prefilter rows already sorted; the caller's stable sort keeps them).
template <class T, bool kSq>
void topk_chunk_fast(const TopkArgs<T>& a, unsigned* hist, int64_t qc, const PrefilterBufs& pf,
                     cudaStream_t st) {
  using K = uint32_t;
  const int64_t rt = ceil_div(qc, fast::kBM), ct = ceil_div(a.N, fast::kBN);
  const size_t sh = topk_fast_smem<T>(true), sc = topk_fast_smem<T>(false);
  auto kh = topk_hist_fast_kernel<T, kSq>;
  auto kc = topk_collect_fast_kernel<T, kSq>;
  set_smem(kh, sh, "topk_hist_fast_kernel smem");
  set_smem(kc, sc, "topk_collect_fast_kernel smem");
  const unsigned qb = static_cast<unsigned>(ceil_div(qc, 256));
  auto splits = [&](int64_t tiles, int64_t per_sm, int64_t* per) {
    const int64_t want = static_cast<int64_t>(sm_count()) * per_sm;
    int64_t ys = std::max<int64_t>(1, std::min<int64_t>(ceil_div(want, rt), tiles));
    ys = std::min<int64_t>(ys, 65535);
    *per = ceil_div(tiles, ys);
    return ceil_div(tiles, *per);
  };
  // Radix select of the need-th best key per query over column tiles 0, stride, 2 stride, ...
  auto radix = [&](int stride, const int* fail) {
    const int64_t tiles = ceil_div(ct, stride);
    int64_t per = 0;
    const int64_t ys = splits(tiles, 8, &per);
    for (int pass = 0; pass < 4; ++pass) {
      const int shift = 32 - 8 * (pass + 1);
      check_cuda(cudaMemsetAsync(hist, 0, sizeof(unsigned) * 256 * qc, st), "memset hist");
      kh<<<dim3(static_cast<unsigned>(rt), static_cast<unsigned>(ys)), fast::kThreads, sh, st>>>(
          a, shift, pass == 0 ? 1 : 0, per, stride, fail);
      check_launch("topk_hist_fast_kernel");
      topk_select_kernel<K><<<qb, 256, 0, st>>>(qc, hist, shift, a.prefix, a.need);
      check_launch("topk_select_kernel");
    }
  };
  const int* fail = nullptr;
  if (pf.plan.on) {
    // (1) threshold from the sample
    topk_init_kernel<K><<<qb, 256, 0, st>>>(qc, pf.plan.kp, a.prefix, a.need);
    check_launch("topk_init_kernel (prefilter)");
    radix(pf.plan.stride, nullptr);
    // (2) append every key <= threshold
    check_cuda(cudaMemsetAsync(pf.cnt, 0, sizeof(unsigned) * qc, st), "memset prefilter counts");
    auto kp = topk_prefilter_kernel<T, kSq>;
    const size_t sp = fast::kSmemBytes + 2 * fast::kBM * 4;
    set_smem(kp, sp, "topk_prefilter_kernel smem");
    int64_t per = 0;
    const int64_t ys = splits(ct, 4, &per);
    kp<<<dim3(static_cast<unsigned>(rt), static_cast<unsigned>(ys)), fast::kThreads, sp, st>>>(
        a, per, pf.cnt, pf.buf, pf.plan.cap);
    check_launch("topk_prefilter_kernel");
    // (3) sort each query's buffer by (key bits, index)
    topk_segments_kernel<<<qb, 256, 0, st>>>(qc, pf.plan.cap, pf.cnt, pf.seg_begin, pf.seg_end);
    check_launch("topk_segments_kernel");
    size_t tb = pf.temp_bytes;
    check_cuda(cub::DeviceSegmentedRadixSort::SortKeys(
                   pf.temp, tb, pf.buf, pf.sbuf, static_cast<int>(qc * pf.plan.cap),
                   static_cast<int>(qc), pf.seg_begin, pf.seg_end, 0, pf.end_bit, st),
               "cub::DeviceSegmentedRadixSort::SortKeys (prefilter)");
    // (4) take the first k, or flag the query for the exact path
    topk_finalize_kernel<<<static_cast<unsigned>(qc), 256, 0, st>>>(
        a.k, pf.plan.cap, pf.cnt, pf.sbuf, a.keys, a.idx, pf.fail,
        prefilter_forced_fallback() ? 1 : 0);
    check_launch("topk_finalize_kernel");
    fail = pf.fail;
  }
  // Exact radix select + index-ordered collect (only row tiles with a flagged query when the
  // prefilter ran).
  topk_init_kernel<K><<<qb, 256, 0, st>>>(qc, a.k, a.prefix, a.need);
  check_launch("topk_init_kernel");
  radix(1, fail);
  kc<<<static_cast<unsigned>(rt), fast::kThreads, sc, st>>>(a, fail);
  check_launch("topk_collect_fast_kernel");
}

template <class K, class Out>
__global__ void topk_decode_kernel(const K* __restrict__ keys, int64_t n, bool sql2,
                                   Out* __restrict__ out) {
  for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < n;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[x] = static_cast<Out>(key_value(keys[x], sql2));
}

__global__ void segment_offsets_kernel(int n, int k, int* off) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) off[i] = i * k;
}

// Queries per pipeline chunk: collected keys + indices + sorted keys of one chunk stay under
// ~4 GiB and under cub's int item count.
int64_t topk_chunk(int64_t Q, int64_t k, size_t key_bytes, int64_t cap = 0) {
  const double per_query =
      static_cast<double>(k) * (2.0 * key_bytes + 8.0) + 16.0 * static_cast<double>(cap);
  int64_t qc = static_cast<int64_t>((4.0 * (1ull << 30)) / per_query);
  qc = std::min<int64_t>(qc, static_cast<int64_t>((1ll << 30) / k));
  if (cap > 0) qc = std::min<int64_t>(qc, static_cast<int64_t>((1ll << 30) / cap));
  qc = std::max<int64_t>(qc / kBM * kBM, 1);
  return std::min<int64_t>(qc, Q);
}

template <class K>
size_t cub_sort_bytes(int64_t qc, int64_t k) {
  size_t bytes = 0;
  const int n = static_cast<int>(qc * k), segs = static_cast<int>(qc);
  check_cuda(cub::DeviceSegmentedRadixSort::SortPairs(
                 nullptr, bytes, static_cast<const K*>(nullptr), static_cast<K*>(nullptr),
                 static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr), n, segs,
                 static_cast<const int*>(nullptr), static_cast<const int*>(nullptr), 0,
                 static_cast<int>(sizeof(K) * 8), cudaStream_t(0)),
             "cub::DeviceSegmentedRadixSort (temp size)");
  return bytes;
}

template <class Acc>
struct TopkPieces {
  using K = typename KeyOf<Acc>::type;
  Acc* qn = nullptr;
  Acc* cn = nullptr;
  unsigned* hist = nullptr;
  K* prefix = nullptr;
  int64_t* need = nullptr;
  K* keys = nullptr;
  int64_t* idx = nullptr;
  K* sorted = nullptr;
  int* offs = nullptr;
  void* temp = nullptr;
  size_t temp_bytes = 0;
  int64_t qc = 0;
  size_t total = 0;
  PrefilterBufs pf;  // fast path, large N (plan.on): the threshold prefilter's buffers
};

// pre: carve the prefilter buffers too (16-bit inputs; the plan decides whether N, k qualify).
template <class Acc>
TopkPieces<Acc> topk_carve(void* base, int64_t Q, int64_t N, int64_t k, bool sql2, bool pre) {
  using K = typename KeyOf<Acc>::type;
  TopkPieces<Acc> p;
  Carve cv(base);
  if (pre && sizeof(K) == 4) p.pf.plan = prefilter_plan(N, k);
  p.qc = topk_chunk(Q, k, sizeof(K), p.pf.plan.on ? p.pf.plan.cap : 0);
  if (sql2) {
    p.qn = cv.take<Acc>(static_cast<size_t>(Q));
    p.cn = cv.take<Acc>(static_cast<size_t>(N));
  }
  const size_t qc = static_cast<size_t>(p.qc);
  p.hist = cv.take<unsigned>(qc * 256);
  p.prefix = cv.take<K>(qc);
  p.need = cv.take<int64_t>(qc);
  p.keys = cv.take<K>(qc * static_cast<size_t>(k));
  p.idx = cv.take<int64_t>(qc * static_cast<size_t>(k));
  p.sorted = cv.take<K>(qc * static_cast<size_t>(k));
  p.offs = cv.take<int>(qc + 1);
  p.temp_bytes = cub_sort_bytes<K>(p.qc, k);
  p.temp = cv.take<unsigned char>(p.temp_bytes);
  if (p.pf.plan.on) {
    const size_t cap = static_cast<size_t>(p.pf.plan.cap);
    p.pf.cnt = cv.take<unsigned>(qc);
    p.pf.fail = cv.take<int>(qc);
    p.pf.buf = cv.take<uint64_t>(qc * cap);
    p.pf.sbuf = cv.take<uint64_t>(qc * cap);
    p.pf.seg_begin = cv.take<int>(qc);
    p.pf.seg_end = cv.take<int>(qc);
    p.pf.end_bit = 64;  // the key bits are the high 32 bits of the composite
    size_t bytes = 0;
    check_cuda(cub::DeviceSegmentedRadixSort::SortKeys(
                   nullptr, bytes, static_cast<const uint64_t*>(nullptr),
                   static_cast<uint64_t*>(nullptr), static_cast<int>(qc * cap),
                   static_cast<int>(qc), static_cast<const int*>(nullptr),
                   static_cast<const int*>(nullptr), 0, p.pf.end_bit, cudaStream_t(0)),
               "cub::DeviceSegmentedRadixSort::SortKeys (temp size)");
    p.pf.temp_bytes = bytes;
    p.pf.temp = cv.take<unsigned char>(bytes);
  }
  p.total = align_up(cv.off, 256);
  return p;
}

template <class T>
void run_topk(const void* queries, const void* candidates, int64_t Q, int64_t N, int64_t D,
              int64_t k, Metric metric, void* out_scores, int64_t* out_indices, void* workspace,
              size_t workspace_bytes, cudaStream_t st) {
  using Acc = typename Traits<T>::Acc;
  using K = typename KeyOf<Acc>::type;
  const bool sql2 = metric == Metric::kSqL2;
  TopkPieces<Acc> pc = topk_carve<Acc>(workspace, Q, N, k, sql2, fast::IsMMA16<T>::value);
  if (pc.total > workspace_bytes || workspace == nullptr)
    throw ValueError("topk_retrieve: workspace too small");
  const T* q = static_cast<const T*>(queries);
  const T* c = static_cast<const T*>(candidates);
  if (sql2) {
    launch_row_sqnorm<T>(q, Q, D, pc.qn, st);
    launch_row_sqnorm<T>(c, N, D, pc.cn, st);
  }
  const size_t smem_hist = base_smem_bytes<T>() + size_t(kBM) * 256 * sizeof(unsigned);
  const size_t smem_base = base_smem_bytes<T>();
  auto kh = topk_hist_kernel<T>;
  auto kc = topk_collect_kernel<T>;
  set_smem(kh, smem_hist, "topk_hist_kernel smem");
  set_smem(kc, smem_base, "topk_collect_kernel smem");
  const int64_t ct = ceil_div(N, kBN);
  const int passes = static_cast<int>(sizeof(K));
  for (int64_t q0 = 0; q0 < Q; q0 += pc.qc) {
    const int64_t qc = std::min<int64_t>(pc.qc, Q - q0);
    const int64_t rt = ceil_div(qc, kBM);
    TopkArgs<T> a;
    a.q = q + q0 * D;
    a.c = c;
    a.Q = qc;
    a.N = N;
    a.D = D;
    a.k = k;
    a.qn = sql2 ? pc.qn + q0 : nullptr;
    a.cn = pc.cn;
    a.sql2 = sql2;
    a.hist = pc.hist;
    a.prefix = pc.prefix;
    a.need = pc.need;
    a.keys = pc.keys;
    a.idx = pc.idx;
    const unsigned qb = static_cast<unsigned>(ceil_div(qc, 256));
    topk_init_kernel<K><<<qb, 256, 0, st>>>(qc, k, pc.prefix, pc.need);
    check_launch("topk_init_kernel");
    bool done = false;
    if constexpr (fast::IsMMA16<T>::value) {
      if (use_fast_retrieval<T>(queries, candidates, N, D)) {
        PrefilterBufs pf = pc.pf;
        if (!prefilter_enabled()) pf.plan.on = false;
        if (sql2)
          topk_chunk_fast<T, true>(a, pc.hist, qc, pf, st);
        else
          topk_chunk_fast<T, false>(a, pc.hist, qc, pf, st);
        done = true;
      }
    }
    const int ys = column_splits(rt, ct);
    for (int pass = 0; pass < passes && !done; ++pass) {
      const int shift = static_cast<int>(sizeof(K) * 8) - 8 * (pass + 1);
      check_cuda(cudaMemsetAsync(pc.hist, 0, sizeof(unsigned) * 256 * qc, st), "memset hist");
      kh<<<dim3(static_cast<unsigned>(rt), static_cast<unsigned>(ys)), kThreads, smem_hist, st>>>(
          a, shift, pass == 0 ? 1 : 0);
      check_launch("topk_hist_kernel");
      topk_select_kernel<K><<<qb, 256, 0, st>>>(qc, pc.hist, shift, pc.prefix, pc.need);
      check_launch("topk_select_kernel");
    }
    if (!done) {
      kc<<<static_cast<unsigned>(rt), kThreads, smem_base, st>>>(a);
      check_launch("topk_collect_kernel");
    }
    segment_offsets_kernel<<<static_cast<unsigned>(ceil_div(qc + 1, 256)), 256, 0, st>>>(
        static_cast<int>(qc), static_cast<int>(k), pc.offs);
    check_launch("segment_offsets_kernel");
    size_t temp_bytes = pc.temp_bytes;
    check_cuda(cub::DeviceSegmentedRadixSort::SortPairs(
                   pc.temp, temp_bytes, pc.keys, pc.sorted, pc.idx, out_indices + q0 * k,
                   static_cast<int>(qc * k), static_cast<int>(qc), pc.offs, pc.offs + 1, 0,
                   static_cast<int>(sizeof(K) * 8), st),
               "cub::DeviceSegmentedRadixSort::SortPairs");
    const int64_t n = qc * k;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 65536));
    if (sizeof(Acc) == 8)
      topk_decode_kernel<K, double><<<blocks, 256, 0, st>>>(
          pc.sorted, n, sql2, static_cast<double*>(out_scores) + q0 * k);
    else
      topk_decode_kernel<K, float><<<blocks, 256, 0, st>>>(
          pc.sorted, n, sql2, static_cast<float*>(out_scores) + q0 * k);
    check_launch("topk_decode_kernel");
  }
}

}  // namespace
}  // namespace cuda
}  // namespace molphenix
