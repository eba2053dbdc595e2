#include "array.h"

#include <sstream>

namespace molphenix {
namespace bind {

std::string dtype_str(const DLDataType& t) {
  std::ostringstream os;
  switch (t.code) {
    case kDLInt: os << "int"; break;
    case kDLUInt: os << "uint"; break;
    case kDLFloat: os << "float"; break;
    case kDLBfloat: os << "bfloat"; break;
    case kDLBool: os << "bool"; break;
    default: os << "code" << int(t.code); break;
  }
  os << int(t.bits);
  if (t.lanes != 1) os << "x" << t.lanes;
  return os.str();
}

ArrayView view(py::handle obj, const char* name, bool allow_none) {
  ArrayView v;
  if (obj.is_none()) {
    MPX_CHECK_TYPE(allow_none, name, ": expected an array, got None");
    return v;
  }
  py::object capsule;
  if (PyCapsule_CheckExact(obj.ptr())) {
    capsule = py::reinterpret_borrow<py::object>(obj);
  } else if (py::hasattr(obj, "__dlpack__")) {
    capsule = obj.attr("__dlpack__")();
  } else {
    throw TypeError(detail::concat(name, ": expected an array supporting DLPack (numpy, torch or cupy), got ",
                                   std::string(py::str(py::type::of(obj).attr("__name__")))));
  }
  MPX_CHECK_TYPE(PyCapsule_IsValid(capsule.ptr(), "dltensor"), name,
                 ": DLPack capsule is not an unconsumed 'dltensor'");
  auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  const DLTensor& t = mt->dl_tensor;
  v.owner = capsule;
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  v.shape.assign(t.shape, t.shape + t.ndim);
  v.dtype = t.dtype;
  MPX_CHECK_TYPE(t.dtype.lanes == 1, name, ": vector dtypes are not supported");
  if (t.device.device_type == kDLCPU || t.device.device_type == kDLCUDAHost) {
    v.device = Device::kCPU;
  } else if (t.device.device_type == kDLCUDA || t.device.device_type == kDLCUDAManaged) {
    v.device = Device::kCUDA;
  } else {
    throw ValueError(detail::concat(name, ": unsupported device type ", t.device.device_type));
  }
  v.device_id = t.device.device_id;
  bool empty = false;
  for (int i = 0; i < t.ndim; ++i) empty = empty || t.shape[i] == 0;
  if (t.strides != nullptr && !empty) {  // an empty array's strides are never dereferenced
    int64_t expected = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      if (t.shape[i] != 1) {
        MPX_CHECK_VALUE(t.strides[i] == expected, name,
                        ": expected a C-contiguous array (call .contiguous() / np.ascontiguousarray)");
      }
      expected *= t.shape[i];
    }
  }
  v.present = true;
  return v;
}

void check_ndim(const ArrayView& a, const char* name, int ndim) {
  MPX_CHECK_VALUE(a.ndim() == ndim, name, ": expected ", ndim, " dimensions, got ", a.ndim());
}

void check_float(const ArrayView& a, const char* name) {
  MPX_CHECK_TYPE(a.is_float(), name, ": expected a floating-point dtype, got ", dtype_str(a.dtype));
}

void check_same_dtype(const ArrayView& a, const char* an, const ArrayView& b, const char* bn) {
  MPX_CHECK_TYPE(a.dtype.code == b.dtype.code && a.dtype.bits == b.dtype.bits, bn, ": dtype ",
                 dtype_str(b.dtype), " does not match ", an, " dtype ", dtype_str(a.dtype));
}

void check_dtype(const ArrayView& a, const char* name, DType expected) {
  check_float(a, name);
  MPX_CHECK_TYPE(a.float_dtype() == expected, name, ": expected dtype ", dtype_name(expected), ", got ",
                 dtype_str(a.dtype));
}

void check_int64(const ArrayView& a, const char* name) {
  MPX_CHECK_TYPE(a.is_int64(), name, ": expected int64, got ", dtype_str(a.dtype));
}

void check_float64(const ArrayView& a, const char* name) {
  MPX_CHECK_TYPE(a.is_float64(), name, ": expected float64, got ", dtype_str(a.dtype));
}

void check_same_device(const ArrayView& a, const char* an, const ArrayView& b, const char* bn) {
  auto dev = [](const ArrayView& x) {
    return detail::concat(x.device == Device::kCPU ? "cpu" : "cuda:", x.device == Device::kCPU ? std::string() : std::to_string(x.device_id));
  };
  MPX_CHECK_VALUE(a.device == b.device && a.device_id == b.device_id, bn, " is on ", dev(b),
                  " but ", an, " is on ", dev(a), ": all arrays must be on the same device");
}

void check_shape(const ArrayView& a, const char* name, std::initializer_list<int64_t> shape) {
  std::vector<int64_t> s(shape);
  bool ok = s.size() == a.shape.size();
  for (size_t i = 0; ok && i < s.size(); ++i) ok = s[i] < 0 || s[i] == a.shape[i];
  if (!ok) {
    std::ostringstream os;
    os << name << ": expected shape [";
    for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << (s[i] < 0 ? std::string("*") : std::to_string(s[i]));
    os << "], got [";
    for (size_t i = 0; i < a.shape.size(); ++i) os << (i ? ", " : "") << a.shape[i];
    os << "]";
    throw ValueError(os.str());
  }
}

void check_cpu_dtype(const ArrayView& a, const char* name) {
  check_float(a, name);
  MPX_CHECK_TYPE(a.float_dtype() == DType::kFloat32 || a.float_dtype() == DType::kFloat64, name,
                 ": the CPU kernels support float32 and float64, got ", dtype_str(a.dtype));
}

}  // namespace bind
}  // namespace molphenix
