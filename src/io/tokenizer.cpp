// flashmem/io/tokenizer.cpp — byte-level BPE (GPT-2 family) built from GGUF vocabularies.
//
// Pipeline of encode():
//   1. special-token split: control / user-defined token texts are cut out of the input
//      (leftmost, longest match) and emitted as their ids;
//   2. pre-tokenization of each remaining stretch with hand-written scanners equivalent to
//      the pre-tokenizer's regexes (std::regex cannot express \p{L});
//   3. byte-level BPE of each piece: bytes start as their byte tokens and adjacent pairs are
//      merged lowest-rank first (leftmost first on ties), as GPT-2 / HF tokenizers do.
//
// Invalid UTF-8 in the input never throws: each offending byte is treated as one code point
// of class "other" (as U+FFFD would be) but keeps its raw value, so byte-level BPE encodes
// the byte itself and decode(encode(s)) == s holds whenever the vocabulary has a token for
// every byte of s. (llama.cpp instead substitutes U+FFFD, so ids differ from it only on
// invalid input.) Bytes without a token of their own are dropped, as the references do.
#include "io/tokenizer.h"

#include <algorithm>
#include <array>
#include <climits>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "io/gguf.h"
#include "io/unicode.h"

namespace flashmem {
namespace {

// GGUF token types (llama.cpp's llama_token_type numbering).
enum TokenType : int32_t {
  kTypeUndefined = 0,
  kTypeNormal = 1,
  kTypeUnknown = 2,
  kTypeControl = 3,
  kTypeUserDefined = 4,
  kTypeUnused = 5,
  kTypeByte = 6,
};

enum class PreTokenizer {
  kGpt2,            // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kDigitsThenGpt2,  // every \p{N} code point alone, then the GPT-2 pattern between them
  kQwen2,           // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
                    //  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
};

struct PreTokenizerName {
  const char* name;
  PreTokenizer kind;
};
// The `tokenizer.ggml.pre` values we accept, mapped as llama.cpp maps them.
constexpr PreTokenizerName kPreTokenizers[] = {
    {"smollm", PreTokenizer::kDigitsThenGpt2},
    {"starcoder", PreTokenizer::kDigitsThenGpt2},
    {"gpt-2", PreTokenizer::kGpt2},
    {"qwen2", PreTokenizer::kQwen2},
};

std::string supported_pre_list() {
  std::string s;
  for (const auto& p : kPreTokenizers) {
    if (!s.empty()) s += ", ";
    s += '"';
    s += p.name;
    s += '"';
  }
  return s;
}

// GPT-2's reversible byte <-> code point mapping: printable Latin-1 bytes map to themselves,
// the other 68 bytes to U+0100.. in byte order, so every token string is printable.
struct ByteLevelMap {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 0x144> cp_to_byte{};  // -1 where no byte maps to the code point
};

const ByteLevelMap& byte_level_map() {
  static const ByteLevelMap map = [] {
    ByteLevelMap m;
    m.cp_to_byte.fill(-1);
    uint32_t next_extra = 0x100;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable =
          (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? b : next_extra++;
      m.byte_to_cp[b] = cp;
      m.cp_to_byte[cp] = static_cast<int16_t>(b);
    }
    return m;
  }();
  return map;
}

}  // namespace

std::string byte_level_token(uint8_t b) {
  std::string s;
  unicode::append_utf8(s, byte_level_map().byte_to_cp[b]);
  return s;
}

namespace {

// Vocabulary string -> raw bytes (undoing the byte-level mapping). Code points outside the
// mapping (not expected in a byte-level vocabulary) are kept as their UTF-8.
std::string byte_level_decode(std::string_view text) {
  const ByteLevelMap& m = byte_level_map();
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const unicode::Utf8Decoded d = unicode::decode_utf8(text, pos);
    if (d.status == unicode::Utf8Status::kValid && d.cp < m.cp_to_byte.size() &&
        m.cp_to_byte[d.cp] >= 0) {
      out.push_back(static_cast<char>(m.cp_to_byte[d.cp]));
    } else {
      out.append(text.substr(pos, d.len));
    }
    pos += d.len;
  }
  return out;
}

// Merge table: (left id, right id) -> (rank, merged id), open addressing on a 64-bit key.
// The BPE loop does one lookup per candidate pair, so this is the hot data structure.
class MergeTable {
 public:
  struct Entry {
    uint64_t key = kEmpty;
    int32_t rank = 0;
    TokenId merged = 0;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};

  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    slots_.assign(cap, Entry{});
    mask_ = cap - 1;
  }
  // Keeps the first (best-ranked) entry when a pair is listed twice.
  void insert(TokenId left, TokenId right, int32_t rank, TokenId merged) {
    const uint64_t key = make_key(left, right);
    for (size_t i = hash(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return;
      if (slots_[i].key == kEmpty) {
        slots_[i] = Entry{key, rank, merged};
        return;
      }
    }
  }
  const Entry* find(TokenId left, TokenId right) const {
    if (left < 0 || right < 0) return nullptr;  // a byte without a token never merges
    const uint64_t key = make_key(left, right);
    for (size_t i = hash(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i];
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static uint64_t make_key(TokenId l, TokenId r) {
    return (uint64_t{static_cast<uint32_t>(l)} << 32) | static_cast<uint32_t>(r);
  }
  size_t hash(uint64_t key) const {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 32) & mask_;
  }
  std::vector<Entry> slots_;
  size_t mask_ = 0;
};

// What the GPT-2 pattern distinguishes about a code point.
enum CharClass : uint8_t { kClsLetter, kClsNumber, kClsSpace, kClsOther, kClsNone };

// Input stretch decoded to code points with their classes and byte offsets.
struct CodePoints {
  std::vector<uint32_t> cps;  // invalid bytes are kInvalidCp
  std::vector<uint8_t> cls;
  std::vector<uint32_t> offs;  // byte offset of each code point, plus one past the end
  static constexpr uint32_t kInvalidCp = 0xFFFFFFFFu;

  void assign(std::string_view text) {
    cps.clear();
    cls.clear();
    offs.clear();
    for (size_t pos = 0; pos < text.size();) {
      const unicode::Utf8Decoded d = unicode::decode_utf8(text, pos);
      offs.push_back(static_cast<uint32_t>(pos));
      if (d.status == unicode::Utf8Status::kValid) {
        cps.push_back(d.cp);
        cls.push_back(classify(d.cp));
        pos += d.len;
      } else {
        cps.push_back(kInvalidCp);
        cls.push_back(kClsOther);
        pos += 1;  // one invalid byte at a time, see the file comment
      }
    }
    offs.push_back(static_cast<uint32_t>(text.size()));
  }

  static uint8_t classify(uint32_t cp) {
    const uint8_t f = unicode::cp_flags(cp);
    if (f & unicode::kLetter) return kClsLetter;
    if (f & unicode::kNumber) return kClsNumber;
    if (f & unicode::kWhitespace) return kClsSpace;
    return kClsOther;
  }
};

// A pre-token as a byte range of the stretch.
struct Piece {
  uint32_t begin;
  uint32_t end;
};

// The GPT-2 pattern over code points [begin, end):
//   's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+
// The stretch end acts as end of input, so lookaheads do not see past it (the regex is
// applied to each stretch separately, as in HF tokenizers and llama.cpp).
void split_gpt2(const CodePoints& in, size_t begin, size_t end, std::vector<Piece>& out) {
  const auto emit = [&](size_t from, size_t to) {
    out.push_back(Piece{in.offs[from], in.offs[to]});
  };
  const auto cls_at = [&](size_t i) -> uint8_t { return i < end ? in.cls[i] : uint8_t{kClsNone}; };
  size_t pos = begin;
  while (pos < end) {
    const uint32_t c = in.cps[pos];
    if (c == '\'' && pos + 1 < end) {
      const uint32_t n1 = in.cps[pos + 1];
      if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') {
        emit(pos, pos + 2);
        pos += 2;
        continue;
      }
      if (pos + 2 < end) {
        const uint32_t n2 = in.cps[pos + 2];
        if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
          emit(pos, pos + 3);
          pos += 3;
          continue;
        }
      }
    }
    // " ?X+" for X in letters, numbers, others: an optional single ASCII space then a run.
    const uint8_t run_cls = (c == ' ') ? cls_at(pos + 1) : in.cls[pos];
    if (run_cls == kClsLetter || run_cls == kClsNumber || run_cls == kClsOther) {
      const size_t start = pos;
      if (c == ' ') ++pos;
      while (pos < end && in.cls[pos] == run_cls) ++pos;
      emit(start, pos);
      continue;
    }
    // Whitespace: "\s+(?!\S)" leaves the last space of a run that is followed by a
    // non-space to prefix the next piece; at the stretch end the whole run is taken.
    size_t n = 0;
    while (pos + n < end && in.cls[pos + n] == kClsSpace) ++n;
    if (n > 1 && pos + n < end) {
      emit(pos, pos + n - 1);
      pos += n - 1;
    } else if (n > 0) {
      emit(pos, pos + n);
      pos += n;
    } else {
      emit(pos, pos + 1);  // unreachable: every code point has one of the classes above
      ++pos;
    }
  }
}

