// Internal: the ISA-generic retrieval kernels (ranks and exact top-k) behind ops/retrieval.h.
// Included by retrieval.cpp (scalar + dispatch), retrieval_avx2.cpp and retrieval_avx512.cpp;
// like gemm_kernels.h it lives in the ISA namespace chosen by the including TU's flags.
//
// Design (see docs/design/cpu_kernels.md):
//   * All candidates are packed once (in parallel) into NR-column panels of the GEMM micro-kernel
//     (panel p = D x NR values, zero padded past N): O(N * D) extra memory, the size of the input.
//     Queries are used in place (the micro-kernel broadcasts them).
//   * A register tile of MR queries x NR candidates is computed by the GEMM micro-kernel (one fma
//     chain per score, k increasing from +0: bitwise equal to dot_fma) and consumed in registers by
//     an epilogue: compare-and-count (ranks) or threshold-filtered insertion (top-k). No score
//     matrix is ever stored; working memory is O((Q + N) * D + threads * tiles).
//   * kSqL2 key = max((|q|^2 + |c|^2) - 2 * s, 0) with the norms from dot_fma: the same operations
//     in the same order in the vector epilogue and in the scalar target computation.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

#include "gemm_kernels.h"
#include "molphenix/common.h"

namespace molphenix {
namespace cpu {
namespace MPX_ISA {
namespace retrieval {

// 64-byte aligned array (panels start on cache lines).
template <typename T>
struct AlignedBuf {
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr;
  explicit AlignedBuf(int64_t n) {
    size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
    bytes = (bytes + 63) / 64 * 64;
    ptr.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    if (!ptr) throw std::bad_alloc();
  }
  T* get() const { return ptr.get(); }
};

template <typename T>
struct Impl {
  using K = Kernel<T>;
  using O = typename K::Ops;
  using V = typename K::V;
  static constexpr int W = K::W, MR = K::MR, NV = K::NV, NR = K::NR;

  // ---- packed candidates ------------------------------------------------------------------------
  struct Packed {
    int64_t N = 0, D = 0, np = 0;
    AlignedBuf<T> data{1};
    AlignedBuf<T> norms{1};  // [np * NR] |c|^2 (kSqL2), zero padded
    const T* panel(int64_t p) const { return data.get() + p * D * NR; }
  };

  static void pack(const T* C, int64_t N, int64_t D, bool with_norms, int nt, Packed& P) {
    P.N = N;
    P.D = D;
    P.np = (N + NR - 1) / NR;
    P.data = AlignedBuf<T>(P.np * D * NR);
    P.norms = AlignedBuf<T>(P.np * NR);
    T* out = P.data.get();
    T* nrm = P.norms.get();
    const int64_t np = P.np;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t p = 0; p < np; ++p) {
      const int64_t j0 = p * NR, nc = std::min<int64_t>(NR, N - j0);
      K::pack_b(D, nc, C + j0 * D, 1, D, out + p * D * NR);
      for (int64_t j = 0; j < NR; ++j)
        nrm[j0 + j] = (with_norms && j < nc) ? dot_fma_chain(C + (j0 + j) * D, C + (j0 + j) * D, D)
                                              : T(0);
    }
  }

  // Lane-validity bit set of vector v of panel p (columns >= N are padding).
  static MPX_GEMM_INLINE uint32_t valid_bits(const Packed& P, int64_t p, int v) {
    const int64_t n = P.N - (p * NR + static_cast<int64_t>(v) * W);
    if (n >= W) return W >= 32 ? 0xffffffffu : ((1u << W) - 1u);
    if (n <= 0) return 0u;
    return (1u << n) - 1u;
  }

  // Candidate panels per L2-resident chunk (about 512 KiB of packed candidates).
  static int64_t chunk_panels(int64_t D) {
    const int64_t bytes = D * NR * static_cast<int64_t>(sizeof(T));
    return std::max<int64_t>(1, (512 << 10) / std::max<int64_t>(bytes, 1));
  }
  // Query rows per block (a multiple of MR).
  static constexpr int64_t kBlockRows = MR * ((96 + MR - 1) / MR);

