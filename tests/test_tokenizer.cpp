// Tokenizer tests: ids against an independent reference fixture (llama.cpp's llama-tokenize,
// cross-checked with HF tokenizers; see tests/fixtures/README.md), round trips, streaming
// decode, invalid input, errors, and speed.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "gguf_writer.h"
#include "io/gguf.h"
#include "io/tokenizer.h"
#include "io/unicode.h"
#include "test_util.h"

namespace flashmem {
namespace {

// The SmolLM2 tokenizer, loaded once; nullptr (after reporting a failure) if the model is
// missing.
const Tokenizer* smollm() {
  static std::unique_ptr<Tokenizer> tok = []() -> std::unique_ptr<Tokenizer> {
    const std::string path = test::default_model_path();
    if (!std::filesystem::exists(path)) return nullptr;
    const GgufFile f = GgufFile::open(path);
    return std::make_unique<Tokenizer>(Tokenizer::from_gguf(f));
  }();
  if (!tok) {
    ADD_FAILURE() << "default model not found at " << test::default_model_path()
                  << "; run scripts/fetch-model.sh";
  }
  return tok.get();
}

const std::string kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

struct FixtureCase {
  std::string name;
  std::string text;
  bool parse_special = true;
  std::vector<TokenId> ids;
};

std::vector<FixtureCase> load_cases() {
  const std::string path = std::string(FLASHMEM_FIXTURES_DIR) + "/tokenizer_cases.json";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  if (!in.good()) return {};
  const nlohmann::json doc = nlohmann::json::parse(in);
  std::vector<FixtureCase> cases;
  for (const auto& c : doc.at("cases")) {
    cases.push_back(FixtureCase{c.at("name").get<std::string>(), c.at("text").get<std::string>(),
                                c.at("parse_special").get<bool>(),
                                c.at("ids").get<std::vector<TokenId>>()});
  }
  return cases;
}

// Bytes SmolLM2's vocabulary has no token for: they are dropped, as by the references.
bool has_untokenizable_byte(const Tokenizer& tok, const std::string& s) {
  for (const char c : s) {
    if (tok.encode(std::string(1, c), false, false).empty()) return true;
  }
  return false;
}

TEST(Tokenizer, MatchesReferenceFixture) {
  const Tokenizer* tok = smollm();
  ASSERT_NE(tok, nullptr);
  const std::vector<FixtureCase> cases = load_cases();
  EXPECT_GE(cases.size(), 40u);
  for (const FixtureCase& c : cases) {
    SCOPED_TRACE("case " + c.name);
    EXPECT_EQ(tok->encode(c.text, /*add_special=*/false, c.parse_special), c.ids);
  }
}

TEST(Tokenizer, RoundTripsFixtureStrings) {
  const Tokenizer* tok = smollm();
  ASSERT_NE(tok, nullptr);
  for (const FixtureCase& c : load_cases()) {
    SCOPED_TRACE("case " + c.name);
    ASSERT_TRUE(unicode::is_valid_utf8(c.text));
    if (has_untokenizable_byte(*tok, c.text)) continue;
    EXPECT_EQ(tok->decode(tok->encode(c.text, false, c.parse_special)), c.text);
    EXPECT_EQ(tok->decode(tok->encode(c.text, false, !c.parse_special)), c.text);
  }
}

TEST(Tokenizer, DropsBytesWithoutToken) {
  const Tokenizer* tok = smollm();
  ASSERT_NE(tok, nullptr);
  // U+0004 has no token in SmolLM2's vocabulary; U+0007 and U+001B do.
  EXPECT_EQ(tok->decode(tok->encode("a\004b\007c\033d", false)), "ab\007c\033d");
}

TEST(Tokenizer, StreamDecoderMatchesFullDecode) {
  const Tokenizer* tok = smollm();
  ASSERT_NE(tok, nullptr);
  size_t split_chars = 0;  // tokens ending inside a character: the case being exercised
  for (const FixtureCase& c : load_cases()) {
    SCOPED_TRACE("case " + c.name);
    const std::vector<TokenId> ids = tok->encode(c.text, false, c.parse_special);
    StreamDecoder sd(*tok);
    std::string streamed;
    for (const TokenId id : ids) {
      const std::string piece = sd.push(id);
      EXPECT_TRUE(unicode::is_valid_utf8(piece));
      if (!unicode::is_valid_utf8(tok->token_bytes(id))) ++split_chars;
      streamed += piece;
    }
    streamed += sd.flush();
    EXPECT_EQ(streamed, tok->decode(ids));
  }
  EXPECT_GT(split_chars, 0u) << "no fixture string splits a character across tokens";
}

TEST(Tokenizer, StreamDecoderHoldsAndFlushesPartialCharacters) {
  const Tokenizer* tok = smollm();
  ASSERT_NE(tok, nullptr);
  const std::string emoji = "\xF0\x9F\x91\xA8";  // U+1F468, four bytes
  // The token for its first byte alone: a strict prefix of the character.
  const TokenId first = tok->encode(emoji.substr(0, 1), false).at(0);
  StreamDecoder sd(*tok);
  EXPECT_EQ(sd.push(first), "");
  EXPECT_EQ(sd.flush(), kReplacementChar);  // the incomplete character becomes one U+FFFD
  EXPECT_EQ(sd.flush(), "");
  // A stray continuation byte in the middle of the stream becomes U+FFFD at once.
  StreamDecoder sd2(*tok);
  const TokenId cont = tok->encode("\x80", false).at(0);
  EXPECT_EQ(sd2.push(tok->find_token("a")) + sd2.push(cont) + sd2.push(tok->find_token("b")),
            "a" + kReplacementChar + "b");
  // Control tokens are left out when not rendering specials.
  StreamDecoder sd3(*tok, /*render_special=*/false);
  EXPECT_EQ(sd3.push(2), "");
  StreamDecoder sd4(*tok);
  EXPECT_EQ(sd4.push(2), "<|im_end|>");
}

TEST(Tokenizer, InvalidUtf8DoesNotThrowAndKeepsBytes) {
  const Tokenizer* tok = smollm();
  ASSERT_NE(tok, nullptr);
  // Truncated sequences, stray continuations, surrogates, overlongs: each byte is kept.
  for (const std::string& s :
       {std::string("abc\xE2\x82 def\x80"), std::string("\xED\xA0\x80x"),
        std::string("\xE0\x80\xAF 1\xC3"), std::string("\x80\x80\x80\x80")}) {
    std::vector<TokenId> ids;
    EXPECT_NO_THROW(ids = tok->encode(s, false));
    EXPECT_EQ(tok->decode(ids), s);
  }
  // 0xFF can never occur in UTF-8 and has no token: dropped, without error.
  EXPECT_EQ(tok->decode(tok->encode("a\377b", false)), "ab");
}

TEST(Tokenizer, SpecialTokens) {
  const Tokenizer* tok = smollm();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 49152);
  EXPECT_EQ(tok->special().bos, 1);
  EXPECT_EQ(tok->special().eos, 2);
  EXPECT_EQ(tok->special().unk, 0);
  EXPECT_EQ(tok->special().pad, 2);
  EXPECT_FALSE(tok->special().add_bos);
  EXPECT_EQ(tok->find_token("<|im_start|>"), 1);
  EXPECT_EQ(tok->find_token("no such token"), -1);
  // <|im_end|> (EOS) and <|endoftext|> end a generation; <|im_start|> and text do not.
  EXPECT_TRUE(tok->ends_generation(2));
  EXPECT_TRUE(tok->ends_generation(tok->find_token("<|endoftext|>")));
  EXPECT_FALSE(tok->ends_generation(1));
  EXPECT_FALSE(tok->ends_generation(tok->encode("Hello", false).at(0)));
  EXPECT_FALSE(tok->ends_generation(-1));
  EXPECT_TRUE(tok->is_special(2));
  EXPECT_FALSE(tok->is_special(tok->find_token("Hello")));
  EXPECT_EQ(tok->token_text(tok->find_token("\xC4\xA0"
                                            "the")),
            "\xC4\xA0"
            "the");  // "Ġthe"
  EXPECT_EQ(tok->token_bytes(tok->find_token("\xC4\xA0"
                                             "the")),
            " the");
  EXPECT_EQ(tok->encode("<|im_end|>", false, true), std::vector<TokenId>{2});
  const std::vector<TokenId> literal = tok->encode("<|im_end|>", false, false);
  EXPECT_GT(literal.size(), 1u);
  EXPECT_EQ(tok->decode(literal), "<|im_end|>");
  EXPECT_EQ(tok->decode({1, tok->find_token("hi"), 2}, /*render_special=*/false), "hi");
  EXPECT_EQ(tok->decode({1, tok->find_token("hi"), 2}), "<|im_start|>hi<|im_end|>");
  // add_bos is false for SmolLM2: add_special adds nothing.
  EXPECT_EQ(tok->encode("hi", true), tok->encode("hi", false));
  try {
    (void)tok->decode({49152});
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
}

TEST(Tokenizer, EncodesLongTextFast) {
  const Tokenizer* tok = smollm();
  ASSERT_NE(tok, nullptr);
  std::string text;
  const std::vector<FixtureCase> cases = load_cases();
  for (int rep = 0; text.size() < 400000; ++rep) {
    for (const FixtureCase& c : cases) {
      if (has_untokenizable_byte(*tok, c.text)) continue;  // keeps the round trip exact
      text += c.text;
      text += " paragraph " + std::to_string(rep) + " of generated text.\n";
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<TokenId> ids = tok->encode(text, false);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GT(ids.size(), 100000u);
  EXPECT_TRUE(tok->decode(ids) == text);  // (EXPECT_EQ would print 400 KB on failure)
  std::printf("[ info ] encoded %zu bytes into %zu tokens in %.3f s (%.2f M tokens/s)\n",
              text.size(), ids.size(), sec, static_cast<double>(ids.size()) / sec / 1e6);
#ifdef NDEBUG
  EXPECT_LT(sec, 1.0);
#else
  EXPECT_LT(sec, 10.0);  // sanitizer / debug builds
#endif
}

TEST(Tokenizer, PathologicalRunsStayFast) {
  const Tokenizer* tok = smollm();
  ASSERT_NE(tok, nullptr);
  // Single huge pre-tokens (one run each) go through the heap-based merge loop.
  for (const std::string& s : {std::string(200000, 'a'), std::string(200000, ' '),
                               std::string(100000, '='), std::string(50000, '9')}) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<TokenId> ids = tok->encode(s, false);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(tok->decode(ids), s);
    EXPECT_LT(sec, 5.0);
  }
}

// ---- small synthetic vocabularies: pre-tokenizer/model checks and merge order ----

VocabData byte_vocab() {
  // The 256 byte tokens in GPT-2's byte-level alphabet, in byte order.
  VocabData d;
  d.model = "gpt2";
  d.pre = "gpt-2";
  uint32_t extra = 0x100;  // where GPT-2 maps the non-printable bytes, in order
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable =
        (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    std::string s;
    unicode::append_utf8(s, printable ? b : extra++);
    d.tokens.push_back(s);
  }
  return d;
}

TEST(Tokenizer, MergesByRankLeftmostFirst) {
  VocabData d = byte_vocab();
  d.tokens.insert(d.tokens.end(), {"aa", "aaa", "ab", "<s>"});
  d.token_types.assign(d.tokens.size(), 1);
  d.token_types.back() = 3;  // control
  d.merges = {"a a", "aa a", "a b"};
  d.special.bos = 259;
  d.special.add_bos = true;
  const Tokenizer tok = Tokenizer::from_vocab(d);
  const TokenId a = 'a', aa = 256, aaa = 257, ab = 258;
  EXPECT_EQ(tok.encode("aaaa", false), (std::vector<TokenId>{aa, aa}));    // not aaa + a
  EXPECT_EQ(tok.encode("aaab", false), (std::vector<TokenId>{aaa, 'b'}));  // "aa a" outranks "a b"
  EXPECT_EQ(tok.encode("ab", false), (std::vector<TokenId>{ab}));
  EXPECT_EQ(tok.encode("aaa", false), (std::vector<TokenId>{aaa}));
  // Five a's: pairs merge left to right into aa aa a, then "aa a" joins the tail. Words
  // longer than 24 bytes take the heap path, which must give the same result.
  EXPECT_EQ(tok.encode("aaaaa", false), (std::vector<TokenId>{aa, aaa}));
  std::vector<TokenId> expect(29, aa);
  expect.push_back(aaa);
  EXPECT_EQ(tok.encode(std::string(61, 'a'), false), expect);
  // The GPT-2 pre-tokenizer keeps digits together; add_special prepends BOS.
  EXPECT_EQ(tok.encode("12", true), (std::vector<TokenId>{259, '1', '2'}));
  EXPECT_EQ(tok.encode("<s>a", true, true), (std::vector<TokenId>{259, 259, a}));
}

TEST(Tokenizer, RejectsUnknownModelAndPreTokenizer) {
  VocabData d = byte_vocab();
  d.model = "llama";
  try {
    (void)Tokenizer::from_vocab(d);
    ADD_FAILURE() << "expected kUnsupported";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("gpt2"), std::string::npos) << e.what();
  }
  d = byte_vocab();
  d.pre = "llama3";
  try {
    (void)Tokenizer::from_vocab(d);
    ADD_FAILURE() << "expected kUnsupported";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("llama3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("smollm"), std::string::npos) << e.what();
  }
  d = byte_vocab();
  d.token_types = {1, 1};
  EXPECT_THROW((void)Tokenizer::from_vocab(d), Error);
}

// Through GGUF metadata, as the engine loads it.
std::vector<uint8_t> tokenizer_gguf(const std::string& model, const std::string& pre) {
  testing::GgufWriter w;
  w.add_string("general.architecture", "llama");
  if (!model.empty()) w.add_string("tokenizer.ggml.model", model);
  if (!pre.empty()) w.add_string("tokenizer.ggml.pre", pre);
  std::vector<std::string> tokens = byte_vocab().tokens;
  tokens.push_back("12");  // id 256
  w.add_strings("tokenizer.ggml.tokens", tokens);
  w.add_strings("tokenizer.ggml.merges", {"1 2"});
  w.add_u32("tokenizer.ggml.eos_token_id", 10);
  return w.to_bytes();
}

ErrorCode gguf_error(const std::string& model, const std::string& pre) {
  const std::vector<uint8_t> bytes = tokenizer_gguf(model, pre);
  const GgufFile f = GgufFile::from_bytes(bytes.data(), bytes.size());
  try {
    (void)Tokenizer::from_gguf(f);
  } catch (const Error& e) {
    return e.code();
  }
  return ErrorCode::kInternal;  // "no error"
}

TEST(Tokenizer, FromGgufChecksModelAndPre) {
  EXPECT_EQ(gguf_error("llama", "smollm"), ErrorCode::kUnsupported);
  EXPECT_EQ(gguf_error("gpt2", "llama-bpe"), ErrorCode::kUnsupported);
  EXPECT_EQ(gguf_error("", "smollm"), ErrorCode::kUnsupported);  // no tokenizer at all
  const std::vector<uint8_t> bytes = tokenizer_gguf("gpt2", "smollm");
  const GgufFile f = GgufFile::from_bytes(bytes.data(), bytes.size());
  const Tokenizer tok = Tokenizer::from_gguf(f);
  EXPECT_EQ(tok.vocab_size(), 257);
  EXPECT_EQ(tok.special().eos, 10);
  EXPECT_EQ(tok.special().bos, -1);
  // "smollm" isolates every digit, so the merge "1 2" never applies (token ids = bytes).
  EXPECT_EQ(tok.encode("a 12", false), (std::vector<TokenId>{'a', ' ', '1', '2'}));
  EXPECT_EQ(tok.encode("x12", false), (std::vector<TokenId>{'x', '1', '2'}));
}

// ---- Unicode helpers ----

TEST(Unicode, Categories) {
  using namespace unicode;
  EXPECT_TRUE(is_letter('a'));
  EXPECT_TRUE(is_letter(0x4E00));  // CJK ideograph
  EXPECT_TRUE(is_letter(0x05D0));  // Hebrew alef
  EXPECT_TRUE(is_number('7'));
  EXPECT_TRUE(is_number(0x0661));  // Arabic-Indic one
  EXPECT_TRUE(is_number(0x216B));  // Roman numeral twelve (Nl)
  EXPECT_TRUE(is_number(0x00BD));  // vulgar fraction one half (No)
  EXPECT_TRUE(is_whitespace(' '));
  EXPECT_TRUE(is_whitespace('\n'));
  EXPECT_TRUE(is_whitespace(0x00A0));
  EXPECT_TRUE(is_whitespace(0x3000));
  EXPECT_FALSE(is_whitespace(0x200B));  // zero width space is Cf, not White_Space
  EXPECT_EQ(cp_flags(0x0301), kMark);
  EXPECT_EQ(cp_flags(0x1F600), kSymbol);
  EXPECT_EQ(cp_flags('!'), kPunctuation);
  EXPECT_EQ(cp_flags(0x10FFFF), kOther);
  EXPECT_EQ(cp_flags(0x110000), kOther);
  EXPECT_EQ(cp_flags(0x2028), kSeparator | kWhitespace);
  EXPECT_TRUE(is_letter(0x20000));  // CJK extension B, beyond the BMP table
}

TEST(Unicode, StrictUtf8Decoding) {
  using namespace unicode;
  const auto status = [](std::string_view s) { return decode_utf8(s, 0).status; };
  EXPECT_EQ(decode_utf8("\xE2\x82\xAC", 0).cp, 0x20ACu);
  EXPECT_EQ(decode_utf8("\xF0\x9F\x98\x80", 0).len, 4);
  EXPECT_EQ(status("\xC0\x80"), Utf8Status::kInvalid);          // overlong NUL
  EXPECT_EQ(status("\xE0\x80\xAF"), Utf8Status::kInvalid);      // overlong '/'
  EXPECT_EQ(status("\xED\xA0\x80"), Utf8Status::kInvalid);      // surrogate
  EXPECT_EQ(status("\xF4\x90\x80\x80"), Utf8Status::kInvalid);  // > U+10FFFF
  EXPECT_EQ(status("\x80"), Utf8Status::kInvalid);
  EXPECT_EQ(status("\xE2\x82"), Utf8Status::kIncomplete);
  EXPECT_EQ(status("\xE2\x82x"), Utf8Status::kInvalid);
  std::string s;
  append_utf8(s, 0x1F600);
  append_utf8(s, 0xD800);  // not a scalar value: U+FFFD
  EXPECT_EQ(s, "\xF0\x9F\x98\x80\xEF\xBF\xBD");
  EXPECT_TRUE(is_valid_utf8(s));
  EXPECT_FALSE(is_valid_utf8("a\xC3"));
}

}  // namespace
}  // namespace flashmem