bool is_newline(uint32_t c) { return c == '\r' || c == '\n'; }
uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

// The Qwen2 pattern (see kQwen2), alternatives tried in order at each position as a regex
// engine does. Unlike GPT-2's, a letter run may take any one non-letter, non-digit prefix
// (punctuation, a tab) except a line break; digits are single; a punctuation run keeps the
// line breaks that follow it; and a whitespace run that holds line breaks ends after its last.
void split_qwen2(const CodePoints& in, std::vector<Piece>& out) {
  const size_t end = in.cps.size();
  const auto emit = [&](size_t from, size_t to) { out.push_back(Piece{in.offs[from], in.offs[to]}); };
  const auto cls_at = [&](size_t i) -> uint8_t { return i < end ? in.cls[i] : uint8_t{kClsNone}; };
  size_t pos = 0;
  while (pos < end) {
    const uint32_t c = in.cps[pos];
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (c == '\'' && pos + 1 < end) {
      const uint32_t n1 = ascii_lower(in.cps[pos + 1]);
      if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') {
        emit(pos, pos + 2);
        pos += 2;
        continue;
      }
      const uint32_t n2 = pos + 2 < end ? ascii_lower(in.cps[pos + 2]) : 0;
      if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
        emit(pos, pos + 3);
        pos += 3;
        continue;
      }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    size_t p = pos;
    if (in.cls[p] != kClsLetter && in.cls[p] != kClsNumber && !is_newline(c) && cls_at(p + 1) == kClsLetter) ++p;
    if (in.cls[p] == kClsLetter) {
      while (p < end && in.cls[p] == kClsLetter) ++p;
      emit(pos, p);
      pos = p;
      continue;
    }
    // \p{N}
    if (in.cls[pos] == kClsNumber) {
      emit(pos, pos + 1);
      ++pos;
      continue;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    p = (c == ' ' && cls_at(pos + 1) == kClsOther) ? pos + 1 : pos;
    if (in.cls[p] == kClsOther) {
      while (p < end && in.cls[p] == kClsOther) ++p;
      while (p < end && is_newline(in.cps[p])) ++p;
      emit(pos, p);
      pos = p;
      continue;
    }
    // Whitespace. \s*[\r\n]+ ends the match after the run's last line break, if it has one;
    // else \s+(?!\S) leaves the last space of a run followed by a non-space, and \s+ takes
    // a lone space or a run at the end.
    size_t n = 0, last_break = 0;
    bool has_break = false;
    for (; pos + n < end && in.cls[pos + n] == kClsSpace; ++n)
      if (is_newline(in.cps[pos + n])) {
        has_break = true;
        last_break = n;
      }
    size_t take = n;
    if (has_break) take = last_break + 1;
    else if (n > 1 && pos + n < end) take = n - 1;
    if (take == 0) take = 1;  // unreachable: every code point has one of the classes above
    emit(pos, pos + take);
    pos += take;
  }
}

