// Pairwise arctan-L2 similarity s = 1 - (4/pi) atan(max(|a_i|^2 + |b_j|^2 - 2<a_i, b_j>, 0) / c),
// set to 0 where s < threshold (when has_threshold).
#pragma once
#include <cstddef>
#include <cstdint>

#include "molphenix/common.h"

namespace molphenix {
namespace cpu {

//   a [N, E], b [M, E] -> out [N, M]   (dtype float32 / float64, C-contiguous)
void arctan_l2_similarity_fwd(DType dtype, const void* a, const void* b, int64_t N, int64_t M,
                              int64_t E, double c, bool has_threshold, double threshold, void* out,
                              int num_threads);

// Backward: grad_out [N, M] -> grad_a [N, E], grad_b [M, E].
// ds/dd2 = -(4/pi) (1/c) / (1 + (d2/c)^2); zero where thresholded to 0 or where d2 was clamped
// (raw |a|^2 + |b|^2 - 2<a,b> < 0). dd2/da_i = 2 (a_i - b_j), dd2/db_j = 2 (b_j - a_i).
void arctan_l2_similarity_bwd(DType dtype, const void* grad_out, const void* a, const void* b,
                              int64_t N, int64_t M, int64_t E, double c, bool has_threshold,
                              double threshold, void* grad_a, void* grad_b, int num_threads);

}  // namespace cpu

namespace cuda {
void launch_arctan_l2_similarity_fwd(DType dtype, const void* a, const void* b, int64_t N,
                                     int64_t M, int64_t E, double c, bool has_threshold,
                                     double threshold, void* out, void* stream);
void launch_arctan_l2_similarity_bwd(DType dtype, const void* grad_out, const void* a,
                                     const void* b, int64_t N, int64_t M, int64_t E, double c,
                                     bool has_threshold, double threshold, void* grad_a,
                                     void* grad_b, void* stream);
}  // namespace cuda
}  // namespace molphenix
