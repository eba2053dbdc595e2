// Device queries for build_info() and molphenix.info. Never throws: with no driver or no device
// the statically linked runtime reports an error code and we answer 0 / "".
#include <cuda_runtime.h>

#include <string>

#include "molphenix/common.h"

namespace molphenix {
namespace cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls are unaffected
    return 0;
  }
  return n;
}

int runtime_version() { return CUDART_VERSION; }

std::string device_name(int device) {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return std::string();
  }
  return std::string(prop.name);
}

// Host copy of a small device array for the bindings' validation (e.g. retrieval targets, which
// the kernels use as indices): async copy on the caller's stream, then wait for that stream.
void copy_to_host(void* dst, const void* src, size_t bytes, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st);
  if (e == cudaSuccess) e = cudaStreamSynchronize(st);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw ValueError(std::string("could not read an index array from the device: ") +
                     cudaGetErrorString(e));
  }
}

}  // namespace cuda
}  // namespace molphenix
