// AVX2 + FMA instantiation of the S2L tile epilogue (compiled with the avx2 flags; called only after
// the run-time check of cpu::simd_level()).
#include "simd_math_kernels.h"

namespace molphenix {
namespace cpu {
namespace detail {

void s2l_epilogue_avx2(const S2LEpilogueConsts<float>& k, const S2LTile<float>& t, double* out) {
  s2l_epilogue_impl<simd::F32x8>(k, t, out);
}
void s2l_epilogue_avx2(const S2LEpilogueConsts<double>& k, const S2LTile<double>& t, double* out) {
  s2l_epilogue_impl<simd::F64x4>(k, t, out);
}

}  // namespace detail
}  // namespace cpu
}  // namespace molphenix
