// Fused S2L (soft sigmoid) loss: loss and gradients in one tiled pass, never materialising B1 x B2.
#pragma once
#include <cstddef>
#include <cstdint>

#include "molphenix/common.h"

namespace molphenix {
namespace cpu {

// All pointers are host pointers to C-contiguous row-major arrays of `dtype` (float32 or float64).
//   p      [B1, D]   row embeddings (used as given: no normalisation)
//   q      [B2, D]   column embeddings
//   u      [B1, E]   similarity-space rows      (null when !prm.has_u)
//   u_cols [B2, E]   similarity-space columns   (null when !prm.has_u)
// Outputs:
//   stats  [3] float64: {loss, dL/dscale, dL/dbias} (always written)
//   grad_p [B1, D] dtype, grad_q [B2, D] dtype: dL/dp, dL/dq (written when prm.compute_grad)
// Results do not depend on num_threads (fixed reduction order).
void s2l_loss_fwd(DType dtype, const void* p, const void* q, const void* u, const void* u_cols,
                  int64_t B1, int64_t B2, int64_t D, int64_t E, const S2LParams& prm,
                  double* stats, void* grad_p, void* grad_q, int num_threads);

}  // namespace cpu

namespace cuda {

// Bytes of device workspace launch_s2l_loss_fwd needs (the caller allocates it).
size_t s2l_loss_workspace_bytes(DType dtype, int64_t B1, int64_t B2, int64_t D, int64_t E,
                                const S2LParams& prm);

// Same contract as cpu::s2l_loss_fwd, on device pointers. p, q: dtype (f32, f64, bf16, f16);
// u, u_cols: float32 (float64 when dtype is float64). stats [3] float64 on the device.
// Launches on `stream` (a cudaStream_t); never synchronises; no allocation.
void launch_s2l_loss_fwd(DType dtype, const void* p, const void* q, const void* u,
                         const void* u_cols, int64_t B1, int64_t B2, int64_t D, int64_t E,
                         const S2LParams& prm, double* stats, void* grad_p, void* grad_q,
                         void* workspace, size_t workspace_bytes, void* stream);

}  // namespace cuda
}  // namespace molphenix
