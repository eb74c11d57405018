#!/usr/bin/env python3
"""Generates src/io/unicode_data.cpp: compact Unicode category tables for the tokenizer.

The pre-tokenizers need \\p{L}, \\p{N}, \\s and friends over all code points. We store one
byte of flags per code point *range*: the table lists the first code point of every run of
code points that share the same flags, packed as (first << 8) | flags, sorted, so a lookup is
one binary search (see src/io/unicode.cpp, which also caches the BMP in a flat array).

Flags (must match src/io/unicode.h):
  bit 0 L  letter          (Lu Ll Lt Lm Lo)
  bit 1 N  number          (Nd Nl No)
  bit 2 M  mark            (Mn Mc Me)
  bit 3 P  punctuation     (Pc Pd Ps Pe Pi Pf Po)
  bit 4 S  symbol          (Sm Sc Sk So)
  bit 5 Z  separator       (Zs Zl Zp)
  bit 6 C  other           (Cc Cf Cs Co Cn; unassigned code points land here)
  bit 7 whitespace         the White_Space property, i.e. what regex \\s matches

Python's unicodedata does not expose White_Space, so that list is spelled out below (it is
tiny and has been stable since Unicode 6.1: see PropList.txt).

Usage:  python3 scripts/gen_unicode_tables.py > src/io/unicode_data.cpp
"""

import sys
import unicodedata

WHITE_SPACE = {
    *range(0x0009, 0x000E), 0x0020, 0x0085, 0x00A0, 0x1680, *range(0x2000, 0x200B),
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
}
MAJOR_BITS = {"L": 1, "N": 2, "M": 4, "P": 8, "S": 16, "Z": 32, "C": 64}
WHITESPACE_BIT = 128
MAX_CODEPOINT = 0x10FFFF


def flags_of(cp: int) -> int:
    flags = MAJOR_BITS[unicodedata.category(chr(cp))[0]]
    if cp in WHITE_SPACE:
        flags |= WHITESPACE_BIT
    return flags


def ranges():
    out = []
    prev = None
    for cp in range(MAX_CODEPOINT + 1):
        f = flags_of(cp)
        if f != prev:
            out.append((cp, f))
            prev = f
    return out


def main() -> int:
    table = ranges()
    w = sys.stdout.write
    w("// GENERATED FILE - do not edit. Regenerate with:\n")
    w("//   python3 scripts/gen_unicode_tables.py > src/io/unicode_data.cpp\n")
    w(f"// Source: Python {sys.version.split()[0]} unicodedata, Unicode {unicodedata.unidata_version}.\n")
    w("// Each entry is (first_code_point << 8) | flags for a run of code points sharing flags;\n")
    w("// flag bits are documented in src/io/unicode.h.\n")
    w("#include <cstddef>\n#include <cstdint>\n\n#include \"io/unicode.h\"\n\n")
    w("namespace flashmem::unicode::detail {\n\n")
    w(f'extern const char kUnicodeDataVersion[] = "{unicodedata.unidata_version}";\n')
    w(f"extern const size_t kCategoryRangeCount = {len(table)};\n")
    w("extern const uint32_t kCategoryRanges[] = {\n")
    per_line = 8
    for i in range(0, len(table), per_line):
        chunk = table[i:i + per_line]
        w("    " + ", ".join(f"0x{(cp << 8) | f:08X}" for cp, f in chunk) + ",\n")
    w("};\n\n}  // namespace flashmem::unicode::detail\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
