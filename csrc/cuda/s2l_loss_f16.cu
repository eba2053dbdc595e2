// S2L loss kernels instantiated for __half (see s2l_loss_kernel.cuh).
#include "s2l_loss_kernel.cuh"

namespace molphenix {
namespace cuda {

void s2l_run(__half, MPX_S2L_RUN_PARAMS) { run_s2l<__half>(MPX_S2L_RUN_ARGS); }

}  // namespace cuda
}  // namespace molphenix