  // In-register key of the tile: kDot: the score; kSqL2: max((qn + cn) - 2 s, 0).
  template <bool kSq>
  static MPX_GEMM_INLINE V key(V s, V qn, V cn) {
    if (!kSq) return s;
    const V two = O::set1(T(2));
    return O::max0(O::sub(O::add(qn, cn), O::mul(two, s)));
  }
  // The same key in scalar form (target side).
  template <bool kSq>
  static T key_scalar(T s, T qn, T cn) {
    if (!kSq) return s;
    const T x = (qn + cn) - T(2) * s;
    return x > T(0) ? x : T(0);
  }

  // Sweep query rows [i0, i0 + mb) against panels [p0, p1) in L2 chunks; epi(ir, mr, p, c) gets
  // each finished MR x NR register tile (ir relative to i0).
  template <class Epi>
  static void sweep(const T* Qm, int64_t D, int64_t i0, int64_t mb, const Packed& P, int64_t p0,
                    int64_t p1, Epi& epi) {
    const int64_t ch = chunk_panels(D);
    for (int64_t c0 = p0; c0 < p1; c0 += ch) {
      const int64_t c1 = std::min(p1, c0 + ch);
      for (int64_t ir = 0; ir < mb; ir += MR) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, mb - ir));
        const T* A = Qm + (i0 + ir) * D;
        for (int64_t p = c0; p < c1; ++p) {
          V c[MR][NV];
          K::zero(c);
          K::tile(D, A, D, 1, mr, P.panel(p), c);
          epi(ir, mr, p, c);
        }
      }
    }
  }

  // ---- ranks ------------------------------------------------------------------------------------
  template <bool kSq>
  struct CountEpi {
    const Packed& P;
    const T* thr;  // [mb] per-row threshold (block-relative)
    const T* qn;   // [mb] per-row |q|^2 (kSqL2)
    int64_t* cnt;  // [mb] counts (block-relative)
    MPX_GEMM_INLINE void operator()(int64_t ir, int mr, int64_t p, V (&c)[MR][NV]) const {
      V cn[NV];
      if (kSq)
        for (int v = 0; v < NV; ++v) cn[v] = O::loadu(P.norms.get() + p * NR + v * W);
      uint32_t vb[NV];
      for (int v = 0; v < NV; ++v) vb[v] = valid_bits(P, p, v);
      for (int i = 0; i < MR; ++i) {
        if (i >= mr) break;
        const V t = O::set1(thr[ir + i]);
        const V q = kSq ? O::set1(qn[ir + i]) : O::zero();
        int64_t n = 0;
        for (int v = 0; v < NV; ++v) {
          const V kv = key<kSq>(c[i][v], q, kSq ? cn[v] : c[i][v]);
          const uint32_t m = (kSq ? O::le(kv, t) : O::ge(kv, t)) & vb[v];
          n += __builtin_popcount(m);
        }
        cnt[ir + i] += n;
      }
    }
  };

  // Smallest T >= x (kDot: s >= x <=> s >= up(x) for T s) / largest T <= x (kSqL2).
  static T round_up(double x) {
    T t = static_cast<T>(x);
    if (static_cast<double>(t) < x) t = std::nextafter(t, std::numeric_limits<T>::infinity());
    return t;
  }
  static T round_down(double x) {
    T t = static_cast<T>(x);
    if (static_cast<double>(t) > x) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
    return t;
  }

