// Runtime CPU feature detection for the SIMD dispatch of the CPU kernels.
#pragma once

namespace molphenix {
namespace cpu {

enum class SimdLevel : int { kScalar = 0, kAVX2 = 1, kAVX512 = 2 };

// The best level the CPU supports and the build compiled (detected once).
SimdLevel simd_best();
// The level the kernels use: simd_best(), lowered (never raised) by the run-time setting
// RuntimeOptions::simd (molphenix.set_options(simd=...)). Read at every kernel call.
SimdLevel simd_level();
const char* simd_level_name(SimdLevel level);
// Comma-separated list of the levels compiled into this build, e.g. "scalar,avx2,avx512".
const char* simd_compiled();

}  // namespace cpu
}  // namespace molphenix
