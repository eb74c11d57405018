// flashmem/core/hadamard.h — the orthonormal fast Walsh–Hadamard transform (natural / Sylvester
// order, divided by √n), which the Memory Indexer applies to queries and keys (DESIGN.md §4).
#pragma once

#include <cmath>
#include <cstdint>

namespace flashmem {

inline bool is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// In place on x[n]; n must be a power of two (callers check). Orthonormal: applying it twice
// gives x back, and dot products are preserved.
template <class T>
void hadamard_inplace(T* x, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const T a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  const T s = static_cast<T>(1.0 / std::sqrt(static_cast<double>(n)));
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

}  // namespace flashmem
