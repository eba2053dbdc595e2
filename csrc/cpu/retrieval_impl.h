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
//     an epilogue: compare-and-count (ranks) or threshold-filtered insertion (top-k; radix
//     compaction on order-preserving integer keys, start threshold from a sample). No score
//     matrix is ever stored; working memory is O((Q + N) * D + threads * tiles).
//   * kSqL2 key = max((|q|^2 + |c|^2) - 2 * s, 0) with the norms from dot_fma: the same operations
//     in the same order in the vector epilogue and in the scalar target computation.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "gemm_kernels.h"
#include "molphenix/common.h"
#include "molphenix/workspace.h"

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
  size_t bytes = 0;  // counted in the workspace total while alive
  explicit AlignedBuf(int64_t n) {
    size_t b = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
    b = (b + 63) / 64 * 64;
    ptr.reset(static_cast<T*>(std::aligned_alloc(64, b)));
    if (!ptr) throw std::bad_alloc();
    bytes = b;
    workspace_add(bytes);
  }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(AlignedBuf&& o) noexcept {
    if (this != &o) {
      workspace_sub(bytes);
      ptr = std::move(o.ptr);
      bytes = o.bytes;
      o.bytes = 0;
    }
    return *this;
  }
  ~AlignedBuf() { workspace_sub(bytes); }
  T* get() const { return ptr.get(); }
};

template <typename T>
struct Impl {
  using K = Kernel<T>;
  using O = typename K::Ops;
  using V = typename K::V;
  static constexpr int W = K::W, MR = K::MR, NV = K::NV, NR = K::NR;

  // ---- packed candidates ------------------------------------------------------------------------
  // A view of packed panels: panel p holds candidates [p * NR, p * NR + NR) as D rows of NR values
  // (panel p, row k: data[p * D * NR + k * NR + lane]), zero padded past N; norms[j] = |c_j|^2
  // (kSqL2 only; zero padded). Owned either by a call (PackedOwner) or by a PackedCandidates
  // handle that outlives many calls (pack once, search many times).
  struct Packed {
    int64_t N = 0, D = 0, np = 0;
    const T* data = nullptr;
    const T* norms = nullptr;
    const T* panel(int64_t p) const { return data + p * D * NR; }
  };
  struct PackedOwner {
    AlignedBuf<T> data{1};
    AlignedBuf<T> norms{1};
    Packed view;
  };

  static int64_t num_panels(int64_t N) { return (N + NR - 1) / NR; }

