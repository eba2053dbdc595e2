// arctan-L2 similarity on CUDA, backward entry point (kernels in arctan_l2_similarity_kernel.cuh).
#include "arctan_l2_similarity_kernel.cuh"

namespace molphenix {
namespace cuda {

void launch_arctan_l2_similarity_bwd(DType dtype, const void* grad_out, const void* a,
                                     const void* b, int64_t N, int64_t M, int64_t E, double c,
                                     bool has_threshold, double threshold, void* grad_a,
                                     void* grad_b, void* stream) {
  if (E <= 0) return;
  DeviceGuard guard(a != nullptr ? a : b);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (N == 0 || M == 0) {
      // No pairs: the gradients are zero.
      if (N > 0) check_cuda(cudaMemsetAsync(grad_a, 0, sizeof(T) * N * E, st), "memset grad_a");
      if (M > 0) check_cuda(cudaMemsetAsync(grad_b, 0, sizeof(T) * M * E, st), "memset grad_b");
      return;
    }
    run_bwd<T>(grad_out, a, b, N, M, E, c, has_threshold, threshold, grad_a, grad_b, st);
  });
}

}  // namespace cuda
}  // namespace molphenix
