// Streamed retrieval: rank of the true candidate (retrieval_ranks) and exact top-k (topk_retrieve).
// Neither materialises Q x N: GEMM tiles feed compare-and-count or a per-query selection.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "molphenix/common.h"

namespace molphenix {
namespace cpu {

// queries [Q, D], candidates [N, D] (dtype float32/float64, C-contiguous)
// targets [Q] int64: index of the true candidate in [0, N), or -1 = "not in this set".
// target_scores [Q] float64, in/out: for targets[i] >= 0 the kernel WRITES the target's key
//   (computed with exactly the same arithmetic as every other key); for targets[i] < 0 it READS it.
// ranks [Q] int64 out:
//   kDot : #{j != t(i) : score_ij >= score_it}
//   kSqL2: #{j != t(i) : key_ij  <= key_it}
void retrieval_ranks(DType dtype, const void* queries, const void* candidates, int64_t Q,
                     int64_t N, int64_t D, const int64_t* targets, double* target_scores,
                     Metric metric, int64_t* ranks, int num_threads);

// Exact top-k, sorted best first, ties broken by the lower candidate index.
// out_scores [Q, k] dtype (kDot: score; kSqL2: squared distance key), out_indices [Q, k] int64.
void topk_retrieve(DType dtype, const void* queries, const void* candidates, int64_t Q, int64_t N,
                   int64_t D, int64_t k, Metric metric, void* out_scores, int64_t* out_indices,
                   int num_threads);

// ---- packed candidates: pack once, search many times -------------------------------------------
// The CPU kernels read the candidates as panels of the GEMM micro-kernel (retrieval_impl.h). The
// calls above pack them on every call (a pass over N x D plus a copy of that size); an index that
// answers many searches packs them once into a PackedCandidates and calls the *_packed entry
// points. The panel width depends on the SIMD level, so a handle is tied to the level it was
// created under: using it after molphenix.set_options changed the level is a ValueError (the
// Python layer repacks). Results are bit for bit those of the unpacked calls on the same rows.
struct PackedCandidates {
  DType dtype = DType::kFloat32;
  int level = 0;            // SimdLevel it was created under
  int64_t panel_width = 0;  // NR of that level and dtype
  int64_t N = 0, D = 0;
  bool with_norms = false;  // |c|^2 per row (needed by kSqL2)
  void* data = nullptr;     // num_panels * D * panel_width values, 64-byte aligned
  void* norms = nullptr;    // num_panels * panel_width values
  size_t nbytes = 0;
  PackedCandidates() = default;
  PackedCandidates(const PackedCandidates&) = delete;
  PackedCandidates& operator=(const PackedCandidates&) = delete;
  ~PackedCandidates();
};

// An empty handle for N x D candidates (padding zeroed; rows are written by pack_candidates_fill).
std::unique_ptr<PackedCandidates> pack_candidates_create(DType dtype, int64_t N, int64_t D,
                                                         bool with_norms);
// Writes candidate rows [row0, row0 + n) (row-major [n, D], the handle's dtype) into the handle.
void pack_candidates_fill(PackedCandidates& P, const void* rows, int64_t row0, int64_t n,
                          int num_threads);
// True when the handle's panel layout is that of the current SIMD level.
bool pack_candidates_current(const PackedCandidates& P);
// retrieval_ranks / topk_retrieve on packed candidates (same contracts; queries [Q, D] in the
// handle's dtype). Target keys come from the packed values themselves.
void retrieval_ranks_packed(const void* queries, const PackedCandidates& P, int64_t Q,
                            const int64_t* targets, double* target_scores, Metric metric,
                            int64_t* ranks, int num_threads);
void topk_retrieve_packed(const void* queries, const PackedCandidates& P, int64_t Q, int64_t k,
                          Metric metric, void* out_scores, int64_t* out_indices, int num_threads);

}  // namespace cpu

namespace cuda {
// Same contracts on device pointers; dtype f32/f64/bf16/f16; scores accumulate in float32
// (float64 for float64). topk out_scores are float32 for bf16/f16 inputs (dtype otherwise).
size_t retrieval_ranks_workspace_bytes(DType dtype, int64_t Q, int64_t N, int64_t D,
                                       Metric metric);
void launch_retrieval_ranks(DType dtype, const void* queries, const void* candidates, int64_t Q,
                            int64_t N, int64_t D, const int64_t* targets, double* target_scores,
                            Metric metric, int64_t* ranks, void* workspace,
                            size_t workspace_bytes, void* stream);
size_t topk_retrieve_workspace_bytes(DType dtype, int64_t Q, int64_t N, int64_t D, int64_t k,
                                     Metric metric);
void launch_topk_retrieve(DType dtype, const void* queries, const void* candidates, int64_t Q,
                          int64_t N, int64_t D, int64_t k, Metric metric, void* out_scores,
                          int64_t* out_indices, void* workspace, size_t workspace_bytes,
                          void* stream);
}  // namespace cuda
}  // namespace molphenix