  template <bool kSq>
  static void ranks(const T* Qm, const T* Cm, int64_t Q, int64_t N, int64_t D,
                    const int64_t* targets, double* target_scores, int64_t* ranks, int nt) {
    Packed P;
    pack(Cm, N, D, kSq, nt, P);
    std::vector<T> qn(kSq ? Q : 0), thr(Q);
    std::vector<int64_t> self(Q);
    // Target keys with exactly the tile arithmetic; per-row thresholds in T.
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < Q; ++i) {
      const T* q = Qm + i * D;
      const T qni = kSq ? dot_fma_chain(q, q, D) : T(0);
      if (kSq) qn[i] = qni;
      const int64_t t = targets[i];
      T tk;
      if (t >= 0) {
        const T* c = Cm + t * D;
        const T s = dot_fma_chain(q, c, D);
        tk = key_scalar<kSq>(s, qni, kSq ? P.norms.get()[t] : T(0));
        target_scores[i] = static_cast<double>(tk);
        thr[i] = tk;
        // The target's own tile key equals tk bit for bit, so the count includes it once.
        self[i] = kSq ? (tk <= tk ? 1 : 0) : (tk >= tk ? 1 : 0);
      } else {
        const double x = target_scores[i];
        thr[i] = kSq ? round_down(x) : round_up(x);
        self[i] = 0;
      }
    }
    // Work items: (panel chunk) x (query block), chunk-major so that a thread's consecutive items
    // share the L2-resident candidate chunk; per-thread counts, summed in a fixed order (counts
    // are integers: the result does not depend on the thread count).
    const int64_t nqb = (Q + kBlockRows - 1) / kBlockRows;
    const int64_t ch = chunk_panels(D);
    const int64_t nch = (P.np + ch - 1) / ch;
    const int64_t items = nqb * nch;
    const int nthr = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, items)));
    std::vector<int64_t> counts(static_cast<size_t>(nthr) * Q, 0);