void pre_tokenize(PreTokenizer kind, const CodePoints& in, std::vector<Piece>& out) {
  const size_t n = in.cps.size();
  if (kind == PreTokenizer::kGpt2) {
    split_gpt2(in, 0, n, out);
    return;
  }
  if (kind == PreTokenizer::kQwen2) {
    split_qwen2(in, out);
    return;
  }
  // kDigitsThenGpt2: each \p{N} code point is a piece of its own ("Digits" with
  // individual_digits in HF terms); the text between them goes through the GPT-2 pattern.
  size_t seg = 0;
  for (size_t i = 0; i < n; ++i) {
    if (in.cls[i] != kClsNumber) continue;
    if (seg < i) split_gpt2(in, seg, i, out);
    out.push_back(Piece{in.offs[i], in.offs[i + 1]});
    seg = i + 1;
  }
  if (seg < n) split_gpt2(in, seg, n, out);
}

// Words up to this many bytes use the quadratic scan (no allocation, cache friendly);
// longer ones the heap, which keeps pathological inputs (long runs) near n log n.
constexpr size_t kSmallWord = 24;

}  // namespace

struct Tokenizer::Impl {
  PreTokenizer pre = PreTokenizer::kGpt2;
  SpecialTokens special;
  std::vector<std::string> tokens;
  std::vector<std::string> bytes;  // per token: what decode() emits
  std::vector<int32_t> types;
  std::unordered_map<std::string, TokenId> token_to_id;
  std::array<TokenId, 256> byte_token{};
  MergeTable merges;
  std::vector<TokenId> end_of_generation;  // sorted
  // Specials to split out of the input, bucketed by first byte, longest text first.
  std::array<std::vector<TokenId>, 256> special_by_first_byte;

