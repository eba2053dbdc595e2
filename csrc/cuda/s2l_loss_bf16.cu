// S2L loss kernels instantiated for __nv_bfloat16 (see s2l_loss_kernel.cuh).
#include "s2l_loss_kernel.cuh"

namespace molphenix {
namespace cuda {

void s2l_run(__nv_bfloat16, MPX_S2L_RUN_PARAMS) { run_s2l<__nv_bfloat16>(MPX_S2L_RUN_ARGS); }

}  // namespace cuda
}  // namespace molphenix
