// Fused S2L loss on CUDA: the public entry points (workspace size, dtype dispatch) and the
// float32 / float64 instantiations. The kernels and the host driver are in s2l_loss_kernel.cuh;
// bfloat16 and float16 (18 kernel variants each, the bulk of the compile time) have their own
// translation units, s2l_loss_bf16.cu and s2l_loss_f16.cu, so the three compile in parallel.
#include "s2l_loss_kernel.cuh"

namespace molphenix {
namespace cuda {

void s2l_run(float, MPX_S2L_RUN_PARAMS) { run_s2l<float>(MPX_S2L_RUN_ARGS); }
void s2l_run(double, MPX_S2L_RUN_PARAMS) { run_s2l<double>(MPX_S2L_RUN_ARGS); }

size_t s2l_loss_workspace_bytes(DType dtype, int64_t B1, int64_t B2, int64_t D, int64_t E,
                                const S2LParams& prm) {
  (void)E;
  size_t bytes = 0;
  if (dtype == DType::kFloat64)
    carve<double>(nullptr, B1, B2, D, prm, &bytes);
  else
    carve<float>(nullptr, B1, B2, D, prm, &bytes);
  return bytes;
}

void launch_s2l_loss_fwd(DType dtype, const void* p, const void* q, const void* u,
                         const void* u_cols, int64_t B1, int64_t B2, int64_t D, int64_t E,
                         const S2LParams& prm, double* stats, void* grad_p, void* grad_q,
                         void* workspace, size_t workspace_bytes, void* stream) {
  MPX_CHECK_VALUE(B1 > 0 && B2 > 0, "s2l_loss: empty batch");
  MPX_CHECK_VALUE(!prm.has_u || (u != nullptr && u_cols != nullptr), "s2l_loss: u is null");
  MPX_CHECK_VALUE(!prm.compute_grad || (grad_p != nullptr && grad_q != nullptr),
                  "s2l_loss: gradient outputs are null");
  DeviceGuard guard(p);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    s2l_run(tag, p, q, u, u_cols, B1, B2, D, prm.has_u ? E : 0, prm, stats, grad_p, grad_q,
            workspace, workspace_bytes, st);
  });
}

}  // namespace cuda
}  // namespace molphenix