  bool is_control(TokenId id) const {
    return types[id] == kTypeControl || types[id] == kTypeUnknown;
  }

  void bpe_small(std::string_view word, std::vector<TokenId>& out) const;
  void bpe_large(std::string_view word, std::vector<TokenId>& out) const;
  void bpe_word(std::string_view word, std::vector<TokenId>& out) const {
    if (word.size() == 1) {
      const TokenId id = byte_token[static_cast<uint8_t>(word[0])];
      if (id >= 0) out.push_back(id);
    } else if (word.size() <= kSmallWord) {
      bpe_small(word, out);
    } else {
      bpe_large(word, out);
    }
  }
  void encode_text(std::string_view text, std::vector<TokenId>& out) const;
  // Length of the special token starting at text[pos] (0 if none); its id in *id.
  size_t match_special(std::string_view text, size_t pos, bool parse_special, TokenId* id) const;
};

void Tokenizer::Impl::bpe_small(std::string_view word, std::vector<TokenId>& out) const {
  std::array<TokenId, kSmallWord> sym;
  size_t n = word.size();
  for (size_t i = 0; i < n; ++i) sym[i] = byte_token[static_cast<uint8_t>(word[i])];
  while (n > 1) {
    int32_t best_rank = INT32_MAX;
    size_t best = 0;
    TokenId best_merged = 0;
    for (size_t i = 0; i + 1 < n; ++i) {
      const MergeTable::Entry* e = merges.find(sym[i], sym[i + 1]);
      if (e != nullptr && e->rank < best_rank) {  // strict: leftmost wins ties
        best_rank = e->rank;
        best = i;
        best_merged = e->merged;
      }
    }
    if (best_rank == INT32_MAX) break;
    sym[best] = best_merged;
    std::copy(sym.begin() + static_cast<ptrdiff_t>(best) + 2,
              sym.begin() + static_cast<ptrdiff_t>(n),
              sym.begin() + static_cast<ptrdiff_t>(best) + 1);
    --n;
  }
  for (size_t i = 0; i < n; ++i) {
    if (sym[i] >= 0) out.push_back(sym[i]);
  }
}

void Tokenizer::Impl::bpe_large(std::string_view word, std::vector<TokenId>& out) const {
  // Symbols form a doubly linked list over the original byte positions; a merged symbol
  // keeps its left position, so ordering candidates by position orders them by text offset.
  struct Sym {
    TokenId id;
    int32_t prev;
    int32_t next;  // -1 at the ends
  };
  struct Cand {
    int32_t rank;
    int32_t left;
    TokenId left_id;
    TokenId right_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  const int32_t n = static_cast<int32_t>(word.size());
  std::vector<Sym> sym(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    sym[static_cast<size_t>(i)] =
        Sym{byte_token[static_cast<uint8_t>(word[static_cast<size_t>(i)])], i - 1,
            i + 1 < n ? i + 1 : -1};
  }
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  const auto push_pair = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = sym[static_cast<size_t>(left)].next;
    if (right < 0) return;
    const TokenId l = sym[static_cast<size_t>(left)].id;
    const TokenId r = sym[static_cast<size_t>(right)].id;
    if (const MergeTable::Entry* e = merges.find(l, r)) heap.push(Cand{e->rank, left, l, r});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);

  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& left = sym[static_cast<size_t>(c.left)];
    // Stale candidates: the left symbol was absorbed (id -1), or either side changed.
    if (left.id != c.left_id || left.next < 0) continue;
    Sym& right = sym[static_cast<size_t>(left.next)];
    if (right.id != c.right_id) continue;
    left.id = merges.find(c.left_id, c.right_id)->merged;
    right.id = -1;
    left.next = right.next;
    if (right.next >= 0) sym[static_cast<size_t>(right.next)].prev = c.left;
    push_pair(left.prev);
    push_pair(c.left);
  }
  for (int32_t i = 0; i >= 0 && i < n; i = sym[static_cast<size_t>(i)].next) {
    if (sym[static_cast<size_t>(i)].id >= 0) out.push_back(sym[static_cast<size_t>(i)].id);
  }
}

