// The single pybind11 module molphenix._C. It validates dtype, rank, device and contiguity,
// takes arrays zero-copy through DLPack, picks the CPU or CUDA launcher and releases the GIL.
// No math here. Python owns allocation: every output and workspace is passed in.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "array.h"
#include "molphenix/common.h"
#include "molphenix/cpu_features.h"
#include "molphenix/options.h"
#include "molphenix/workspace.h"
#include "molphenix/ops/arctan_l2_similarity.h"
#include "molphenix/ops/retrieval.h"
#include "molphenix/ops/s2l_loss.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef MOLPHENIX_VERSION
#define MOLPHENIX_VERSION "0.0.0"
#endif
#ifndef MOLPHENIX_CUDA_ARCHS
#define MOLPHENIX_CUDA_ARCHS ""
#endif
#ifndef MOLPHENIX_CUDA_REASON
#define MOLPHENIX_CUDA_REASON ""  // why CUDA was (not) built: cmake/options.cmake
#endif

namespace py = pybind11;
using namespace molphenix;
using namespace molphenix::bind;

#ifdef MOLPHENIX_WITH_CUDA
namespace molphenix {
namespace cuda {
int device_count();          // 0 when there is no driver or no device (never throws)
int runtime_version();       // CUDART_VERSION the module was built with
std::string device_name(int device);
// Copies `bytes` from device memory to the host on `stream` and waits for it (validation only).
void copy_to_host(void* dst, const void* src, size_t bytes, void* stream);
}  // namespace cuda
}  // namespace molphenix
#endif

