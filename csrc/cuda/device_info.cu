// Device queries for build_info() and molphenix.info. Never throws: with no driver or no device
// the statically linked runtime reports an error code and we answer 0 / "".
#include <cuda_runtime.h>

#include <string>

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

}  // namespace cuda
}  // namespace molphenix
