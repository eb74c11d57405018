// flashmem/io/unicode.cpp — UTF-8 codec and category lookup over the generated tables.
#include "io/unicode.h"

#include <algorithm>
#include <array>

namespace flashmem::unicode {
namespace {

constexpr uint32_t kMaxCodePoint = 0x10FFFF;
constexpr uint32_t kBmpSize = 0x10000;

uint8_t lookup_ranges(uint32_t cp) {
  const uint32_t* begin = detail::kCategoryRanges;
  const uint32_t* end = begin + detail::kCategoryRangeCount;
  // The last run starting at or before cp: entries are (first << 8) | flags, so every entry
  // with first <= cp compares <= (cp << 8) | 0xFF.
  const uint32_t* it = std::upper_bound(begin, end, (cp << 8) | 0xFFu);
  if (it == begin) return kOther;  // unreachable: the table starts at U+0000
  return static_cast<uint8_t>(*(it - 1) & 0xFFu);
}

// Nearly all text is in the BMP, so it gets a flat 64 KiB table built once on first use
// (thread-safe static initialisation); the rest goes through the binary search.
const std::array<uint8_t, kBmpSize>& bmp_table() {
  static const std::array<uint8_t, kBmpSize> table = [] {
    std::array<uint8_t, kBmpSize> t{};
    for (uint32_t cp = 0; cp < kBmpSize; ++cp) t[cp] = lookup_ranges(cp);
    return t;
  }();
  return table;
}

bool is_continuation(uint8_t b) { return (b & 0xC0) == 0x80; }

}  // namespace

uint8_t cp_flags(uint32_t cp) {
  if (cp < kBmpSize) return bmp_table()[cp];
  if (cp > kMaxCodePoint) return kOther;
  return lookup_ranges(cp);
}

const char* data_version() { return detail::kUnicodeDataVersion; }

Utf8Decoded decode_utf8(std::string_view s, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t b0 = byte(pos);
  if (b0 < 0x80) return {b0, 1, Utf8Status::kValid};

  uint32_t len = 0;
  uint32_t cp = 0;
  // Allowed range of the second byte (narrower than 80..BF for the lead bytes whose
  // sequences would otherwise be overlong, surrogates or beyond U+10FFFF).
  uint8_t lo = 0x80;
  uint8_t hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
    cp = b0 & 0x1Fu;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    cp = b0 & 0x0Fu;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    cp = b0 & 0x07u;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {0, 1, Utf8Status::kInvalid};  // stray continuation, C0/C1 overlong lead, F5..FF
  }

  const size_t avail = s.size() - pos;
  for (uint32_t i = 1; i < len; ++i) {
    if (i >= avail) return {0, static_cast<uint8_t>(i), Utf8Status::kIncomplete};
    const uint8_t b = byte(pos + i);
    const bool ok = (i == 1) ? (b >= lo && b <= hi) : is_continuation(b);
    if (!ok) return {0, 1, Utf8Status::kInvalid};
    cp = (cp << 6) | (b & 0x3Fu);
  }
  return {cp, static_cast<uint8_t>(len), Utf8Status::kValid};
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp > kMaxCodePoint || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_valid_utf8(std::string_view s) {
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Decoded d = decode_utf8(s, pos);
    if (d.status != Utf8Status::kValid) return false;
    pos += d.len;
  }
  return true;
}

}  // namespace flashmem::unicode