  // Writes candidate rows [row0, row0 + n) (row-major [n, D] at C) into their panels of
  // data / norms (sized for num_panels(N) panels; the caller zeroes the padding). row0 need not
  // be a multiple of NR, so a library stored in blocks of any size packs block by block into
  // one set of panels. The values and norms are exactly those of a pack of all rows at once.
  static void pack_rows(const T* C, int64_t row0, int64_t n, int64_t D, bool with_norms, int nt,
                        T* data, T* norms) {
    if (n <= 0) return;
    const int64_t p0 = row0 / NR, p1 = (row0 + n - 1) / NR + 1;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t j0 = std::max<int64_t>(row0, p * NR), j1 = std::min<int64_t>(row0 + n, p * NR + NR);
      T* dst = data + p * D * NR;
      for (int64_t j = j0; j < j1; ++j) {
        const T* src = C + (j - row0) * D;
        T* d = dst + (j - p * NR);
        for (int64_t k = 0; k < D; ++k) d[k * NR] = src[k];
        if (with_norms) norms[j] = dot_fma_chain(src, src, D);
      }
    }
  }

  // Packs all N rows of C (one call's own copy; freed when O goes).
  static void pack(const T* C, int64_t N, int64_t D, bool with_norms, int nt, PackedOwner& O) {
    const int64_t np = num_panels(N);
    O.data = AlignedBuf<T>(np * D * NR);
    O.norms = AlignedBuf<T>(np * NR);
    T* out = O.data.get();
    T* nrm = O.norms.get();
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t p = 0; p < np; ++p) {
      const int64_t j0 = p * NR, nc = std::min<int64_t>(NR, N - j0);
      K::pack_b(D, nc, C + j0 * D, 1, D, out + p * D * NR);
      for (int64_t j = 0; j < NR; ++j)
        nrm[j0 + j] = (with_norms && j < nc) ? dot_fma_chain(C + (j0 + j) * D, C + (j0 + j) * D, D)
                                              : T(0);
    }
    O.view = Packed{N, D, np, out, nrm};
  }

  // Row j of the packed candidates, gathered back (the exact stored values).
  static void unpack_row(const Packed& P, int64_t j, T* out) {
    const T* src = P.panel(j / NR) + (j % NR);
    for (int64_t k = 0; k < P.D; ++k) out[k] = src[k * NR];
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
        for (int v = 0; v < NV; ++v) cn[v] = O::loadu(P.norms + p * NR + v * W);
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
    PackedOwner O;
    pack(Cm, N, D, kSq, nt, O);
    ranks_packed<kSq>(Qm, Cm, O.view, Q, targets, target_scores, ranks, nt);
  }

  // ranks on packed candidates; Cm: the row-major candidates, or nullptr (the target rows are
  // then gathered back from the panels: the same values, so the same keys bit for bit).
  template <bool kSq>
  static void ranks_packed(const T* Qm, const T* Cm, const Packed& P, int64_t Q,
                           const int64_t* targets, double* target_scores, int64_t* ranks, int nt) {
    const int64_t D = P.D;
    WsVec<T> qn(kSq ? Q : 0), thr(Q);
    WsVec<int64_t> self(Q);
    // Target keys with exactly the tile arithmetic; per-row thresholds in T.
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < Q; ++i) {
      const T* q = Qm + i * D;
      const T qni = kSq ? dot_fma_chain(q, q, D) : T(0);
      if (kSq) qn[i] = qni;
      const int64_t t = targets[i];
      T tk;
      if (t >= 0) {
        const T* c = Cm ? Cm + t * D : nullptr;
        WsVec<T> row;
        if (!c) {
          row.resize(static_cast<size_t>(D));
          unpack_row(P, t, row.data());
          c = row.data();
        }
        const T s = dot_fma_chain(q, c, D);
        tk = key_scalar<kSq>(s, qni, kSq ? P.norms[t] : T(0));
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
    WsVec<int64_t> counts(static_cast<size_t>(nthr) * Q, 0);
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
  // Selection value v: kDot: the score; kSqL2: -key (so "larger is better" in both cases). Items
  // are kept as order-preserving unsigned keys u = ord(v) (larger v <=> larger u; -0 -> +0) with
  // the candidate index alongside (structure of arrays). Every buffer holds its items in
  // increasing candidate index (a row's tiles arrive in increasing index and every compaction is a
  // stable filter), so a stable sort on u alone breaks ties by the lower index.
  using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  static constexpr int kUBits = 8 * static_cast<int>(sizeof(U));
  static constexpr U kSign = U(1) << (kUBits - 1);
  static MPX_GEMM_INLINE U ord(T x) {
    x = x + T(0);  // -0 -> +0 (IEEE: -0 + +0 = +0; no fast-math, so this is not folded away)
    U b;
    std::memcpy(&b, &x, sizeof(T));
    return (b & kSign) ? static_cast<U>(~b) : static_cast<U>(b | kSign);
  }
  static MPX_GEMM_INLINE T unord(U u) {
    const U b = (u & kSign) ? static_cast<U>(u & ~kSign) : static_cast<U>(~u);
    T x;
    std::memcpy(&x, &b, sizeof(T));
    return x;
  }

  // Per-query bounded buffer: admits v >= thr (ties admitted); at capacity keeps the best k
  // (radix select + stable filter) and raises thr to the k-th best value. Anything rejected is
  // worse than k kept items (or, before any compaction, below the start threshold: see topk).
  struct Sel {
    U* key;
    int64_t* idx;
    int64_t n;
    T thr;
  };

  // Scratch of one thread: radix-select keys [cap], sort ping-pong [k] keys + indices.
  struct Scratch {
    WsVec<U> sel;
    WsVec<U> skey;
    WsVec<int64_t> sidx;
    WsVec<uint32_t> hist;
    Scratch(int64_t cap, int64_t k) : sel(cap), skey(k), sidx(k), hist(1 << 11) {}
  };

  // The k-th largest of key[0 .. n) (1 <= k <= n) by MSD radix select (11-bit digits; after the
  // first pass only the bucket that holds the k-th is carried on). greater = #keys > result.
  static __attribute__((noinline)) U kth_largest(const U* key, int64_t n, int64_t k, Scratch& s,
                                                 int64_t& greater) {
    uint32_t* h = s.hist.data();
    U* sc = s.sel.data();
    const U* cur = key;
    int64_t m = n, need = k;
    int shift = kUBits;
    U prefix = 0;
    greater = 0;
    while (true) {
      const int width = std::min(11, shift);
      shift -= width;
      const U dmask = static_cast<U>((U(1) << width) - 1);
      const int nb = 1 << width;
      std::fill(h, h + nb, 0u);
      for (int64_t i = 0; i < m; ++i) ++h[(cur[i] >> shift) & dmask];
      int b = nb - 1;
      int64_t cum = 0;
      for (; b > 0; --b) {
        if (cum + h[b] >= need) break;
        cum += h[b];
      }
      greater += cum;
      need -= cum;
      prefix |= static_cast<U>(U(b) << shift);
      if (shift == 0) return prefix;
      // carry on with the keys of bucket b only
      int64_t w = 0;
      for (int64_t i = 0; i < m; ++i) {
        const U u = cur[i];
        sc[w] = u;
        w += (((u >> shift) & dmask) == U(b)) ? 1 : 0;
      }
      cur = sc;
      m = w;
    }
  }

  // Keeps the best min(k, n) items of s (stable: the index order is kept) and raises thr.
  static __attribute__((noinline)) void compact(Sel& s, int64_t k, Scratch& sc) {
    if (s.n <= k) return;
    int64_t greater = 0;
    const U kth = kth_largest(s.key, s.n, k, sc, greater);
    int64_t eq = k - greater;  // how many keys == kth are kept: the first ones (lowest index)
    int64_t w = 0;
    for (int64_t i = 0; i < s.n; ++i) {
      const U u = s.key[i];
      const int64_t j = s.idx[i];
      const bool e = (u == kth);
      const bool keep = (u > kth) | (e & (eq > 0));
      eq -= (e & keep) ? 1 : 0;
      s.key[w] = u;
      s.idx[w] = j;
      w += keep ? 1 : 0;
    }
    s.n = k;
    s.thr = unord(kth);  // the k-th best: every kept item is >= it
  }

  // Slow path of the selection epilogue (kept out of line so that no call sits inside the
  // register-tile loop, which would force the accumulators to the stack): admits the lanes of
  // vals[i][*] that pass the row's threshold.
  static __attribute__((noinline)) void admit(const T (*vals)[NR], const uint32_t (*m)[NV],
                                              int mr, int64_t j0, Sel* sel, int64_t k,
                                              int64_t cap, Scratch* sc) {
    for (int i = 0; i < mr; ++i) {
      uint32_t any = 0;
      for (int v = 0; v < NV; ++v) any |= m[i][v];
      if (!any) continue;
      Sel& s = sel[i];
      // locals: the stores below may alias Sel's fields as far as the compiler knows
      U* key = s.key;
      int64_t* idx = s.idx;
      int64_t n = s.n;
      T thr = s.thr;
      for (int v = 0; v < NV; ++v) {
        uint32_t bits = m[i][v];
        while (bits) {
          const int l = __builtin_ctz(bits);
          bits &= bits - 1;
          const T x = vals[i][v * W + l];
          if (!(x >= thr)) continue;  // thr may have risen since the mask was taken
          if (n == cap) {
            s.n = n;
            compact(s, k, *sc);
            n = s.n;
            thr = s.thr;
          }
          key[n] = ord(x);
          idx[n] = j0 + v * W + l;
          ++n;
        }
      }
      s.n = n;
    }
  }

  // Selection value of a register tile (kSqL2: -key).
  template <bool kSq>
  static MPX_GEMM_INLINE V selval(V c, V q, V cn) {
    V kv = key<kSq>(c, q, kSq ? cn : c);
    if (kSq) kv = O::neg(kv);
    return kv;
  }

  template <bool kSq>
  struct SelEpi {
    const Packed& P;
    const T* qn;  // [mb] (kSqL2)
    Sel* sel;     // [mb]
    int64_t k, cap;
    Scratch* sc;
    MPX_GEMM_INLINE void operator()(int64_t ir, int mr, int64_t p, V (&c)[MR][NV]) const {
      V cn[NV];
      if (kSq)
        for (int v = 0; v < NV; ++v) cn[v] = O::loadu(P.norms + p * NR + v * W);
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
          const V kv = selval<kSq>(c[i][v], q, kSq ? cn[v] : c[i][v]);
          m[i][v] = O::ge(kv, t) & vb[v];
          any |= m[i][v];
          O::store_all(&vals[i][v * W], kv);
        }
      }
      if (any) admit(vals, m, mr, p * NR, sel + ir, k, cap, sc);
    }
  };

  // Runs the selection of query rows [i0, i0 + mb) over panels [p0, p1) with start thresholds
  // thr0 (nullptr: -inf); leaves each row's best min(k, admitted) items in sel[r].
  template <bool kSq>
  static void select(const T* Qm, int64_t D, int64_t i0, int64_t mb, const Packed& P, int64_t p0,
                     int64_t p1, const T* qn, const T* thr0, int64_t k, int64_t cap, U* keys,
                     int64_t* idx, Sel* sel, Scratch& sc) {
    for (int64_t r = 0; r < mb; ++r)
      sel[r] = Sel{keys + r * cap, idx + r * cap, 0,
                   thr0 ? thr0[r] : -std::numeric_limits<T>::infinity()};
    SelEpi<kSq> epi{P, qn, sel, k, cap, &sc};
    sweep(Qm, D, i0, mb, P, p0, p1, epi);
    for (int64_t r = 0; r < mb; ++r) compact(sel[r], k, sc);
  }

  // Start thresholds from a sample: the selection values of rows [i0, i0 + mb) against ns panels
  // spread over the candidates; thr0[r] = the value of sample rank rk (well above the expected
  // rank of the k-th best, so that at least k candidates pass with overwhelming probability;
  // topk checks it and redoes a row from -inf when fewer than k passed). Only speed depends on it.
  template <bool kSq>
  static __attribute__((noinline)) void guess(const T* Qm, int64_t D, int64_t i0, int64_t mb,
                                              const Packed& P, int64_t ns, int64_t rk,
                                              const T* qn, U* samp, T* thr0, Scratch& sc) {
    const int64_t ld = ns * NR;
    WsVec<int64_t> cnt(mb, 0);
    for (int64_t si = 0; si < ns; ++si) {  // panel outer: it stays in L1/L2 over the rows
      const int64_t p = si * P.np / ns;
      V cn[NV];
      if (kSq)
        for (int v = 0; v < NV; ++v) cn[v] = O::loadu(P.norms + p * NR + v * W);
      uint32_t vb[NV];
      for (int v = 0; v < NV; ++v) vb[v] = valid_bits(P, p, v);
      for (int64_t ir = 0; ir < mb; ir += MR) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, mb - ir));
        const T* A = Qm + (i0 + ir) * D;
        V c[MR][NV];
        K::zero(c);
        K::tile(D, A, D, 1, mr, P.panel(p), c);
        alignas(64) T vals[MR][NR];
        for (int i = 0; i < MR; ++i) {
          const V q = kSq ? O::set1(qn[ir + std::min(i, mr - 1)]) : O::zero();
          for (int v = 0; v < NV; ++v)
            O::store_all(&vals[i][v * W], selval<kSq>(c[i][v], q, kSq ? cn[v] : c[i][v]));
        }
        for (int i = 0; i < mr; ++i) {
          U* dst = samp + (ir + i) * ld;
          int64_t n = cnt[ir + i];
          for (int v = 0; v < NV; ++v)
            for (int l = 0; l < W; ++l) {
              const T x = vals[i][v * W + l];
              dst[n] = ord(x);
              n += ((vb[v] >> l) & 1u) && x == x ? 1 : 0;  // NaN never passes a threshold
            }
          cnt[ir + i] = n;
        }
      }
    }
    for (int64_t r = 0; r < mb; ++r) {
      if (cnt[r] < rk) {
        thr0[r] = -std::numeric_limits<T>::infinity();
        continue;
      }
      int64_t greater = 0;
      thr0[r] = unord(kth_largest(samp + r * ld, cnt[r], rk, sc, greater));
    }
  }

  // Writes the best k of key/idx[0 .. n) (n >= k, increasing index order), sorted best first:
  // radix select, then a stable LSD radix sort on the key distance to the best key (as many
  // <= 11-bit digits as the key range of the k items needs).
  static __attribute__((noinline)) void emit(U* key, int64_t* idx, int64_t n, int64_t k, bool kSq,
                                             Scratch& sc, T* out_s, int64_t* out_i) {
    if (n > k) {
      Sel s{key, idx, n, T(0)};
      compact(s, k, sc);
    }
    U hi = 0, lo = ~U(0);
    for (int64_t r = 0; r < k; ++r) {
      hi = std::max(hi, key[r]);
      lo = std::min(lo, key[r]);
    }
    const U range = hi - lo;
    int bits = 0;
    while (bits < kUBits && (range >> bits) != 0) ++bits;
    const int passes = (bits + 10) / 11;
    const int width = passes ? (bits + passes - 1) / passes : 0;
    U* ka = key;
    int64_t* ia = idx;
    U* kb = sc.skey.data();
    int64_t* ib = sc.sidx.data();
    uint32_t* h = sc.hist.data();
    for (int ps = 0; ps < passes; ++ps) {
      const int shift = ps * width;
      const U dmask = static_cast<U>((U(1) << width) - 1);
      const int nb = 1 << width;
      std::fill(h, h + nb, 0u);
      for (int64_t r = 0; r < k; ++r) ++h[((hi - ka[r]) >> shift) & dmask];
      uint32_t sum = 0;
      for (int b = 0; b < nb; ++b) {
        const uint32_t c = h[b];
        h[b] = sum;
        sum += c;
      }
      if (ps == passes - 1) {
        for (int64_t r = 0; r < k; ++r) {
          const uint32_t pos = h[((hi - ka[r]) >> shift) & dmask]++;
          const T v = unord(ka[r]);
          out_s[pos] = kSq ? T(0) - v : v;
          out_i[pos] = ia[r];
        }
        return;
      }
      for (int64_t r = 0; r < k; ++r) {
        const uint32_t pos = h[((hi - ka[r]) >> shift) & dmask]++;
        kb[pos] = ka[r];
        ib[pos] = ia[r];
      }
      std::swap(ka, kb);
      std::swap(ia, ib);
    }
    // one key value: already in index order
    for (int64_t r = 0; r < k; ++r) {
      const T v = unord(ka[r]);
      out_s[r] = kSq ? T(0) - v : v;
      out_i[r] = ia[r];
    }
  }

  // Fewer than k selectable candidates (NaN scores): the rest of the row is (NaN, -1).
  static void emit_short(U* key, int64_t* idx, int64_t n, int64_t k, bool kSq, Scratch& sc,
                         T* out_s, int64_t* out_i) {
    if (n > 0) emit(key, idx, n, n, kSq, sc, out_s, out_i);
    for (int64_t r = std::max<int64_t>(n, 0); r < k; ++r) {
      out_s[r] = std::numeric_limits<T>::quiet_NaN();
      out_i[r] = -1;
    }
  }

  // Sample plan: ns panels (0: no sampling) and the sample rank rk of the start threshold.
  static void plan(int64_t N, int64_t np, int64_t k, int64_t& ns, int64_t& rk) {
    ns = std::min<int64_t>(64, np / 16);
    rk = 0;
    if (ns < 8) {
      ns = 0;
      return;
    }
    const double s = static_cast<double>(ns * NR), e = s * static_cast<double>(k) / N;
    rk = static_cast<int64_t>(std::ceil(e + 4.0 * std::sqrt(e) + 2.0));
    if (rk >= s / 2) ns = 0;  // k is a large fraction of N: the sample cannot filter much
  }

  template <bool kSq>
  static void topk(const T* Qm, const T* Cm, int64_t Q, int64_t N, int64_t D, int64_t k,
                   T* out_scores, int64_t* out_idx, int nt) {
    PackedOwner O;
    pack(Cm, N, D, kSq, nt, O);
    topk_packed<kSq>(Qm, O.view, Q, k, out_scores, out_idx, nt);
  }

  template <bool kSq>
  static void topk_packed(const T* Qm, const Packed& P, int64_t Q, int64_t k, T* out_scores,
                          int64_t* out_idx, int nt) {
    const int64_t N = P.N, D = P.D;
    WsVec<T> qn(kSq ? Q : 0);
    if (kSq) {
#pragma omp parallel for num_threads(nt) schedule(static)
      for (int64_t i = 0; i < Q; ++i) qn[i] = dot_fma_chain(Qm + i * D, Qm + i * D, D);
    }
    // Buffer of 2k: each compaction (linear in the buffer) frees k slots. With a sampled start
    // threshold about 1.2-1.7 k candidates pass in all, so compactions are rare.
    const int64_t cap = std::max<int64_t>(2 * k, k + 256);
    int64_t ns = 0, rk = 0;
    plan(N, P.np, k, ns, rk);
    const int64_t nqb = (Q + kBlockRows - 1) / kBlockRows;
    if (nqb >= 2 * nt || nt == 1 || P.np < 2 * nt) {
      // Many queries: threads take whole query blocks and stream all candidates.
#pragma omp parallel num_threads(nt)
      {
        const int64_t rows = std::min<int64_t>(kBlockRows, Q);  // a block's rows at most
        WsVec<U> keys(static_cast<size_t>(rows * cap));
        WsVec<int64_t> idx(static_cast<size_t>(rows * cap));
        WsVec<Sel> sel(rows);
        WsVec<U> samp(static_cast<size_t>(ns ? rows * ns * NR : 0));
        WsVec<T> thr0(rows);
        WsVec<int64_t> fail;
        WsVec<T> fq, fqn;
        Scratch sc(std::max(cap, ns * NR), k);
#pragma omp for schedule(dynamic, 1)
        for (int64_t qb = 0; qb < nqb; ++qb) {
          const int64_t i0 = qb * kBlockRows, mb = std::min<int64_t>(kBlockRows, Q - i0);
          const T* qnb = kSq ? qn.data() + i0 : nullptr;
          if (ns) guess<kSq>(Qm, D, i0, mb, P, ns, rk, qnb, samp.data(), thr0.data(), sc);
          select<kSq>(Qm, D, i0, mb, P, 0, P.np, qnb, ns ? thr0.data() : nullptr, k, cap,
                      keys.data(), idx.data(), sel.data(), sc);
          fail.clear();
          for (int64_t r = 0; r < mb; ++r) {
            if (sel[r].n >= k)
              emit(sel[r].key, sel[r].idx, sel[r].n, k, kSq, sc, out_scores + (i0 + r) * k,
                   out_idx + (i0 + r) * k);
            else if (ns)
              fail.push_back(r);
            else
              emit_short(sel[r].key, sel[r].idx, sel[r].n, k, kSq, sc,
                         out_scores + (i0 + r) * k, out_idx + (i0 + r) * k);
          }
          if (fail.empty()) continue;
          // Fewer than k candidates reached the sampled threshold: redo those rows from -inf.
          const int64_t nf = static_cast<int64_t>(fail.size());
          fq.resize(static_cast<size_t>(nf * D));
          fqn.resize(static_cast<size_t>(nf));
          for (int64_t f = 0; f < nf; ++f) {
            std::copy(Qm + (i0 + fail[f]) * D, Qm + (i0 + fail[f] + 1) * D, fq.data() + f * D);
            if (kSq) fqn[f] = qn[i0 + fail[f]];
          }
          select<kSq>(fq.data(), D, 0, nf, P, 0, P.np, kSq ? fqn.data() : nullptr, nullptr, k,
                      cap, keys.data(), idx.data(), sel.data(), sc);
          for (int64_t f = 0; f < nf; ++f) {
            const int64_t r = i0 + fail[f];
            if (sel[f].n >= k)
              emit(sel[f].key, sel[f].idx, sel[f].n, k, kSq, sc, out_scores + r * k,
                   out_idx + r * k);
            else
              emit_short(sel[f].key, sel[f].idx, sel[f].n, k, kSq, sc, out_scores + r * k,
                         out_idx + r * k);
          }
        }
      }
      return;
    }
    // Few queries: split the candidates across threads (contiguous panel ranges, one part per
    // thread); each part keeps its best k per query. Then each query folds its parts, in range
    // order, into one buffer of 2k, compacting to the best k whenever it would overflow (items
    // stay in index order: parts in range order, stable compaction). Working memory: the parts'
    // buffers (threads x rows x 2k items) plus, per thread, a 2k merge buffer and the selection
    // scratch (about 3k items): O(threads x rows x k) with rows <= kBlockRows, never
    // threads^2 x k.
    const int64_t nparts = nt;
    const int64_t mbmax = std::min<int64_t>(kBlockRows, Q);
    WsVec<U> samp(static_cast<size_t>(ns ? mbmax * ns * NR : 0));
    WsVec<T> thr0(mbmax);
    Scratch gsc(ns * NR, 1);
    WsVec<U> pkey(static_cast<size_t>(nparts * mbmax * cap));
    WsVec<int64_t> pidx(static_cast<size_t>(nparts * mbmax * cap));
    WsVec<Sel> psel(static_cast<size_t>(nparts * mbmax));
    for (int64_t qb = 0; qb < nqb; ++qb) {
      const int64_t i0 = qb * kBlockRows, mb = std::min<int64_t>(kBlockRows, Q - i0);
      const T* qnb = kSq ? qn.data() + i0 : nullptr;
      if (ns) guess<kSq>(Qm, D, i0, mb, P, ns, rk, qnb, samp.data(), thr0.data(), gsc);
#pragma omp parallel num_threads(nt)
      {
        Scratch sc(cap, k);
#pragma omp for schedule(static, 1)
        for (int64_t t = 0; t < nparts; ++t) {
          const int64_t p0 = P.np * t / nparts, p1 = P.np * (t + 1) / nparts;
          select<kSq>(Qm, D, i0, mb, P, p0, p1, qnb, ns ? thr0.data() : nullptr, k, cap,
                      pkey.data() + t * mb * cap, pidx.data() + t * mb * cap,
                      psel.data() + t * mb, sc);
        }
        WsVec<U> akey(static_cast<size_t>(cap));
        WsVec<int64_t> aidx(static_cast<size_t>(cap));
#pragma omp for schedule(dynamic, 1)
        for (int64_t r = 0; r < mb; ++r) {
          Sel acc{akey.data(), aidx.data(), 0, T(0)};
          for (int64_t t = 0; t < nparts; ++t) {
            const Sel& part = psel[t * mb + r];
            for (int64_t i = 0; i < part.n; ++i) {
              if (acc.n == cap) compact(acc, k, sc);
              acc.key[acc.n] = part.key[i];
              acc.idx[acc.n] = part.idx[i];
              ++acc.n;
            }
          }
          T* os = out_scores + (i0 + r) * k;
          int64_t* oi = out_idx + (i0 + r) * k;
          if (acc.n >= k) {
            emit(acc.key, acc.idx, acc.n, k, kSq, sc, os, oi);
          } else if (ns) {
            // too few reached the sampled threshold: this row again, alone, from -inf
            Sel one;
            select<kSq>(Qm, D, i0 + r, 1, P, 0, P.np, qnb ? qnb + r : nullptr, nullptr, k, cap,
                        akey.data(), aidx.data(), &one, sc);
            if (one.n >= k) emit(one.key, one.idx, one.n, k, kSq, sc, os, oi);
            else emit_short(one.key, one.idx, one.n, k, kSq, sc, os, oi);
          } else {
            emit_short(acc.key, acc.idx, acc.n, k, kSq, sc, os, oi);
          }
        }
      }
    }
  }
};

}  // namespace retrieval

