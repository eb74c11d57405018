// flashmem/eval/seeding.h — the seeding every generated eval sample uses (RULER, needle): a
// sample depends only on its (task, length, seed, index), on every platform. splitmix64 mixes the
// keys; draws are taken from mt19937_64 directly, since the std distributions are
// implementation-defined.
#pragma once

#include <cstdint>
#include <random>
#include <string>

namespace flashmem::eval::seeding {

inline uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint64_t hash_str(const std::string& s) {  // FNV-1a 64
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

inline uint64_t mix(uint64_t a, uint64_t b) { return splitmix(a ^ splitmix(b + 0x632BE59BD9B4E019ull)); }

using Rng = std::mt19937_64;
inline uint64_t uni(Rng& r, uint64_t n) { return n == 0 ? 0 : r() % n; }
inline double unit01(Rng& r) { return static_cast<double>(r() >> 11) * (1.0 / 9007199254740992.0); }

}  // namespace flashmem::eval::seeding
