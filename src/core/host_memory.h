// flashmem/core/host_memory.h — how much host memory the OS can still give us.
#pragma once

#include <cstdint>
#include <fstream>
#include <optional>
#include <string>

namespace flashmem {

// MemAvailable of /proc/meminfo in bytes (the kernel's estimate of what can be allocated without
// swapping); nullopt where the file is not there or not readable.
inline std::optional<uint64_t> host_memory_available() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t kib = 0;
  while (in >> key >> kib) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return kib * 1024;
  }
  return std::nullopt;
}

}  // namespace flashmem