namespace {

[[noreturn, maybe_unused]] void no_cuda(const char* op) {
  throw ValueError(detail::concat(op, ": the arrays are on a CUDA device but this molphenix build has "
                                      "no CUDA kernels (built with MOLPHENIX_WITH_CUDA=OFF or without nvcc)"));
}

void* ptr_or_null(const ArrayView& a) { return a.present ? a.data : nullptr; }

int resolve_threads(int num_threads) {
  MPX_CHECK_VALUE(num_threads >= 1, "num_threads: expected >= 1, got ", num_threads);
  return num_threads;
}

void check_workspace(const ArrayView& ws, size_t need, const char* op) {
  if (need == 0) return;
  MPX_CHECK_VALUE(ws.present, op, ": workspace: expected ", need, " bytes, got None");
  size_t have = 1;
  for (int64_t s : ws.shape) have *= static_cast<size_t>(s);
  have *= ws.dtype.bits / 8;
  MPX_CHECK_VALUE(have >= need, op, ": workspace: expected at least ", need, " bytes, got ", have);
}

// Retrieval targets index the candidates: each must be in [0, N) or -1 ("not in this set").
void check_targets(const int64_t* t, int64_t Q, int64_t N) {
  for (int64_t i = 0; i < Q; ++i)
    MPX_CHECK_VALUE(t[i] >= -1 && t[i] < N, "targets: entry ", i, " is ", t[i],
                    "; expected an index in [0, ", N, ") or -1 (not in this candidate set)");
}

// ---------------------------------------------------------------------------------------------
// run-time settings and workspace accounting
// ---------------------------------------------------------------------------------------------
py::dict get_options() {
  const RuntimeOptions o = runtime_options();
  py::dict d;
  d["simd"] = o.simd;
  d["s2l_tile"] = o.s2l_tile;
  d["cuda_mainloop"] = o.cuda_mainloop;
  d["s2l_blocks_per_sm"] = o.s2l_blocks_per_sm;
  d["s2l_u_simt"] = o.s2l_u_simt;
  d["topk_prefilter"] = o.topk_prefilter;
  return d;
}

void set_options(int simd, int s2l_tile, int cuda_mainloop, int s2l_blocks_per_sm,
                 bool s2l_u_simt, int topk_prefilter) {
  MPX_CHECK_VALUE(simd >= -1 && simd <= 2, "simd: expected -1 (best), 0 (scalar), 1 (avx2) or 2 (avx512), got ", simd);
  MPX_CHECK_VALUE(s2l_tile == 0 || s2l_tile == 64 || s2l_tile == 128 || s2l_tile == 256 || s2l_tile == 512,
                  "s2l_tile: expected 0 (automatic), 64, 128, 256 or 512, got ", s2l_tile);
  MPX_CHECK_VALUE(cuda_mainloop == 0 || cuda_mainloop == 1,
                  "cuda_mainloop: expected 0 (fast) or 1 (simple), got ", cuda_mainloop);
  MPX_CHECK_VALUE(s2l_blocks_per_sm == 1 || s2l_blocks_per_sm == 2,
                  "s2l_blocks_per_sm: expected 1 or 2, got ", s2l_blocks_per_sm);
  MPX_CHECK_VALUE(topk_prefilter >= 0 && topk_prefilter <= 2,
                  "topk_prefilter: expected 0 (off), 1 (on) or 2 (fallback), got ", topk_prefilter);
  RuntimeOptions o;
  o.simd = simd;
  o.s2l_tile = s2l_tile;
  o.cuda_mainloop = cuda_mainloop;
  o.s2l_blocks_per_sm = s2l_blocks_per_sm;
  o.s2l_u_simt = s2l_u_simt;
  o.topk_prefilter = topk_prefilter;
  set_runtime_options(o);
}

// ---------------------------------------------------------------------------------------------
// s2l_loss
// ---------------------------------------------------------------------------------------------
S2LParams make_s2l_params(double scale, double bias, bool has_u, double c, bool has_threshold,
                          double threshold, double gamma, double delta, bool hard_diagonal,
                          int64_t diag_offset, double normalizer, bool compute_grad,
                          bool deterministic) {
  MPX_CHECK_VALUE(scale > 0, "scale: expected > 0, got ", scale);
  MPX_CHECK_VALUE(c > 0, "c: expected > 0, got ", c);
  MPX_CHECK_VALUE(!has_threshold || (threshold >= -1 && threshold <= 1),
                  "threshold: expected a value in [-1, 1], got ", threshold);
  MPX_CHECK_VALUE(normalizer > 0, "normalizer: expected > 0, got ", normalizer);
  S2LParams prm;
  prm.scale = scale;
  prm.bias = bias;
  prm.has_u = has_u;
  prm.c = c;
  prm.has_threshold = has_threshold;
  prm.threshold = threshold;
  prm.gamma = gamma;
  prm.delta = delta;
  prm.hard_diagonal = hard_diagonal;
  prm.diag_offset = diag_offset;
  prm.normalizer = normalizer;
  prm.compute_grad = compute_grad;
  prm.deterministic = deterministic;
  return prm;
}

void s2l_loss_fwd(py::handle p_, py::handle q_, py::handle u_, py::handle u_cols_, py::handle stats_,
                  py::handle grad_p_, py::handle grad_q_, py::handle workspace_, double scale,
                  double bias, double c, bool has_threshold, double threshold, double gamma,
                  double delta, bool hard_diagonal, int64_t diag_offset, double normalizer,
                  bool compute_grad, bool deterministic, int num_threads, uintptr_t stream) {
  ArrayView p = view(p_, "p"), q = view(q_, "q");
  ArrayView u = view(u_, "u", true), uc = view(u_cols_, "u_cols", true);
  ArrayView stats = view(stats_, "stats");
  ArrayView gp = view(grad_p_, "grad_p", true), gq = view(grad_q_, "grad_q", true);
  ArrayView ws = view(workspace_, "workspace", true);
  check_ndim(p, "p", 2);
  check_ndim(q, "q", 2);
  check_float(p, "p");
  check_same_dtype(p, "p", q, "q");
  check_same_device(p, "p", q, "q");
  const int64_t B1 = p.size(0), B2 = q.size(0), D = p.size(1);
  MPX_CHECK_VALUE(q.size(1) == D, "q: expected ", D, " columns (as p), got ", q.size(1));
  MPX_CHECK_VALUE(B1 > 0, "p: the batch is empty (0 rows)");
  MPX_CHECK_VALUE(B2 > 0, "q: the batch is empty (0 rows)");
  MPX_CHECK_VALUE(u.present == uc.present, "u_cols: u and u_cols must be given together");
  int64_t E = 0;
  const DType dt = p.float_dtype();
  const DType udt = dt == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  if (u.present) {
    check_ndim(u, "u", 2);
    check_ndim(uc, "u_cols", 2);
    check_dtype(u, "u", udt);
    check_dtype(uc, "u_cols", udt);
    check_same_device(p, "p", u, "u");
    check_same_device(p, "p", uc, "u_cols");
    E = u.size(1);
    check_shape(u, "u", {B1, E});
    check_shape(uc, "u_cols", {B2, E});
  }
  check_float64(stats, "stats");
  check_shape(stats, "stats", {3});
  check_same_device(p, "p", stats, "stats");
  if (compute_grad) {
    MPX_CHECK_VALUE(gp.present && gq.present, "grad_p/grad_q: required when compute_grad");
    check_same_dtype(p, "p", gp, "grad_p");
    check_same_dtype(p, "p", gq, "grad_q");
    check_shape(gp, "grad_p", {B1, D});
    check_shape(gq, "grad_q", {B2, D});
    check_same_device(p, "p", gp, "grad_p");
    check_same_device(p, "p", gq, "grad_q");
  }
  MPX_CHECK_VALUE(std::isfinite(bias), "bias: expected a finite number, got ", bias);
  MPX_CHECK_VALUE(std::isfinite(gamma) && std::isfinite(delta),
                  "gamma/delta: expected finite numbers, got ", gamma, ", ", delta);
  // The kernels compute row + diag_offset - column in int64: an offset outside [-B1, B2] means
  // "no positive pair" exactly like one at the ends, so it is clamped there (no overflow).
  diag_offset = std::min<int64_t>(std::max<int64_t>(diag_offset, -B1), B2);
  S2LParams prm = make_s2l_params(scale, bias, u.present, c, has_threshold, threshold, gamma, delta,
                                  hard_diagonal, diag_offset, normalizer, compute_grad, deterministic);
  if (p.device == Device::kCPU) {
    check_cpu_dtype(p, "p");
    const int nt = resolve_threads(num_threads);
    py::gil_scoped_release nogil;
    cpu::s2l_loss_fwd(dt, p.data, q.data, ptr_or_null(u), ptr_or_null(uc), B1, B2, D, E, prm,
                      static_cast<double*>(stats.data), compute_grad ? gp.data : nullptr,
                      compute_grad ? gq.data : nullptr, nt);
  } else {
#ifdef MOLPHENIX_WITH_CUDA
    const size_t need = cuda::s2l_loss_workspace_bytes(dt, B1, B2, D, E, prm);
    check_workspace(ws, need, "s2l_loss");
    if (ws.present) check_same_device(p, "p", ws, "workspace");
    py::gil_scoped_release nogil;
    cuda::launch_s2l_loss_fwd(dt, p.data, q.data, ptr_or_null(u), ptr_or_null(uc), B1, B2, D, E,
                              prm, static_cast<double*>(stats.data),
                              compute_grad ? gp.data : nullptr, compute_grad ? gq.data : nullptr,
                              ptr_or_null(ws), need, reinterpret_cast<void*>(stream));
#else
    (void)ws;
    (void)stream;
    no_cuda("s2l_loss");
#endif
  }
}

DType parse_dtype(const std::string& s) {
  if (s == "float32") return DType::kFloat32;
  if (s == "float64") return DType::kFloat64;
  if (s == "bfloat16") return DType::kBFloat16;
  if (s == "float16") return DType::kFloat16;
  throw TypeError("dtype: expected float32, float64, bfloat16 or float16, got " + s);
}

size_t s2l_loss_workspace_bytes(const std::string& dtype, int64_t B1, int64_t B2, int64_t D,
                                int64_t E, bool has_u, bool compute_grad, bool deterministic) {
#ifdef MOLPHENIX_WITH_CUDA
  S2LParams prm;
  prm.has_u = has_u;
  prm.compute_grad = compute_grad;
  prm.deterministic = deterministic;
  return cuda::s2l_loss_workspace_bytes(parse_dtype(dtype), B1, B2, D, E, prm);
#else
  (void)dtype, (void)B1, (void)B2, (void)D, (void)E, (void)has_u, (void)compute_grad,
      (void)deterministic;
  return 0;
#endif
}

// ---------------------------------------------------------------------------------------------
// arctan_l2_similarity
// ---------------------------------------------------------------------------------------------
void check_sim_params(double c, bool has_threshold, double threshold) {
  MPX_CHECK_VALUE(c > 0, "c: expected > 0, got ", c);
  MPX_CHECK_VALUE(!has_threshold || (threshold >= -1 && threshold <= 1),
                  "threshold: expected a value in [-1, 1], got ", threshold);
}

void arctan_l2_similarity_fwd(py::handle a_, py::handle b_, py::handle out_, double c,
                              bool has_threshold, double threshold, int num_threads,
                              uintptr_t stream) {
  ArrayView a = view(a_, "a"), b = view(b_, "b"), out = view(out_, "out");
  check_ndim(a, "a", 2);
  check_ndim(b, "b", 2);
  check_float(a, "a");
  check_same_dtype(a, "a", b, "b");
  check_same_dtype(a, "a", out, "out");
  check_same_device(a, "a", b, "b");
  check_same_device(a, "a", out, "out");
  const int64_t N = a.size(0), M = b.size(0), E = a.size(1);
  MPX_CHECK_VALUE(b.size(1) == E, "b: expected ", E, " columns (as a), got ", b.size(1));
  check_shape(out, "out", {N, M});
  check_sim_params(c, has_threshold, threshold);
  const DType dt = a.float_dtype();
  if (N == 0 || M == 0) return;
  if (a.device == Device::kCPU) {
    check_cpu_dtype(a, "a");
    const int nt = resolve_threads(num_threads);
    py::gil_scoped_release nogil;
    cpu::arctan_l2_similarity_fwd(dt, a.data, b.data, N, M, E, c, has_threshold, threshold, out.data, nt);
  } else {
#ifdef MOLPHENIX_WITH_CUDA
    py::gil_scoped_release nogil;
    cuda::launch_arctan_l2_similarity_fwd(dt, a.data, b.data, N, M, E, c, has_threshold, threshold,
                                          out.data, reinterpret_cast<void*>(stream));
#else
    (void)stream;
    no_cuda("arctan_l2_similarity");
#endif
  }
}

void arctan_l2_similarity_bwd(py::handle grad_out_, py::handle a_, py::handle b_,
                              py::handle grad_a_, py::handle grad_b_, double c,
                              bool has_threshold, double threshold, int num_threads,
                              uintptr_t stream) {
  ArrayView g = view(grad_out_, "grad_out"), a = view(a_, "a"), b = view(b_, "b");
  ArrayView ga = view(grad_a_, "grad_a"), gb = view(grad_b_, "grad_b");
  check_ndim(a, "a", 2);
  check_ndim(b, "b", 2);
  check_float(a, "a");
  check_same_dtype(a, "a", b, "b");
  check_same_dtype(a, "a", g, "grad_out");
  check_same_dtype(a, "a", ga, "grad_a");
  check_same_dtype(a, "a", gb, "grad_b");
  check_same_device(a, "a", b, "b");
  check_same_device(a, "a", g, "grad_out");
  check_same_device(a, "a", ga, "grad_a");
  check_same_device(a, "a", gb, "grad_b");
  const int64_t N = a.size(0), M = b.size(0), E = a.size(1);
  MPX_CHECK_VALUE(b.size(1) == E, "b: expected ", E, " columns (as a), got ", b.size(1));
  check_shape(g, "grad_out", {N, M});
  check_shape(ga, "grad_a", {N, E});
  check_shape(gb, "grad_b", {M, E});
  check_sim_params(c, has_threshold, threshold);
  const DType dt = a.float_dtype();
  if (a.device == Device::kCPU) {
    check_cpu_dtype(a, "a");
    const int nt = resolve_threads(num_threads);
    py::gil_scoped_release nogil;
    cpu::arctan_l2_similarity_bwd(dt, g.data, a.data, b.data, N, M, E, c, has_threshold, threshold,
                                  ga.data, gb.data, nt);
  } else {
#ifdef MOLPHENIX_WITH_CUDA
    py::gil_scoped_release nogil;
    cuda::launch_arctan_l2_similarity_bwd(dt, g.data, a.data, b.data, N, M, E, c, has_threshold,
                                          threshold, ga.data, gb.data,
                                          reinterpret_cast<void*>(stream));
#else
    (void)stream;
    no_cuda("arctan_l2_similarity");
#endif
  }
}

// ---------------------------------------------------------------------------------------------
// retrieval
// ---------------------------------------------------------------------------------------------
Metric parse_metric(int metric) {
  MPX_CHECK_VALUE(metric == 0 || metric == 1, "metric: expected 0 (dot) or 1 (squared L2), got ", metric);
  return static_cast<Metric>(metric);
}

void retrieval_ranks(py::handle queries_, py::handle candidates_, py::handle targets_,
                     py::handle target_scores_, py::handle ranks_, py::handle workspace_,
                     int metric_, int num_threads, uintptr_t stream) {
  ArrayView qa = view(queries_, "queries"), ca = view(candidates_, "candidates");
  ArrayView ta = view(targets_, "targets"), ts = view(target_scores_, "target_scores");
  ArrayView ra = view(ranks_, "ranks"), ws = view(workspace_, "workspace", true);
  check_ndim(qa, "queries", 2);
  check_ndim(ca, "candidates", 2);
  check_float(qa, "queries");
  check_same_dtype(qa, "queries", ca, "candidates");
  const int64_t Q = qa.size(0), N = ca.size(0), D = qa.size(1);
  MPX_CHECK_VALUE(ca.size(1) == D, "candidates: expected ", D, " columns (as queries), got ", ca.size(1));
  MPX_CHECK_VALUE(N > 0, "candidates: the candidate set is empty");
  check_int64(ta, "targets");
  check_shape(ta, "targets", {Q});
  check_float64(ts, "target_scores");
  check_shape(ts, "target_scores", {Q});
  check_int64(ra, "ranks");
  check_shape(ra, "ranks", {Q});
  for (auto pr : {std::make_pair(&ca, "candidates"), std::make_pair(&ta, "targets"),
                  std::make_pair(&ts, "target_scores"), std::make_pair(&ra, "ranks")})
    check_same_device(qa, "queries", *pr.first, pr.second);
  const Metric metric = parse_metric(metric_);
  const DType dt = qa.float_dtype();
  MPX_CHECK_VALUE(D > 0, "queries: expected a non-zero embedding width, got shape [", Q, ", 0]");
  if (Q == 0) return;
  if (qa.device == Device::kCPU) {
    check_cpu_dtype(qa, "queries");
    check_targets(static_cast<const int64_t*>(ta.data), Q, N);
    const int nt = resolve_threads(num_threads);
    py::gil_scoped_release nogil;
    cpu::retrieval_ranks(dt, qa.data, ca.data, Q, N, D, static_cast<const int64_t*>(ta.data),
                         static_cast<double*>(ts.data), metric, static_cast<int64_t*>(ra.data), nt);
  } else {
#ifdef MOLPHENIX_WITH_CUDA
    {  // the kernels index candidates by target: check the values (a Q x 8-byte copy)
      std::vector<int64_t> host(static_cast<size_t>(Q));
      {
        py::gil_scoped_release nogil;
        cuda::copy_to_host(host.data(), ta.data, sizeof(int64_t) * static_cast<size_t>(Q),
                           reinterpret_cast<void*>(stream));
      }
      check_targets(host.data(), Q, N);
    }
    const size_t need = cuda::retrieval_ranks_workspace_bytes(dt, Q, N, D, metric);
    check_workspace(ws, need, "retrieval_ranks");
    if (ws.present) check_same_device(qa, "queries", ws, "workspace");
    py::gil_scoped_release nogil;
    cuda::launch_retrieval_ranks(dt, qa.data, ca.data, Q, N, D, static_cast<const int64_t*>(ta.data),
                                 static_cast<double*>(ts.data), metric, static_cast<int64_t*>(ra.data),
                                 ptr_or_null(ws), need, reinterpret_cast<void*>(stream));
#else
    (void)ws;
    (void)stream;
    no_cuda("retrieval_ranks");
#endif
  }
}

void topk_retrieve(py::handle queries_, py::handle candidates_, int64_t k, py::handle scores_,
                   py::handle indices_, py::handle workspace_, int metric_, int num_threads,
                   uintptr_t stream) {
  ArrayView qa = view(queries_, "queries"), ca = view(candidates_, "candidates");
  ArrayView sa = view(scores_, "scores"), ia = view(indices_, "indices");
  ArrayView ws = view(workspace_, "workspace", true);
  check_ndim(qa, "queries", 2);
  check_ndim(ca, "candidates", 2);
  check_float(qa, "queries");
  check_same_dtype(qa, "queries", ca, "candidates");
  const int64_t Q = qa.size(0), N = ca.size(0), D = qa.size(1);
  MPX_CHECK_VALUE(ca.size(1) == D, "candidates: expected ", D, " columns (as queries), got ", ca.size(1));
  MPX_CHECK_VALUE(N > 0, "candidates: the candidate set is empty");
  MPX_CHECK_VALUE(k >= 1 && k <= N, "k: expected 1 <= k <= N = ", N, ", got ", k);
  MPX_CHECK_VALUE(D > 0, "queries: expected a non-zero embedding width, got shape [", Q, ", 0]");
  check_float(sa, "scores");
  check_shape(sa, "scores", {Q, k});
  check_int64(ia, "indices");
  check_shape(ia, "indices", {Q, k});
  for (auto pr : {std::make_pair(&ca, "candidates"), std::make_pair(&sa, "scores"),
                  std::make_pair(&ia, "indices")})
    check_same_device(qa, "queries", *pr.first, pr.second);
  const Metric metric = parse_metric(metric_);
  const DType dt = qa.float_dtype();
  if (Q == 0) return;
  if (qa.device == Device::kCPU) {
    check_cpu_dtype(qa, "queries");
    check_same_dtype(qa, "queries", sa, "scores");
    const int nt = resolve_threads(num_threads);
    py::gil_scoped_release nogil;
    cpu::topk_retrieve(dt, qa.data, ca.data, Q, N, D, k, metric, sa.data,
                       static_cast<int64_t*>(ia.data), nt);
  } else {
#ifdef MOLPHENIX_WITH_CUDA
    const DType sdt = dt == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
    check_dtype(sa, "scores", sdt);
    const size_t need = cuda::topk_retrieve_workspace_bytes(dt, Q, N, D, k, metric);
    check_workspace(ws, need, "topk_retrieve");
    if (ws.present) check_same_device(qa, "queries", ws, "workspace");
    py::gil_scoped_release nogil;
    cuda::launch_topk_retrieve(dt, qa.data, ca.data, Q, N, D, k, metric, sa.data,
                               static_cast<int64_t*>(ia.data), ptr_or_null(ws), need,
                               reinterpret_cast<void*>(stream));
#else
    (void)ws;
    (void)stream;
    no_cuda("topk_retrieve");
#endif
  }
}

// ---- packed candidates (CPU): pack once, search many times ------------------------------------
std::unique_ptr<cpu::PackedCandidates> pack_candidates(const std::string& dtype, int64_t N,
                                                       int64_t D, bool with_norms) {
  return cpu::pack_candidates_create(parse_dtype(dtype), N, D, with_norms);
}

void packed_fill(cpu::PackedCandidates& P, py::handle rows_, int64_t row0, int num_threads) {
  ArrayView ra = view(rows_, "rows");
  check_ndim(ra, "rows", 2);
  MPX_CHECK_VALUE(ra.device == Device::kCPU, "rows: expected a CPU array");
  check_float(ra, "rows");
  MPX_CHECK_TYPE(ra.float_dtype() == P.dtype, "rows: dtype ", dtype_name(ra.float_dtype()),
                 " does not match the packed candidates' ", dtype_name(P.dtype));
  MPX_CHECK_VALUE(ra.size(1) == P.D, "rows: expected ", P.D, " columns, got ", ra.size(1));
  const int nt = resolve_threads(num_threads);
  py::gil_scoped_release nogil;
  cpu::pack_candidates_fill(P, ra.data, row0, ra.size(0), nt);
}

void check_packed_queries(const ArrayView& qa, const cpu::PackedCandidates& P) {
  check_ndim(qa, "queries", 2);
  MPX_CHECK_VALUE(qa.device == Device::kCPU, "queries: packed candidates live on the CPU; got a CUDA array");
  check_float(qa, "queries");
  MPX_CHECK_TYPE(qa.float_dtype() == P.dtype, "queries: dtype ", dtype_name(qa.float_dtype()),
                 " does not match the packed candidates' ", dtype_name(P.dtype));
  MPX_CHECK_VALUE(qa.size(1) == P.D, "queries: expected ", P.D, " columns (the candidates'), got ",
                  qa.size(1));
}

void retrieval_ranks_packed(py::handle queries_, const cpu::PackedCandidates& P, py::handle targets_,
                            py::handle target_scores_, py::handle ranks_, int metric_,
                            int num_threads) {
  ArrayView qa = view(queries_, "queries");
  ArrayView ta = view(targets_, "targets"), ts = view(target_scores_, "target_scores");
  ArrayView ra = view(ranks_, "ranks");
  check_packed_queries(qa, P);
  const int64_t Q = qa.size(0);
  check_int64(ta, "targets");
  check_shape(ta, "targets", {Q});
  check_float64(ts, "target_scores");
  check_shape(ts, "target_scores", {Q});
  check_int64(ra, "ranks");
  check_shape(ra, "ranks", {Q});
  for (auto pr : {std::make_pair(&ta, "targets"), std::make_pair(&ts, "target_scores"),
                  std::make_pair(&ra, "ranks")})
    check_same_device(qa, "queries", *pr.first, pr.second);
  const Metric metric = parse_metric(metric_);
  if (Q == 0) return;
  check_targets(static_cast<const int64_t*>(ta.data), Q, P.N);
  const int nt = resolve_threads(num_threads);
  py::gil_scoped_release nogil;
  cpu::retrieval_ranks_packed(qa.data, P, Q, static_cast<const int64_t*>(ta.data),
                              static_cast<double*>(ts.data), metric, static_cast<int64_t*>(ra.data), nt);
}

void topk_retrieve_packed(py::handle queries_, const cpu::PackedCandidates& P, int64_t k,
                          py::handle scores_, py::handle indices_, int metric_, int num_threads) {
  ArrayView qa = view(queries_, "queries");
  ArrayView sa = view(scores_, "scores"), ia = view(indices_, "indices");
  check_packed_queries(qa, P);
  const int64_t Q = qa.size(0);
  MPX_CHECK_VALUE(k >= 1 && k <= P.N, "k: expected 1 <= k <= N = ", P.N, ", got ", k);
  check_float(sa, "scores");
  check_shape(sa, "scores", {Q, k});
  check_same_dtype(qa, "queries", sa, "scores");
  check_int64(ia, "indices");
  check_shape(ia, "indices", {Q, k});
  for (auto pr : {std::make_pair(&sa, "scores"), std::make_pair(&ia, "indices")})
    check_same_device(qa, "queries", *pr.first, pr.second);
  const Metric metric = parse_metric(metric_);
  if (Q == 0) return;
  const int nt = resolve_threads(num_threads);
  py::gil_scoped_release nogil;
  cpu::topk_retrieve_packed(qa.data, P, Q, k, metric, sa.data, static_cast<int64_t*>(ia.data), nt);
}

size_t retrieval_ranks_workspace_bytes(const std::string& dtype, int64_t Q, int64_t N, int64_t D,
                                       int metric) {
#ifdef MOLPHENIX_WITH_CUDA
  return cuda::retrieval_ranks_workspace_bytes(parse_dtype(dtype), Q, N, D, parse_metric(metric));
#else
  (void)dtype, (void)Q, (void)N, (void)D, (void)metric;
  return 0;
#endif
}

size_t topk_retrieve_workspace_bytes(const std::string& dtype, int64_t Q, int64_t N, int64_t D,
                                     int64_t k, int metric) {
#ifdef MOLPHENIX_WITH_CUDA
  return cuda::topk_retrieve_workspace_bytes(parse_dtype(dtype), Q, N, D, k, parse_metric(metric));
#else
  (void)dtype, (void)Q, (void)N, (void)D, (void)k, (void)metric;
  return 0;
#endif
}

py::dict build_info() {
  py::dict d;
  d["version"] = MOLPHENIX_VERSION;
  d["ops"] = py::make_tuple("arctan_l2_similarity", "s2l_loss", "siglip_loss", "retrieval_ranks",
                            "topk_retrieve");
  d["cpu_kernels"] = true;
  d["simd_compiled"] = cpu::simd_compiled();
  d["simd_level"] = cpu::simd_level_name(cpu::simd_level());
  d["simd_best"] = cpu::simd_level_name(cpu::simd_best());
#ifdef _OPENMP
  d["openmp"] = _OPENMP;
  d["omp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = py::none();
  d["omp_max_threads"] = 1;
#endif
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = "unknown";
#endif
#ifdef MOLPHENIX_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = MOLPHENIX_CUDA_ARCHS;
  d["cuda_runtime_version"] = cuda::runtime_version();
  d["cuda_runtime_linkage"] = "static";
#else
  d["cuda"] = false;
  d["cuda_archs"] = "";
  d["cuda_runtime_version"] = py::none();
  d["cuda_runtime_linkage"] = py::none();
#endif
  d["cuda_reason"] = MOLPHENIX_CUDA_REASON;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "molphenix compiled core (CPU/OpenMP kernels and, when built with it, CUDA kernels).";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const molphenix::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  m.def("build_info", &build_info, "What this build contains (ops, SIMD, OpenMP, CUDA).");
  m.def("get_options", &get_options,
        "The run-time settings the kernels read (see molphenix.options()).");
  m.def("set_options", &set_options, py::kw_only(), py::arg("simd"), py::arg("s2l_tile"),
        py::arg("cuda_mainloop"), py::arg("s2l_blocks_per_sm"), py::arg("s2l_u_simt"),
        py::arg("topk_prefilter"),
        "Replace the run-time settings (use molphenix.set_options, which validates names).");
  m.def("cpu_workspace_stats", []() {
    return py::make_tuple(cpu::workspace_current(), cpu::workspace_peak());
  }, "(current, peak) bytes of CPU kernel workspace (scratch buffers) in this process.");
  m.def("cpu_workspace_reset_peak", &cpu::workspace_reset_peak,
        "Reset the peak of cpu_workspace_stats() to the current value.");
#ifdef MOLPHENIX_WITH_CUDA
  m.def("cuda_device_count", &molphenix::cuda::device_count,
        "Number of CUDA devices visible to the statically linked runtime (0 without a driver).");
  m.def("cuda_device_name", &molphenix::cuda::device_name, py::arg("device"));
#else
  m.def("cuda_device_count", []() { return 0; });
#endif

  m.def("s2l_loss_fwd", &s2l_loss_fwd, py::arg("p"), py::arg("q"), py::arg("u"), py::arg("u_cols"),
        py::arg("stats"), py::arg("grad_p"), py::arg("grad_q"), py::arg("workspace"), py::kw_only(),
        py::arg("scale"), py::arg("bias"), py::arg("c"), py::arg("has_threshold"),
        py::arg("threshold"), py::arg("gamma"), py::arg("delta"), py::arg("hard_diagonal"),
        py::arg("diag_offset"), py::arg("normalizer"), py::arg("compute_grad"),
        py::arg("deterministic"), py::arg("num_threads"), py::arg("stream"),
        "Fused S2L loss: writes stats[3] = (loss, dL/dscale, dL/dbias) and, when compute_grad, "
        "grad_p [B1, D] and grad_q [B2, D].");
  m.def("s2l_loss_workspace_bytes", &s2l_loss_workspace_bytes, py::arg("dtype"), py::arg("B1"),
        py::arg("B2"), py::arg("D"), py::arg("E"), py::arg("has_u"), py::arg("compute_grad"),
        py::arg("deterministic"), "CUDA workspace bytes for s2l_loss_fwd (0 on CPU-only builds).");
  m.def("arctan_l2_similarity_fwd", &arctan_l2_similarity_fwd, py::arg("a"), py::arg("b"),
        py::arg("out"), py::kw_only(), py::arg("c"), py::arg("has_threshold"), py::arg("threshold"),
        py::arg("num_threads"), py::arg("stream"));
  m.def("arctan_l2_similarity_bwd", &arctan_l2_similarity_bwd, py::arg("grad_out"), py::arg("a"),
        py::arg("b"), py::arg("grad_a"), py::arg("grad_b"), py::kw_only(), py::arg("c"),
        py::arg("has_threshold"), py::arg("threshold"), py::arg("num_threads"), py::arg("stream"));
  m.def("retrieval_ranks", &retrieval_ranks, py::arg("queries"), py::arg("candidates"),
        py::arg("targets"), py::arg("target_scores"), py::arg("ranks"), py::arg("workspace"),
        py::kw_only(), py::arg("metric"), py::arg("num_threads"), py::arg("stream"));
  m.def("retrieval_ranks_workspace_bytes", &retrieval_ranks_workspace_bytes, py::arg("dtype"),
        py::arg("Q"), py::arg("N"), py::arg("D"), py::arg("metric"));
  m.def("topk_retrieve", &topk_retrieve, py::arg("queries"), py::arg("candidates"), py::arg("k"),
        py::arg("scores"), py::arg("indices"), py::arg("workspace"), py::kw_only(),
        py::arg("metric"), py::arg("num_threads"), py::arg("stream"));
  m.def("topk_retrieve_workspace_bytes", &topk_retrieve_workspace_bytes, py::arg("dtype"),
        py::arg("Q"), py::arg("N"), py::arg("D"), py::arg("k"), py::arg("metric"));

  py::class_<cpu::PackedCandidates, std::unique_ptr<cpu::PackedCandidates>>(
      m, "PackedCandidates",
      "CPU candidates packed once into the retrieval kernels' panels (pack_candidates).")
      .def_property_readonly("n", [](const cpu::PackedCandidates& P) { return P.N; })
      .def_property_readonly("dim", [](const cpu::PackedCandidates& P) { return P.D; })
      .def_property_readonly("dtype", [](const cpu::PackedCandidates& P) { return std::string(dtype_name(P.dtype)); })
      .def_property_readonly("with_norms", [](const cpu::PackedCandidates& P) { return P.with_norms; })
      .def_property_readonly("nbytes", [](const cpu::PackedCandidates& P) { return P.nbytes; })
      .def_property_readonly("simd_level", [](const cpu::PackedCandidates& P) {
        return std::string(cpu::simd_level_name(static_cast<cpu::SimdLevel>(P.level)));
      })
      .def("is_current", [](const cpu::PackedCandidates& P) { return cpu::pack_candidates_current(P); },
           "True when packed under the current SIMD level (else pack again).")
      .def("fill", &packed_fill, py::arg("rows"), py::arg("row0"), py::kw_only(),
           py::arg("num_threads"), "Write rows [row0, row0 + len(rows)) into the panels.");
  m.def("pack_candidates", &pack_candidates, py::arg("dtype"), py::arg("N"), py::arg("D"),
        py::arg("with_norms"), "An empty PackedCandidates for N x D candidates (fill it).");
  m.def("retrieval_ranks_packed", &retrieval_ranks_packed, py::arg("queries"), py::arg("packed"),
        py::arg("targets"), py::arg("target_scores"), py::arg("ranks"), py::kw_only(),
        py::arg("metric"), py::arg("num_threads"));
  m.def("topk_retrieve_packed", &topk_retrieve_packed, py::arg("queries"), py::arg("packed"),
        py::arg("k"), py::arg("scores"), py::arg("indices"), py::kw_only(), py::arg("metric"),
        py::arg("num_threads"));
}
