// flashmem/core/clock.h — wall-clock intervals for reports (prefill and decode seconds).
#pragma once

#include <chrono>

namespace flashmem {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace flashmem
