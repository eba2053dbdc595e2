// retrieval_ranks on CUDA: entry points (kernels and host drivers in retrieval_kernel.cuh).
#include "retrieval_kernel.cuh"

namespace molphenix {
namespace cuda {

size_t retrieval_ranks_workspace_bytes(DType dtype, int64_t Q, int64_t N, int64_t D,
                                       Metric metric) {
  (void)D;
  if (metric != Metric::kSqL2) return 0;
  Carve cv(nullptr);
  if (dtype == DType::kFloat64) {
    cv.take<double>(static_cast<size_t>(Q));
    cv.take<double>(static_cast<size_t>(N));
  } else {
    cv.take<float>(static_cast<size_t>(Q));
    cv.take<float>(static_cast<size_t>(N));
  }
  return align_up(cv.off, 256);
}

void launch_retrieval_ranks(DType dtype, const void* queries, const void* candidates, int64_t Q,
                            int64_t N, int64_t D, const int64_t* targets, double* target_scores,
                            Metric metric, int64_t* ranks, void* workspace,
                            size_t workspace_bytes, void* stream) {
  if (Q <= 0) return;
  MPX_CHECK_VALUE(N > 0, "retrieval_ranks: the candidate set is empty");
  DeviceGuard guard(queries);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    run_ranks<T>(queries, candidates, Q, N, D, targets, target_scores, metric, ranks, workspace,
                 workspace_bytes, st);
  });
}

}  // namespace cuda
}  // namespace molphenix