// Entry points of this ISA (called from retrieval.cpp's dispatch).
template <typename T>
int packed_panel_width_isa() {
  return retrieval::Impl<T>::NR;
}

template <typename T>
void pack_rows_isa(const T* rows, int64_t row0, int64_t n, int64_t D, bool with_norms, T* data,
                   T* norms, int nt) {
  retrieval::Impl<T>::pack_rows(rows, row0, n, D, with_norms, nt, data, norms);
}

template <typename T>
void retrieval_ranks_packed_isa(const T* Qm, const T* data, const T* norms, int64_t Q, int64_t N,
                                int64_t D, const int64_t* targets, double* target_scores,
                                Metric metric, int64_t* ranks, int nt) {
  using I = retrieval::Impl<T>;
  const typename I::Packed P{N, D, I::num_panels(N), data, norms};
  if (metric == Metric::kSqL2)
    I::template ranks_packed<true>(Qm, nullptr, P, Q, targets, target_scores, ranks, nt);
  else
    I::template ranks_packed<false>(Qm, nullptr, P, Q, targets, target_scores, ranks, nt);
}

template <typename T>
void topk_retrieve_packed_isa(const T* Qm, const T* data, const T* norms, int64_t Q, int64_t N,
                              int64_t D, int64_t k, Metric metric, T* out_scores,
                              int64_t* out_idx, int nt) {
  using I = retrieval::Impl<T>;
  const typename I::Packed P{N, D, I::num_panels(N), data, norms};
  if (metric == Metric::kSqL2)
    I::template topk_packed<true>(Qm, P, Q, k, out_scores, out_idx, nt);
  else
    I::template topk_packed<false>(Qm, P, Q, k, out_scores, out_idx, nt);
}

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
