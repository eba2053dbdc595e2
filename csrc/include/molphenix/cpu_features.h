// Runtime CPU feature detection for the SIMD dispatch of the CPU kernels.
#pragma once

namespace molphenix {
namespace cpu {

enum class SimdLevel : int { kScalar = 0, kAVX2 = 1, kAVX512 = 2 };

// The level the kernels use: the best the CPU supports and the build compiled, lowered (never
// raised) by the environment variable MOLPHENIX_SIMD=scalar|avx2|avx512. Read once.
SimdLevel simd_level();
const char* simd_level_name(SimdLevel level);
// Comma-separated list of the levels compiled into this build, e.g. "scalar,avx2,avx512".
const char* simd_compiled();

}  // namespace cpu
}  // namespace molphenix
