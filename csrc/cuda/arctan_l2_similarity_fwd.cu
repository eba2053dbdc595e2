// arctan-L2 similarity on CUDA, forward entry point (kernels in arctan_l2_similarity_kernel.cuh).
#include "arctan_l2_similarity_kernel.cuh"

namespace molphenix {
namespace cuda {

void launch_arctan_l2_similarity_fwd(DType dtype, const void* a, const void* b, int64_t N,
                                     int64_t M, int64_t E, double c, bool has_threshold,
                                     double threshold, void* out, void* stream) {
  if (N <= 0 || M <= 0) return;
  DeviceGuard guard(a);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    run_fwd<T>(a, b, N, M, E, c, has_threshold, threshold, out, st);
  });
}

}  // namespace cuda
}  // namespace molphenix
