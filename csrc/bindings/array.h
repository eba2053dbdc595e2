// Zero-copy views of numpy / torch / cupy arrays through DLPack, with validation that names the
// argument. The binding layer only: no math here.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "molphenix/common.h"
#include "molphenix/dlpack.h"

namespace molphenix {
namespace bind {

namespace py = pybind11;

enum class Device : int { kCPU = 1, kCUDA = 2 };

// A borrowed view of an array. `owner` keeps the producer's DLPack capsule (and so the memory)
// alive for the duration of the call. The capsule is never consumed: the producer's deleter runs
// when the capsule is collected.
struct ArrayView {
  py::object owner;
  void* data = nullptr;
  std::vector<int64_t> shape;
  DLDataType dtype{};
  Device device = Device::kCPU;
  int device_id = 0;
  bool present = false;

  int ndim() const { return static_cast<int>(shape.size()); }
  int64_t size(int i) const { return shape.at(static_cast<size_t>(i)); }
  bool is_float() const {
    return (dtype.code == kDLFloat && (dtype.bits == 16 || dtype.bits == 32 || dtype.bits == 64)) ||
           (dtype.code == kDLBfloat && dtype.bits == 16);
  }
  bool is_int64() const { return dtype.code == kDLInt && dtype.bits == 64; }
  bool is_float64() const { return dtype.code == kDLFloat && dtype.bits == 64; }
  DType float_dtype() const {
    if (dtype.code == kDLBfloat) return DType::kBFloat16;
    if (dtype.bits == 16) return DType::kFloat16;
    if (dtype.bits == 64) return DType::kFloat64;
    return DType::kFloat32;
  }
};

std::string dtype_str(const DLDataType& t);

// Parses `obj` (a DLPack capsule or any object with __dlpack__). None gives present == false when
// allow_none, else a TypeError naming `name`. Requires C-contiguous layout and lanes == 1.
ArrayView view(py::handle obj, const char* name, bool allow_none = false);

// Validation helpers; all throw ValueError / TypeError naming the argument.
void check_ndim(const ArrayView& a, const char* name, int ndim);
void check_float(const ArrayView& a, const char* name);
void check_same_dtype(const ArrayView& a, const char* an, const ArrayView& b, const char* bn);
void check_dtype(const ArrayView& a, const char* name, DType expected);
void check_int64(const ArrayView& a, const char* name);
void check_float64(const ArrayView& a, const char* name);
void check_same_device(const ArrayView& a, const char* an, const ArrayView& b, const char* bn);
void check_shape(const ArrayView& a, const char* name, std::initializer_list<int64_t> shape);
// CPU kernels support float32 / float64 only.
void check_cpu_dtype(const ArrayView& a, const char* name);

}  // namespace bind
}  // namespace molphenix
