#include "molphenix/cpu_features.h"

#include <cstdlib>
#include <cstring>

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
  const char* env = std::getenv("MOLPHENIX_SIMD");
  if (env != nullptr) {
    SimdLevel cap = best;
    if (std::strcmp(env, "scalar") == 0) cap = SimdLevel::kScalar;
    else if (std::strcmp(env, "avx2") == 0) cap = SimdLevel::kAVX2;
    else if (std::strcmp(env, "avx512") == 0) cap = SimdLevel::kAVX512;
    if (static_cast<int>(cap) < static_cast<int>(best)) best = cap;
  }
  return best;
}
}  // namespace

SimdLevel simd_level() {
  static const SimdLevel level = detect();
  return level;
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
