// molphenix core: shared types, parameter structs and error helpers.
// Pure C++17: no Python, no torch, no CUDA headers. Every kernel (CPU and CUDA) and the
// bindings include this file; it is the contract between the layers.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace molphenix {

// Element types that cross the boundary. The numeric values are stable (they are part of the
// binding ABI and appear in build_info()).
enum class DType : int {
  kFloat32 = 0,
  kFloat64 = 1,
  kBFloat16 = 2,  // CUDA only
  kFloat16 = 3,   // CUDA only
};

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
  }
  return "unknown";
}

// Retrieval comparison key. Cosine is kDot on rows that the Python layer has L2-normalised.
//  kDot:  score = <q, c>, larger is better.
//  kSqL2: key = max(|q|^2 + |c|^2 - 2<q, c>, 0), smaller is better (arctan-L2 ranks by this).
enum class Metric : int { kDot = 0, kSqL2 = 1 };

// Parameters of the fused S2L loss (see DESIGN.md section 2).
//   z_ij = scale * <p_i, q_j> + bias
//   s_ij = 1 on the positive pair (j == i + diag_offset); otherwise, with u,
//          s~ = 1 - (4/pi) atan(max(|u_i|^2 + |v_j|^2 - 2<u_i, v_j>, 0) / c), zeroed below threshold;
//          without u, 0.
//   w+ = s, w- = gamma - delta * s; hard_diagonal: w+ = 1, w- = 0 on the positive pair.
//   L = sum_ij [(w+ + w-) softplus(z) - w+ z] / normalizer
struct S2LParams {
  double scale = 10.0;        // t (> 0)
  double bias = -10.0;        // b
  bool has_u = false;         // false: identity soft labels (u and u_cols are null)
  double c = 0.3;             // arctan-L2 width (> 0)
  bool has_threshold = true;  // false: no thresholding
  double threshold = 0.75;    // theta in [-1, 1]
  double gamma = 1.75;
  double delta = 0.75;
  bool hard_diagonal = false;
  int64_t diag_offset = 0;    // row i's positive is column i + diag_offset (when in range)
  double normalizer = 1.0;    // the pair sum is divided by this (> 0)
  bool compute_grad = true;   // false: loss only (grad pointers may be null)
  bool deterministic = true;  // CUDA: no floating-point atomics (bitwise reproducible)
};

// Errors. The bindings translate ValueError -> Python ValueError, TypeError -> Python TypeError.
// Kernels themselves do not validate user input (the bindings do); they may throw ValueError on
// internal invariant violations only.
struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace molphenix

#define MPX_CHECK_VALUE(cond, ...)                                                   \
  do {                                                                               \
    if (!(cond)) throw ::molphenix::ValueError(::molphenix::detail::concat(__VA_ARGS__)); \
  } while (0)
#define MPX_CHECK_TYPE(cond, ...)                                                    \
  do {                                                                               \
    if (!(cond)) throw ::molphenix::TypeError(::molphenix::detail::concat(__VA_ARGS__)); \
  } while (0)
