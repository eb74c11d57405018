// flashmem/eval/word_filter.h — words the RULER generator never draws.
//
// The word tasks and the synthetic haystack draw from the Debian word list, which holds slurs
// and other offensive words; per-sample results (prompts, predictions) are published, so those
// words are filtered out when the list is loaded. The blocklist is stored as 64-bit FNV-1a
// hashes of lowercase words (src/eval/blocked_words.inc, made by scripts/gen-blocked-words.py),
// so the repository does not carry the words themselves.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

namespace flashmem::eval {

uint64_t fnv1a64(std::string_view s);
// True when the word, lowercased (ASCII), is on the blocklist.
bool is_blocked_word(std::string_view word);
// The sorted blocklist hashes.
std::span<const uint64_t> blocked_word_hashes();

}  // namespace flashmem::eval
