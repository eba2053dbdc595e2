#include "molphenix/cpu_features.h"

#include "molphenix/options.h"

namespace molphenix {
namespace cpu {

namespace {
SimdLevel detect() {
  SimdLevel best = SimdLevel::kScalar;
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
#if defined(MOLPHENIX_HAVE_AVX2)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = SimdLevel::kAVX2;
#endif
#if defined(MOLPHENIX_HAVE_AVX512)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma"))
    best = SimdLevel::kAVX512;
#endif
#endif
  return best;
}
}  // namespace

SimdLevel simd_best() {
  static const SimdLevel level = detect();
  return level;
}

SimdLevel simd_level() {
  const SimdLevel best = simd_best();
  const int cap = runtime_options().simd;
  if (cap >= 0 && cap < static_cast<int>(best)) return static_cast<SimdLevel>(cap);
  return best;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar: return "scalar";
    case SimdLevel::kAVX2: return "avx2";
    case SimdLevel::kAVX512: return "avx512";
  }
  return "unknown";
}

const char* simd_compiled() {
  return "scalar"
#if defined(MOLPHENIX_HAVE_AVX2)
         ",avx2"
#endif
#if defined(MOLPHENIX_HAVE_AVX512)
         ",avx512"
#endif
      ;
}

}  // namespace cpu
}  // namespace molphenix