void Tokenizer::Impl::encode_text(std::string_view text, std::vector<TokenId>& out) const {
  if (text.empty()) return;
  CodePoints cps;
  cps.assign(text);
  std::vector<Piece> pieces;
  pieces.reserve(cps.cps.size() / 3 + 1);
  pre_tokenize(pre, cps, pieces);
  for (const Piece& p : pieces) bpe_word(text.substr(p.begin, p.end - p.begin), out);
}

size_t Tokenizer::Impl::match_special(std::string_view text, size_t pos, bool parse_special,
                                      TokenId* id) const {
  for (const TokenId cand : special_by_first_byte[static_cast<uint8_t>(text[pos])]) {
    // User-defined tokens are literal text and always match; control tokens only on request
    // (the same rule as HF tokenizers' added tokens and llama.cpp).
    if (!parse_special && is_control(cand)) continue;
    const std::string& t = tokens[static_cast<size_t>(cand)];
    if (text.compare(pos, t.size(), t) == 0) {
      *id = cand;
      return t.size();
    }
  }
  return 0;
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_vocab(VocabData data) {
  FM_CHECK(data.model == "gpt2", ErrorCode::kUnsupported, "tokenizer model \"", data.model,
           "\" is not supported; flashmem supports \"gpt2\" (byte-level BPE)");
  auto impl = std::make_unique<Impl>();
  bool known_pre = false;
  for (const auto& p : kPreTokenizers) {
    if (data.pre == p.name) {
      impl->pre = p.kind;
      known_pre = true;
    }
  }
  FM_CHECK(known_pre, ErrorCode::kUnsupported, "pre-tokenizer \"", data.pre,
           "\" (tokenizer.ggml.pre) is not supported; flashmem supports: ", supported_pre_list());

  const size_t n = data.tokens.size();
  FM_CHECK(n > 0 && n <= static_cast<size_t>(INT32_MAX), ErrorCode::kFormat,
           "tokenizer vocabulary has ", n, " tokens");
  if (data.token_types.empty()) data.token_types.assign(n, kTypeNormal);
  FM_CHECK(data.token_types.size() == n, ErrorCode::kFormat, "tokenizer has ", n, " tokens but ",
           data.token_types.size(), " token types");
  for (const TokenId id :
       {data.special.bos, data.special.eos, data.special.unk, data.special.pad, data.special.eot}) {
    FM_CHECK(id >= -1 && id < static_cast<TokenId>(n), ErrorCode::kFormat, "special token id ", id,
             " is outside the vocabulary of ", n, " tokens");
  }

  impl->special = data.special;
  impl->types = std::move(data.token_types);
  impl->tokens = std::move(data.tokens);
  impl->token_to_id.reserve(n);
  impl->bytes.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& t = impl->tokens[i];
    const TokenId id = static_cast<TokenId>(i);
    impl->token_to_id.emplace(t, id);  // first id wins on duplicates
    const int32_t type = impl->types[i];
    const bool literal = type == kTypeControl || type == kTypeUserDefined || type == kTypeUnknown;
    impl->bytes[i] = literal ? t : byte_level_decode(t);
    if ((type == kTypeControl || type == kTypeUserDefined) && !t.empty()) {
      impl->special_by_first_byte[static_cast<uint8_t>(t[0])].push_back(id);
    }
  }
  // End of generation: EOS, EOT and the control tokens known to close a text or a turn.
  static constexpr std::string_view kEndTexts[] = {"<|endoftext|>", "<|im_end|>",  "<|eot_id|>",
                                                   "<|eom_id|>",    "<|end|>",     "<end_of_turn>",
                                                   "<|end_of_text|>", "</s>"};
  for (const TokenId id : {impl->special.eos, impl->special.eot})
    if (id >= 0) impl->end_of_generation.push_back(id);
  for (size_t i = 0; i < n; ++i)
    if (impl->types[i] == kTypeControl &&
        std::find(std::begin(kEndTexts), std::end(kEndTexts), impl->tokens[i]) != std::end(kEndTexts))
      impl->end_of_generation.push_back(static_cast<TokenId>(i));
  std::sort(impl->end_of_generation.begin(), impl->end_of_generation.end());
  for (auto& bucket : impl->special_by_first_byte) {
    std::stable_sort(bucket.begin(), bucket.end(), [&](TokenId a, TokenId b) {
      return impl->tokens[static_cast<size_t>(a)].size() >
             impl->tokens[static_cast<size_t>(b)].size();
    });
  }

  // BPE starts from one token per byte. Vocabularies may lack bytes that (almost) never
  // occur, e.g. SmolLM2 has none for 0xC0, 0xC1, 0xF5..0xFF and a few C0 controls; such
  // bytes are dropped from the output, as HF tokenizers (BPE without unk) and llama.cpp do.
  const ByteLevelMap& m = byte_level_map();
  for (uint32_t b = 0; b < 256; ++b) {
    std::string s;
    unicode::append_utf8(s, m.byte_to_cp[b]);
    const auto it = impl->token_to_id.find(s);
    impl->byte_token[b] = it == impl->token_to_id.end() ? -1 : it->second;
  }

  // Merges whose halves or result are not tokens cannot produce ids; they are skipped
  // (well-formed vocabularies have none).
  impl->merges.reserve(data.merges.size());
  for (size_t rank = 0; rank < data.merges.size(); ++rank) {
    const std::string& line = data.merges[rank];
    const size_t sp = line.find(' ', 1);
    FM_CHECK(sp != std::string::npos && sp + 1 < line.size(), ErrorCode::kFormat,
             "malformed BPE merge #", rank, ": \"", line, "\"");
    const auto l = impl->token_to_id.find(line.substr(0, sp));
    const auto r = impl->token_to_id.find(line.substr(sp + 1));
    const auto merged = impl->token_to_id.find(line.substr(0, sp) + line.substr(sp + 1));
    if (l == impl->token_to_id.end() || r == impl->token_to_id.end() ||
        merged == impl->token_to_id.end()) {
      continue;
    }
    impl->merges.insert(l->second, r->second, static_cast<int32_t>(rank), merged->second);
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_gguf(const GgufFile& file) {
  VocabData d;
  d.model = file.get_string_or("tokenizer.ggml.model", "");
  FM_CHECK(!d.model.empty(), ErrorCode::kUnsupported,
           "the model file has no tokenizer (tokenizer.ggml.model is missing)");
  FM_CHECK(d.model == "gpt2", ErrorCode::kUnsupported, "tokenizer model \"", d.model,
           "\" is not supported; flashmem supports \"gpt2\" (byte-level BPE)");
  d.pre = file.get_string_or("tokenizer.ggml.pre", "default");
  d.tokens = file.get_array("tokenizer.ggml.tokens").strings("tokenizer.ggml.tokens");
  if (const GgufValue* v = file.find("tokenizer.ggml.token_type")) {
    for (const int64_t t :
         v->as_array("tokenizer.ggml.token_type").ints("tokenizer.ggml.token_type")) {
      d.token_types.push_back(static_cast<int32_t>(std::clamp<int64_t>(t, INT32_MIN, INT32_MAX)));
    }
  }
  FM_CHECK(file.has("tokenizer.ggml.merges"), ErrorCode::kFormat,
           "byte-level BPE tokenizer without tokenizer.ggml.merges");
  d.merges = file.get_array("tokenizer.ggml.merges").strings("tokenizer.ggml.merges");
  // Ids are read as signed: some converters write -1 for "none".
  const auto id_or_none = [&](std::string_view key) -> TokenId {
    const GgufValue* v = file.find(key);
    if (v == nullptr) return -1;
    const int64_t id = v->as_i64(key);
    FM_CHECK(id >= -1 && id <= INT32_MAX, ErrorCode::kFormat, key, " = ", id, " is out of range");
    return static_cast<TokenId>(id);
  };
  d.special.bos = id_or_none("tokenizer.ggml.bos_token_id");
  d.special.eos = id_or_none("tokenizer.ggml.eos_token_id");
  d.special.unk = id_or_none("tokenizer.ggml.unknown_token_id");
  d.special.pad = id_or_none("tokenizer.ggml.padding_token_id");
  d.special.eot = id_or_none("tokenizer.ggml.eot_token_id");
  d.special.add_bos = file.get_bool_or("tokenizer.ggml.add_bos_token", false);
  d.special.add_eos = file.get_bool_or("tokenizer.ggml.add_eos_token", false);
  return from_vocab(std::move(d));
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  // Byte offsets inside the pre-tokenizer are 32-bit.
  FM_CHECK(text.size() < UINT32_MAX, ErrorCode::kInvalidArgument, "text of ", text.size(),
           " bytes is too long to tokenize at once");
  const Impl& im = *impl_;
  std::vector<TokenId> out;
  out.reserve(text.size() / 3 + 2);
  if (add_special && im.special.add_bos && im.special.bos >= 0) out.push_back(im.special.bos);
  size_t raw_begin = 0;
  for (size_t pos = 0; pos < text.size();) {
    TokenId id = -1;
    const size_t len = im.match_special(text, pos, parse_special, &id);
    if (len == 0) {
      ++pos;
      continue;
    }
    im.encode_text(text.substr(raw_begin, pos - raw_begin), out);
    out.push_back(id);
    pos += len;
    raw_begin = pos;
  }
  im.encode_text(text.substr(raw_begin), out);
  if (add_special && im.special.add_eos && im.special.eos >= 0) out.push_back(im.special.eos);
  return out;
}

std::string Tokenizer::decode(const std::vector<TokenId>& ids, bool render_special) const {
  std::string out;
  for (const TokenId id : ids) {
    FM_CHECK(id >= 0 && id < vocab_size(), ErrorCode::kInvalidArgument, "token id ", id,
             " is outside the vocabulary of ", vocab_size(), " tokens");
    if (!render_special && impl_->is_control(id)) continue;
    out += impl_->bytes[static_cast<size_t>(id)];
  }
  return out;
}

std::string Tokenizer::token_bytes(TokenId id) const {
  FM_CHECK(id >= 0 && id < vocab_size(), ErrorCode::kInvalidArgument, "token id ", id,
           " is outside the vocabulary of ", vocab_size(), " tokens");
  return impl_->bytes[static_cast<size_t>(id)];
}

const std::string& Tokenizer::token_text(TokenId id) const {
  FM_CHECK(id >= 0 && id < vocab_size(), ErrorCode::kInvalidArgument, "token id ", id,
           " is outside the vocabulary of ", vocab_size(), " tokens");
  return impl_->tokens[static_cast<size_t>(id)];
}

bool Tokenizer::is_special(TokenId id) const {
  if (id < 0 || id >= vocab_size()) return false;
  const int32_t t = impl_->types[static_cast<size_t>(id)];
  return t == kTypeControl || t == kTypeUserDefined;
}

bool Tokenizer::ends_generation(TokenId id) const {
  return std::binary_search(impl_->end_of_generation.begin(), impl_->end_of_generation.end(), id);
}

TokenId Tokenizer::find_token(std::string_view text) const {
  const auto it = impl_->token_to_id.find(std::string(text));
  return it == impl_->token_to_id.end() ? -1 : it->second;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->tokens.size()); }

const SpecialTokens& Tokenizer::special() const { return impl_->special; }

// ---- StreamDecoder -------------------------------------------------------------------------

namespace {
// Appends the complete, valid sequences of `pending` to `out` (each invalid byte becoming
// U+FFFD) and keeps only a trailing incomplete-but-valid prefix in `pending`.
void drain_utf8(std::string& pending, std::string& out, bool final) {
  size_t pos = 0;
  while (pos < pending.size()) {
    const unicode::Utf8Decoded d = unicode::decode_utf8(pending, pos);
    if (d.status == unicode::Utf8Status::kValid) {
      out.append(pending, pos, d.len);
      pos += d.len;
    } else if (d.status == unicode::Utf8Status::kIncomplete && !final) {
      break;  // wait for the rest of the character
    } else {
      unicode::append_utf8(out, 0xFFFD);
      // An incomplete tail at flush is one replacement, as a UTF-8 decoder would emit.
      pos += (d.status == unicode::Utf8Status::kIncomplete) ? d.len : 1;
    }
  }
  pending.erase(0, pos);
}
}  // namespace

std::string StreamDecoder::push(TokenId id) {
  pending_ += tok_->decode({id}, render_special_);
  std::string out;
  drain_utf8(pending_, out, false);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  drain_utf8(pending_, out, true);
  pending_.clear();
  return out;
}

}  // namespace flashmem