#pragma omp parallel num_threads(nthr)
    {
      int64_t* cnt = counts.data() + static_cast<int64_t>(omp_get_thread_num()) * Q;
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < items; ++it) {
        const int64_t ci = it / nqb, qb = it % nqb;
        const int64_t i0 = qb * kBlockRows, mb = std::min<int64_t>(kBlockRows, Q - i0);
        const int64_t p0 = ci * ch, p1 = std::min(P.np, p0 + ch);
        CountEpi<kSq> epi{P, thr.data() + i0, kSq ? qn.data() + i0 : nullptr, cnt + i0};
        sweep(Qm, D, i0, mb, P, p0, p1, epi);
      }
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < Q; ++i) {
      int64_t n = 0;
      for (int t = 0; t < nthr; ++t) n += counts[static_cast<size_t>(t) * Q + i];
      ranks[i] = n - self[i];
    }
  }

  // ---- top-k ------------------------------------------------------------------------------------
  // Selection value: kDot: the score; kSqL2: -key (so "larger is better" in both cases).
  struct Item {
    T v;
    int64_t j;
  };
  struct Better {  // a functor (not a function pointer) so that std::sort / nth_element inline it
    MPX_GEMM_INLINE bool operator()(const Item& a, const Item& b) const {
      return a.v > b.v || (a.v == b.v && a.j < b.j);
    }
  };

  // Per-query bounded buffer: admits v >= thr; at capacity keeps the best k (nth_element) and
  // raises thr to the k-th best value. Ties at thr are admitted and resolved by index at
  // compaction, so the result is exact.
  struct Sel {
    Item* buf;
    int64_t n;
    T thr;
  };
  static void compact(Sel& s, int64_t k) {
    if (s.n <= k) return;
    std::nth_element(s.buf, s.buf + (k - 1), s.buf + s.n, Better());
    s.n = k;
    s.thr = s.buf[k - 1].v;  // the k-th best: every kept item is >= it
  }

  // Slow path of the selection epilogue (kept out of line so that no call sits inside the
  // register-tile loop, which would force the accumulators to the stack): admits the lanes of
  // vals[i][*] that pass the row's threshold.
  static __attribute__((noinline)) void admit(const T (*vals)[NR], const uint32_t (*m)[NV],
                                              int mr, int64_t j0, Sel* sel, int64_t k,
                                              int64_t cap) {
    for (int i = 0; i < mr; ++i) {
      Sel& s = sel[i];
      for (int v = 0; v < NV; ++v) {
        uint32_t bits = m[i][v];
        while (bits) {
          const int l = __builtin_ctz(bits);
          bits &= bits - 1;
          const T x = vals[i][v * W + l];
          if (!(x >= s.thr)) continue;  // thr may have risen since the mask was taken
          if (s.n == cap) compact(s, k);
          s.buf[s.n++] = Item{x, j0 + v * W + l};
        }
      }
    }
  }

  template <bool kSq>
  struct SelEpi {
    const Packed& P;
    const T* qn;  // [mb] (kSqL2)
    Sel* sel;     // [mb]
    int64_t k, cap;
    MPX_GEMM_INLINE void operator()(int64_t ir, int mr, int64_t p, V (&c)[MR][NV]) const {
      V cn[NV];
      if (kSq)
        for (int v = 0; v < NV; ++v) cn[v] = O::loadu(P.norms.get() + p * NR + v * W);
      uint32_t vb[NV];
      for (int v = 0; v < NV; ++v) vb[v] = valid_bits(P, p, v);
      alignas(64) T vals[MR][NR];
      uint32_t m[MR][NV];
      uint32_t any = 0;
      for (int i = 0; i < MR; ++i) {
        if (i >= mr) break;
        const V t = O::set1(sel[ir + i].thr);
        const V q = kSq ? O::set1(qn[ir + i]) : O::zero();
        for (int v = 0; v < NV; ++v) {
          V kv = key<kSq>(c[i][v], q, kSq ? cn[v] : c[i][v]);
          if (kSq) kv = O::neg(kv);
          m[i][v] = O::ge(kv, t) & vb[v];
          any |= m[i][v];
          O::store_all(&vals[i][v * W], kv);
        }
      }
      if (any) admit(vals, m, mr, p * NR, sel + ir, k, cap);
    }
  };

  // Runs the selection of query rows [i0, i0 + mb) over panels [p0, p1); leaves each row's
  // best min(k, seen) items (unsorted) in sel[r].buf[0 .. sel[r].n).
  template <bool kSq>
  static void select(const T* Qm, int64_t D, int64_t i0, int64_t mb, const Packed& P, int64_t p0,
                     int64_t p1, const T* qn, int64_t k, int64_t cap, Item* bufs, Sel* sel) {
    for (int64_t r = 0; r < mb; ++r)
      sel[r] = Sel{bufs + r * cap, 0, -std::numeric_limits<T>::infinity()};
    SelEpi<kSq> epi{P, qn, sel, k, cap};
    sweep(Qm, D, i0, mb, P, p0, p1, epi);
    for (int64_t r = 0; r < mb; ++r) compact(sel[r], k);
  }

  static void emit(Item* items, int64_t n, int64_t k, bool kSq, T* out_s, int64_t* out_i) {
    // n >= k here (k <= N and every candidate was seen by someone).
    std::nth_element(items, items + (k - 1), items + n, Better());
    std::sort(items, items + k, Better());
    for (int64_t r = 0; r < k; ++r) {
      out_s[r] = kSq ? -items[r].v : items[r].v;
      out_i[r] = items[r].j;
    }
  }

  template <bool kSq>
  static void topk(const T* Qm, const T* Cm, int64_t Q, int64_t N, int64_t D, int64_t k,
                   T* out_scores, int64_t* out_idx, int nt) {
    Packed P;
    pack(Cm, N, D, kSq, nt, P);
    std::vector<T> qn(kSq ? Q : 0);
    if (kSq) {
#pragma omp parallel for num_threads(nt) schedule(static)
      for (int64_t i = 0; i < Q; ++i) qn[i] = dot_fma_chain(Qm + i * D, Qm + i * D, D);
    }
    // Buffer of 4k: each compaction (linear nth_element over the buffer) frees 3k slots.
    const int64_t cap = std::max<int64_t>(4 * k, k + 256);
    const int64_t nqb = (Q + kBlockRows - 1) / kBlockRows;
    if (nqb >= 2 * nt || nt == 1 || P.np < 2 * nt) {
      // Many queries: threads take whole query blocks and stream all candidates.
#pragma omp parallel num_threads(nt)
      {
        std::vector<Item> bufs(static_cast<size_t>(kBlockRows * cap));
        std::vector<Sel> sel(kBlockRows);
#pragma omp for schedule(dynamic, 1)
        for (int64_t qb = 0; qb < nqb; ++qb) {
          const int64_t i0 = qb * kBlockRows, mb = std::min<int64_t>(kBlockRows, Q - i0);
          select<kSq>(Qm, D, i0, mb, P, 0, P.np, kSq ? qn.data() + i0 : nullptr, k, cap,
                      bufs.data(), sel.data());
          for (int64_t r = 0; r < mb; ++r)
            emit(sel[r].buf, sel[r].n, k, kSq, out_scores + (i0 + r) * k,
                 out_idx + (i0 + r) * k);
        }
      }
      return;
    }
    // Few queries: split the candidates across threads (contiguous panel ranges), each keeps
    // its best k per query; then merge per query.
    const int64_t nparts = nt;
    for (int64_t qb = 0; qb < nqb; ++qb) {
      const int64_t i0 = qb * kBlockRows, mb = std::min<int64_t>(kBlockRows, Q - i0);
      std::vector<Item> part(static_cast<size_t>(nparts * mb * k));
      std::vector<int64_t> pn(static_cast<size_t>(nparts * mb), 0);
#pragma omp parallel num_threads(nt)
      {
        std::vector<Item> bufs(static_cast<size_t>(mb * cap));
        std::vector<Sel> sel(mb);
#pragma omp for schedule(static, 1)
        for (int64_t t = 0; t < nparts; ++t) {
          const int64_t p0 = P.np * t / nparts, p1 = P.np * (t + 1) / nparts;
          select<kSq>(Qm, D, i0, mb, P, p0, p1, kSq ? qn.data() + i0 : nullptr, k, cap,
                      bufs.data(), sel.data());
          for (int64_t r = 0; r < mb; ++r) {
            std::copy(sel[r].buf, sel[r].buf + sel[r].n, part.data() + (t * mb + r) * k);
            pn[t * mb + r] = sel[r].n;
          }
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t r = 0; r < mb; ++r) {
          std::vector<Item> all;
          all.reserve(static_cast<size_t>(nparts * k));
          for (int64_t t = 0; t < nparts; ++t)
            all.insert(all.end(), part.begin() + (t * mb + r) * k,
                       part.begin() + (t * mb + r) * k + pn[t * mb + r]);
          emit(all.data(), static_cast<int64_t>(all.size()), k, kSq, out_scores + (i0 + r) * k,
               out_idx + (i0 + r) * k);
        }
      }
    }
  }
};

}  // namespace retrieval

// Entry points of this ISA (called from retrieval.cpp's dispatch).
template <typename T>
void retrieval_ranks_isa(const T* Qm, const T* Cm, int64_t Q, int64_t N, int64_t D,
                         const int64_t* targets, double* target_scores, Metric metric,
                         int64_t* ranks, int nt) {
  if (metric == Metric::kSqL2)
    retrieval::Impl<T>::template ranks<true>(Qm, Cm, Q, N, D, targets, target_scores, ranks, nt);
  else
    retrieval::Impl<T>::template ranks<false>(Qm, Cm, Q, N, D, targets, target_scores, ranks, nt);
}

template <typename T>
void topk_retrieve_isa(const T* Qm, const T* Cm, int64_t Q, int64_t N, int64_t D, int64_t k,
                       Metric metric, T* out_scores, int64_t* out_idx, int nt) {
  if (metric == Metric::kSqL2)
    retrieval::Impl<T>::template topk<true>(Qm, Cm, Q, N, D, k, out_scores, out_idx, nt);
  else
    retrieval::Impl<T>::template topk<false>(Qm, Cm, Q, N, D, k, out_scores, out_idx, nt);
}

}  // namespace MPX_ISA
}  // namespace cpu
}  // namespace molphenix
