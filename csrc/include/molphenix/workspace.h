// Accounting of the CPU kernels' working memory (host workspace), so that tests can check the
// documented bounds: every scratch buffer of a CPU kernel is allocated through WsVec / WsArray,
// which add their bytes to a process-wide counter while they live. The bindings expose the
// counter as molphenix._C.cpu_workspace_stats() -> (current_bytes, peak_bytes) and
// cpu_workspace_reset_peak(). Pure C++17.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

namespace molphenix {
namespace cpu {

namespace ws_detail {
inline std::atomic<int64_t>& current() {
  static std::atomic<int64_t> v{0};
  return v;
}
inline std::atomic<int64_t>& peak() {
  static std::atomic<int64_t> v{0};
  return v;
}
}  // namespace ws_detail

inline void workspace_add(size_t bytes) {
  const int64_t now = ws_detail::current().fetch_add(static_cast<int64_t>(bytes)) +
                      static_cast<int64_t>(bytes);
  int64_t p = ws_detail::peak().load(std::memory_order_relaxed);
  while (now > p && !ws_detail::peak().compare_exchange_weak(p, now)) {
  }
}
inline void workspace_sub(size_t bytes) {
  ws_detail::current().fetch_sub(static_cast<int64_t>(bytes));
}
inline int64_t workspace_current() { return ws_detail::current().load(); }
inline int64_t workspace_peak() { return ws_detail::peak().load(); }
inline void workspace_reset_peak() { ws_detail::peak().store(ws_detail::current().load()); }

// std::allocator that counts its bytes.
template <typename T>
struct WsAllocator {
  using value_type = T;
  WsAllocator() = default;
  template <typename U>
  WsAllocator(const WsAllocator<U>&) {}  // NOLINT: implicit, as allocators must be
  T* allocate(size_t n) {
    T* p = std::allocator<T>().allocate(n);
    workspace_add(n * sizeof(T));
    return p;
  }
  void deallocate(T* p, size_t n) {
    workspace_sub(n * sizeof(T));
    std::allocator<T>().deallocate(p, n);
  }
  template <typename U>
  bool operator==(const WsAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const WsAllocator<U>&) const { return false; }
};

template <typename T>
using WsVec = std::vector<T, WsAllocator<T>>;

// An uninitialised counted array (the replacement of std::unique_ptr<T[]>(new T[n])).
template <typename T>
class WsArray {
 public:
  WsArray() = default;
  explicit WsArray(size_t n) { reset(n); }
  WsArray(const WsArray&) = delete;
  WsArray& operator=(const WsArray&) = delete;
  ~WsArray() { release(); }
  void reset(size_t n) {
    release();
    if (n == 0) return;
    ptr_ = static_cast<T*>(::operator new(n * sizeof(T)));
    n_ = n;
    workspace_add(n * sizeof(T));
  }
  T* get() const { return ptr_; }
  T& operator[](size_t i) const { return ptr_[i]; }
  explicit operator bool() const { return ptr_ != nullptr; }

 private:
  void release() {
    if (ptr_ != nullptr) {
      workspace_sub(n_ * sizeof(T));
      ::operator delete(ptr_);
    }
    ptr_ = nullptr;
    n_ = 0;
  }
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

}  // namespace cpu
}  // namespace molphenix
