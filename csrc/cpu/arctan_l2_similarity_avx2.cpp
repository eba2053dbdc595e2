// AVX2 + FMA instantiation of the arctan-L2 similarity tile epilogues (compiled with the avx2 flags;
// called only after the run-time check of cpu::simd_level()).
#include "simd_math_kernels.h"

namespace molphenix {
namespace cpu {
namespace detail {

void sim_fwd_epilogue_avx2(const SimConsts<float>& k, const SimTile<float>& t) {
  sim_fwd_epilogue_impl<simd::F32x8>(k, t);
}
void sim_fwd_epilogue_avx2(const SimConsts<double>& k, const SimTile<double>& t) {
  sim_fwd_epilogue_impl<simd::F64x4>(k, t);
}
bool sim_bwd_epilogue_avx2(const SimConsts<float>& k, const SimTile<float>& t) {
  return sim_bwd_epilogue_impl<simd::F32x8>(k, t);
}
bool sim_bwd_epilogue_avx2(const SimConsts<double>& k, const SimTile<double>& t) {
  return sim_bwd_epilogue_impl<simd::F64x4>(k, t);
}

}  // namespace detail
}  // namespace cpu
}  // namespace molphenix
