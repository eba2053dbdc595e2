// topk_retrieve on CUDA: entry points (kernels and host drivers in retrieval_kernel.cuh).
#include "retrieval_kernel.cuh"

namespace molphenix {
namespace cuda {

size_t topk_retrieve_workspace_bytes(DType dtype, int64_t Q, int64_t N, int64_t D, int64_t k,
                                     Metric metric) {
  (void)D;
  if (Q <= 0 || k <= 0) return 0;
  const bool sql2 = metric == Metric::kSqL2;
  if (dtype == DType::kFloat64) return topk_carve<double>(nullptr, Q, N, k, sql2, false).total;
  const bool is16 = dtype == DType::kBFloat16 || dtype == DType::kFloat16;
  return topk_carve<float>(nullptr, Q, N, k, sql2, is16).total;
}

void launch_topk_retrieve(DType dtype, const void* queries, const void* candidates, int64_t Q,
                          int64_t N, int64_t D, int64_t k, Metric metric, void* out_scores,
                          int64_t* out_indices, void* workspace, size_t workspace_bytes,
                          void* stream) {
  if (Q <= 0) return;
  MPX_CHECK_VALUE(N > 0, "topk_retrieve: the candidate set is empty");
  MPX_CHECK_VALUE(k >= 1 && k <= N, "topk_retrieve: k must be in [1, N]");
  DeviceGuard guard(queries);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    run_topk<T>(queries, candidates, Q, N, D, k, metric, out_scores, out_indices, workspace,
                workspace_bytes, st);
  });
}

}  // namespace cuda
}  // namespace molphenix
