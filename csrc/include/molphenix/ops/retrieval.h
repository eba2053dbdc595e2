// Streamed retrieval: rank of the true candidate (retrieval_ranks) and exact top-k (topk_retrieve).
// Neither materialises Q x N: GEMM tiles feed compare-and-count or a per-query selection.
#pragma once
#include <cstddef>
#include <cstdint>

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
