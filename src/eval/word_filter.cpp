// flashmem/eval/word_filter.cpp — FNV-1a 64 and the RULER word blocklist lookup.
#include "eval/word_filter.h"

#include <algorithm>
#include <iterator>

namespace flashmem::eval {

namespace {

constexpr uint64_t kBlocked[] = {
#include "eval/blocked_words.inc"
};

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001b3ull;

static_assert(std::size(kBlocked) >= 100, "blocked_words.inc looks truncated");

}  // namespace

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = kFnvOffset;
  for (unsigned char c : s) {
    h ^= c;
    h *= kFnvPrime;
  }
  return h;
}

bool is_blocked_word(std::string_view word) {
  // FNV-1a of the ASCII-lowercased word, without building the lowercase copy.
  uint64_t h = kFnvOffset;
  for (unsigned char c : word) {
    if (c >= 'A' && c <= 'Z') c = static_cast<unsigned char>(c - 'A' + 'a');
    h ^= c;
    h *= kFnvPrime;
  }
  return std::binary_search(std::begin(kBlocked), std::end(kBlocked), h);
}

std::span<const uint64_t> blocked_word_hashes() { return kBlocked; }

}  // namespace flashmem::eval
