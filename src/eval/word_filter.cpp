#include "eval/word_filter.h"

#include <algorithm>
#include <string>

namespace flashmem::eval {

namespace {
constexpr uint64_t kBlocked[] = {
#include "eval/blocked_words.inc"
};
}  // namespace

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

bool is_blocked_word(std::string_view word) {
  std::string low(word);
  for (char& c : low)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return std::binary_search(std::begin(kBlocked), std::end(kBlocked), fnv1a64(low));
}

std::span<const uint64_t> blocked_word_hashes() { return kBlocked; }

}  // namespace flashmem::eval
