// avx2 instantiation of the retrieval kernels (retrieval_impl.h); compiled with the avx2 ISA
// flags and called only after the runtime check in retrieval.cpp.
#include "retrieval_impl.h"

namespace molphenix {
namespace cpu {
namespace avx2 {
template void retrieval_ranks_isa<float>(const float*, const float*, int64_t, int64_t, int64_t,
                                         const int64_t*, double*, Metric, int64_t*, int);
template void retrieval_ranks_isa<double>(const double*, const double*, int64_t, int64_t, int64_t,
                                          const int64_t*, double*, Metric, int64_t*, int);
template void topk_retrieve_isa<float>(const float*, const float*, int64_t, int64_t, int64_t,
                                       int64_t, Metric, float*, int64_t*, int);
template void topk_retrieve_isa<double>(const double*, const double*, int64_t, int64_t, int64_t,
                                        int64_t, Metric, double*, int64_t*, int);
template int packed_panel_width_isa<float>();
template int packed_panel_width_isa<double>();
template void pack_rows_isa<float>(const float*, int64_t, int64_t, int64_t, bool, float*, float*, int);
template void pack_rows_isa<double>(const double*, int64_t, int64_t, int64_t, bool, double*, double*, int);
template void retrieval_ranks_packed_isa<float>(const float*, const float*, const float*, int64_t,
                                                int64_t, int64_t, const int64_t*, double*, Metric,
                                                int64_t*, int);
template void retrieval_ranks_packed_isa<double>(const double*, const double*, const double*,
                                                 int64_t, int64_t, int64_t, const int64_t*, double*,
                                                 Metric, int64_t*, int);
template void topk_retrieve_packed_isa<float>(const float*, const float*, const float*, int64_t,
                                              int64_t, int64_t, int64_t, Metric, float*, int64_t*,
                                              int);
template void topk_retrieve_packed_isa<double>(const double*, const double*, const double*, int64_t,
                                               int64_t, int64_t, int64_t, Metric, double*,
                                               int64_t*, int);
}  // namespace avx2
}  // namespace cpu
}  // namespace molphenix
