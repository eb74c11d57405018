// A model file's metadata is checked, not taken on faith: the context length has sane bounds,
// the vocabulary size agrees between <arch>.vocab_size, the token table and token_embd.weight,
// and a mis-shaped (transposed) embedding is named with both shapes. Through the library
// (read_model_info) and through the CLI (one line on stderr, exit 1), on generated files.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "gguf_writer.h"
#include "io/gguf.h"
#include "models/model.h"
#include "test_util.h"

namespace flashmem {
namespace {

using testing::GgufWriter;

constexpr uint64_t kD = 8, kVocab = 16;

struct TinyLlama {
  std::optional<uint32_t> context = 2048;
  std::optional<uint32_t> vocab_size;  // llama.vocab_size, absent by default
  uint64_t n_tokens = kVocab;          // entries of tokenizer.ggml.tokens
  std::vector<uint64_t> embd_shape = {kD, kVocab};
};

// The metadata of a 1-layer llama (d_model 8, 2 heads of 4) with just its embedding tensor:
// enough for read_model_info and `flashmem info`.
GgufWriter tiny_llama(const TinyLlama& o) {
  GgufWriter w;
  w.add_string("general.architecture", "llama").add_string("general.name", "tiny");
  w.add_u32("llama.block_count", 1).add_u32("llama.embedding_length", kD);
  w.add_u32("llama.feed_forward_length", 16).add_u32("llama.attention.head_count", 2);
  w.add_u32("llama.attention.head_count_kv", 1);
  if (o.context) w.add_u32("llama.context_length", *o.context);
  if (o.vocab_size) w.add_u32("llama.vocab_size", *o.vocab_size);
  w.add_string("tokenizer.ggml.model", "gpt2");
  std::vector<std::string> tokens;
  for (uint64_t i = 0; i < o.n_tokens; ++i) {
    std::string t = "t";  // not "t" + to_string(i): GCC 12 warns falsely (-Wrestrict) on that
    t += std::to_string(i);
    tokens.push_back(t);
  }
  w.add_strings("tokenizer.ggml.tokens", tokens);
  w.add_tensor("token_embd.weight", GgmlType::F32, o.embd_shape);
  return w;
}

ModelInfo info_of(const GgufWriter& w) {
  const std::vector<uint8_t> b = w.to_bytes();
  return read_model_info(GgufFile::from_bytes(b.data(), b.size()));
}

void expect_format_error(const GgufWriter& w, std::initializer_list<std::string> needles) {
  try {
    info_of(w);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat) << e.what();
    for (const std::string& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "\"" << e.what() << "\" lacks \"" << n << "\"";
  }
}

TEST(ModelMetadata, ASaneFileReadsAsWritten) {
  TinyLlama o;
  o.vocab_size = kVocab;
  const ModelInfo m = info_of(tiny_llama(o));
  EXPECT_EQ(m.n_vocab, static_cast<int>(kVocab));
  EXPECT_EQ(m.n_ctx_train, 2048);
  EXPECT_EQ(m.d_model, static_cast<int>(kD));
  o.context.reset();  // absent: the llama default
  EXPECT_EQ(info_of(tiny_llama(o)).n_ctx_train, 4096);
  o.context = 1u << 24;  // the largest accepted
  EXPECT_EQ(info_of(tiny_llama(o)).n_ctx_train, int64_t{1} << 24);
}

TEST(ModelMetadata, AbsurdContextLengthsAreRefused) {
  TinyLlama o;
  o.context = 0xffffffffu;
  expect_format_error(tiny_llama(o), {"llama.context_length = 4294967295", "[1, 16777216]"});
  o.context = (1u << 24) + 1;
  expect_format_error(tiny_llama(o), {"llama.context_length = 16777217"});
  o.context = 0;
  expect_format_error(tiny_llama(o), {"llama.context_length = 0"});
}

TEST(ModelMetadata, VocabularySizesMustAgree) {
  TinyLlama o;
  o.vocab_size = 10;  // smaller than the token table
  expect_format_error(tiny_llama(o), {"llama.vocab_size = 10", "16 tokens of tokenizer.ggml.tokens"});
  o.vocab_size = 17;  // larger
  expect_format_error(tiny_llama(o), {"llama.vocab_size = 17"});
  o.vocab_size.reset();
  o.n_tokens = 12;  // the token table and the embedding's rows disagree
  expect_format_error(tiny_llama(o), {"token_embd.weight", "[8, 16]", "expected [8, 12]"});
}

TEST(ModelMetadata, ATransposedEmbeddingIsNamedWithBothShapes) {
  TinyLlama o;
  o.embd_shape = {kVocab, kD};
  expect_format_error(tiny_llama(o),
                      {"tensor token_embd.weight has shape [16, 8], expected [8, 16]", "stored transposed"});
  o.embd_shape = {kD * kVocab};
  expect_format_error(tiny_llama(o), {"token_embd.weight has shape [128]", "2-D"});
}

std::string write_temp(const std::string& name, const GgufWriter& w) {
  const std::string path = (std::filesystem::temp_directory_path() / ("flashmem_meta_" + name)).string();
  w.write_file(path);
  return path;
}

// The one-line error of a refused file; exit 1 (a bad file, README "Exit codes").
void expect_cli_refuses(const std::string& args, const std::string& expect) {
  const test::CmdResult r = test::run_cli(args);
  EXPECT_EQ(r.code, 1) << args << "\n" << r.out;
  EXPECT_NE(r.out.find(expect), std::string::npos) << args << "\n" << r.out;
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "not one line: " << r.out;
}

TEST(ModelMetadata, TheCliRefusesBadFilesWithOneLineAndExitOne) {
  TinyLlama ctx;
  ctx.context = 0xffffffffu;
  TinyLlama vocab;
  vocab.vocab_size = 10;
  TinyLlama embd;
  embd.embd_shape = {kVocab, kD};
  GgufWriter wide = tiny_llama(TinyLlama{});
  // One F32 row of 2^62 elements: 2^64 bytes, which wrapped to 0 and was listed (issue #25).
  wide.add_tensor_raw("long_row", 0, {1ull << 62}, std::vector<uint8_t>(4));
  const struct {
    std::string name;
    GgufWriter w;
    std::string expect;
  } cases[] = {
      {"ctx.gguf", tiny_llama(ctx), "llama.context_length = 4294967295 is outside the plausible range"},
      {"vocab.gguf", tiny_llama(vocab), "llama.vocab_size = 10 disagrees with the 16 tokens"},
      {"embd.gguf", tiny_llama(embd), "has shape [16, 8], expected [8, 16]"},
      {"overflow.gguf", wide, "byte size of tensor 'long_row' (F32, 4611686018427387904 elements) overflows"},
  };
  for (const auto& c : cases) {
    const std::string path = write_temp(c.name, c.w);
    expect_cli_refuses("info -m " + path, c.expect);
    expect_cli_refuses("run -p hi -m " + path, c.expect);
  }
}

}  // namespace
}  // namespace flashmem
