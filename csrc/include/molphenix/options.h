// Run-time tuning settings of the compiled core. The C++ core never reads the environment: the
// Python layer (molphenix.set_options / molphenix.options, initial values from MOLPHENIX_*
// variables read once in Python) passes them down through the binding (molphenix._C.set_options)
// and the launchers read them here. Header-only (one process-wide instance: inline functions with
// static storage), so the CPU and CUDA translation units share it without a link dependency.
#pragma once

#include <atomic>

namespace molphenix {

struct RuntimeOptions {
  // CPU SIMD level cap: -1 = the best the CPU and the build support; 0 = scalar, 1 = AVX2,
  // 2 = AVX-512. Lowers the level, never raises it. Results differ between levels (rounding).
  int simd = -1;
  // CPU S2L tile edge: 0 = automatic (64..256 by problem size); else 64, 128, 256 or 512.
  // Changes the rounding of the loss and gradients (never their thread-count independence).
  int s2l_tile = 0;
  // CUDA bf16/f16 GEMM mainloop: 0 = fast (default), 1 = simple (the validated 64 x 64 WMMA one).
  int cuda_mainloop = 0;
  // CUDA S2L fast-path occupancy: 2 blocks per SM (default) or 1.
  int s2l_blocks_per_sm = 2;
  // CUDA S2L with bf16/f16: u . v^T on fp32 SIMT instead of 3xTF32 tensor cores.
  bool s2l_u_simt = false;
  // CUDA top-k sampled-threshold prefilter: 1 = on (default), 0 = off, 2 = every query takes
  // the exact fallback (a test setting).
  int topk_prefilter = 1;
};

namespace options_detail {
struct Store {
  std::atomic<int> simd{-1}, s2l_tile{0}, cuda_mainloop{0}, s2l_blocks_per_sm{2}, s2l_u_simt{0},
      topk_prefilter{1};
};
inline Store& store() {
  static Store s;
  return s;
}
}  // namespace options_detail

// A snapshot of the current settings (cheap: a few relaxed atomic loads).
inline RuntimeOptions runtime_options() {
  auto& s = options_detail::store();
  RuntimeOptions o;
  o.simd = s.simd.load(std::memory_order_relaxed);
  o.s2l_tile = s.s2l_tile.load(std::memory_order_relaxed);
  o.cuda_mainloop = s.cuda_mainloop.load(std::memory_order_relaxed);
  o.s2l_blocks_per_sm = s.s2l_blocks_per_sm.load(std::memory_order_relaxed);
  o.s2l_u_simt = s.s2l_u_simt.load(std::memory_order_relaxed) != 0;
  o.topk_prefilter = s.topk_prefilter.load(std::memory_order_relaxed);
  return o;
}

// Replaces the settings (the binding validates the values first).
inline void set_runtime_options(const RuntimeOptions& o) {
  auto& s = options_detail::store();
  s.simd.store(o.simd, std::memory_order_relaxed);
  s.s2l_tile.store(o.s2l_tile, std::memory_order_relaxed);
  s.cuda_mainloop.store(o.cuda_mainloop, std::memory_order_relaxed);
  s.s2l_blocks_per_sm.store(o.s2l_blocks_per_sm, std::memory_order_relaxed);
  s.s2l_u_simt.store(o.s2l_u_simt ? 1 : 0, std::memory_order_relaxed);
  s.topk_prefilter.store(o.topk_prefilter, std::memory_order_relaxed);
}

}  // namespace molphenix
