// Tests for io/gguf: valid v2/v3 files, one test per malformation, the real default model,
// and a replay of the fuzz corpus (plus deterministic mutations) through the fuzz target.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/quant.h"
#include "gguf_writer.h"
#include "io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace flashmem {
namespace {

namespace fs = std::filesystem;
using testing::GgufLayout;
using testing::GgufWriter;
using testing::GgufWriteValue;
using VT = GgufValueType;

GgufFile parse(const std::vector<uint8_t>& b) { return GgufFile::from_bytes(b.data(), b.size()); }

// Expects `fn` to throw flashmem::Error with `code` and a message containing every needle.
void expect_error(const std::function<void()>& fn, ErrorCode code,
                  std::initializer_list<std::string> needles) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << "message: " << e.what();
    for (const std::string& n : needles) {
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message \"" << e.what() << "\" does not mention \"" << n << "\"";
    }
    return;
  }
  ADD_FAILURE() << "no flashmem::Error thrown";
}

void expect_parse_error(const std::vector<uint8_t>& b, ErrorCode code,
                        std::initializer_list<std::string> needles) {
  expect_error([&] { parse(b); }, code, needles);
}

template <typename T>
void patch(std::vector<uint8_t>& b, size_t at, T v) {
  ASSERT_LE(at + sizeof(T), b.size());
  std::memcpy(b.data() + at, &v, sizeof(T));
}

std::vector<uint8_t> pattern_bytes(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (uint8_t& x : v) x = static_cast<uint8_t>(rng());
  return v;
}

// A small valid file: two KVs and two tensors.
GgufWriter small_file(uint32_t version = 3) {
  GgufWriter w(version);
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.block_count", 2);
  w.add_tensor_f32("a.weight", {4, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  w.add_tensor("b.weight", GgmlType::Q8_0, {64, 2}, pattern_bytes(4 * 34, 1));
  return w;
}

// Metadata of every type with boundary values, and tensors of many types.
GgufWriter rich_file(uint32_t version) {
  GgufWriter w(version);
  w.add_u8("t.u8", 255).add_i8("t.i8", -128).add_u16("t.u16", 65535).add_i16("t.i16", -32768);
  w.add_u32("t.u32", 0xffffffffu).add_i32("t.i32", std::numeric_limits<int32_t>::min());
  w.add_u64("t.u64", std::numeric_limits<uint64_t>::max());
  w.add_i64("t.i64", std::numeric_limits<int64_t>::min());
  w.add_f32("t.f32", 3.14159274f).add_f64("t.f64", 2.718281828459045);
  w.add_bool("t.true", true).add_bool("t.false", false);
  w.add_string("t.str", std::string("h\xc3\xa9llo\0world", 12)).add_string("t.empty", "");
  w.add("t.arr.u8", GgufWriteValue::array_of<uint8_t>(VT::UINT8, {0, 1, 255}));
  w.add("t.arr.i16", GgufWriteValue::array_of<int16_t>(VT::INT16, {-1, 2}));
  w.add_u32s("t.arr.u32", {1, 2, 3});
  w.add_i32s("t.arr.i32", {-7, 0, 7});
  w.add("t.arr.u64", GgufWriteValue::array_of<uint64_t>(VT::UINT64, {1ull << 40}));
  w.add("t.arr.i64", GgufWriteValue::array_of<int64_t>(VT::INT64, {-(1ll << 40)}));
  w.add_f32s("t.arr.f32", {0.5f, -1.25f});
  w.add("t.arr.f64", GgufWriteValue::array_of<double>(VT::FLOAT64, {1e300}));
  w.add("t.arr.bool", GgufWriteValue::array_of<uint8_t>(VT::BOOL, {1, 0}));
  w.add_strings("t.arr.str", {"a", "", "ccc"});
  w.add("t.arr.empty", GgufWriteValue::array(VT::UINT32, {}));
  w.add("t.arr.nested",
        GgufWriteValue::array(VT::ARRAY, {GgufWriteValue::array_of<uint32_t>(VT::UINT32, {1, 2}),
                                          GgufWriteValue::strings({"x"})}));
  w.add_tensor_f32("f32", {3, 2}, {1, 2, 3, 4, 5, 6});
  w.add_tensor_f16("f16", {8}, {1, -2, 0.5f, 0, 65504, -0.25f, 3, 4});
  w.add_tensor("bf16", GgmlType::BF16, {16}, pattern_bytes(32, 2));
  w.add_tensor("q8_0", GgmlType::Q8_0, {32, 3}, pattern_bytes(3 * 34, 3));
  w.add_tensor("q4_0", GgmlType::Q4_0, {64}, pattern_bytes(2 * 18, 4));
  w.add_tensor("q4_1", GgmlType::Q4_1, {32, 1, 2}, pattern_bytes(2 * 20, 5));
  w.add_tensor("q4_k", GgmlType::Q4_K, {256, 2}, pattern_bytes(2 * 144, 6));
  w.add_tensor("q6_k", GgmlType::Q6_K, {256, 1, 1, 2}, pattern_bytes(2 * 210, 7));
  w.add_tensor("q5_k", GgmlType::Q5_K, {256}, pattern_bytes(176, 8));  // parses, no dequant
  return w;
}

// ---- valid files -----------------------------------------------------------------------------

class GgufVersions : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufVersions, RoundTripsAllMetadataTypes) {
  const GgufWriter w = rich_file(GetParam());
  const GgufFile f = parse(w.to_bytes());
  EXPECT_EQ(f.version(), GetParam());
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.path(), "");
  ASSERT_EQ(f.keys().size(), w.n_kv());
  EXPECT_EQ(f.keys().front(), "t.u8");  // file order
  EXPECT_EQ(f.keys().back(), "t.arr.nested");

  EXPECT_EQ(f.get("t.u8").type, VT::UINT8);
  EXPECT_EQ(f.get_u32("t.u8"), 255u);
  EXPECT_EQ(f.get_i64("t.i8"), -128);
  EXPECT_EQ(f.get_u32("t.u16"), 65535u);
  EXPECT_EQ(f.get_i64("t.i16"), -32768);
  EXPECT_EQ(f.get_u32("t.u32"), 0xffffffffu);
  EXPECT_EQ(f.get_i64("t.i32"), std::numeric_limits<int32_t>::min());
  EXPECT_EQ(f.get_u64("t.u64"), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(f.get_i64("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f.get_f32("t.f32"), 3.14159274f);
  EXPECT_EQ(f.get("t.f64").as_f64("t.f64"), 2.718281828459045);
  EXPECT_EQ(f.get("t.f64").type, VT::FLOAT64);
  EXPECT_TRUE(f.get_bool("t.true"));
  EXPECT_FALSE(f.get_bool("t.false"));
  EXPECT_EQ(f.get_string("t.str"), std::string("h\xc3\xa9llo\0world", 12));
  EXPECT_EQ(f.get_string("t.empty"), "");
  EXPECT_EQ(f.get_f32("t.u32"), 4294967296.0f);  // integers widen to floats on request

  EXPECT_EQ(f.get_array("t.arr.u8").ints("t.arr.u8"), (std::vector<int64_t>{0, 1, 255}));
  EXPECT_EQ(f.get_array("t.arr.i16").ints("t.arr.i16"), (std::vector<int64_t>{-1, 2}));
  EXPECT_EQ(f.get_array("t.arr.u32").ints("t.arr.u32"), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(f.get_array("t.arr.i32").ints("t.arr.i32"), (std::vector<int64_t>{-7, 0, 7}));
  EXPECT_EQ(f.get_array("t.arr.u64").items.at(0).as_u64("x"), 1ull << 40);
  EXPECT_EQ(f.get_array("t.arr.i64").items.at(0).as_i64("x"), -(1ll << 40));
  EXPECT_EQ(f.get_array("t.arr.f32").floats("t.arr.f32"), (std::vector<double>{0.5, -1.25}));
  EXPECT_EQ(f.get_array("t.arr.f64").floats("t.arr.f64"), (std::vector<double>{1e300}));
  const GgufArray& bools = f.get_array("t.arr.bool");
  EXPECT_EQ(bools.elem_type, VT::BOOL);
  ASSERT_EQ(bools.items.size(), 2u);
  EXPECT_TRUE(bools.items[0].as_bool("b"));
  EXPECT_FALSE(bools.items[1].as_bool("b"));
  EXPECT_EQ(f.get_array("t.arr.str").strings("t.arr.str"),
            (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_TRUE(f.get_array("t.arr.empty").items.empty());
  EXPECT_EQ(f.get_array("t.arr.empty").elem_type, VT::UINT32);
  const GgufArray& nested = f.get_array("t.arr.nested");
  EXPECT_EQ(nested.elem_type, VT::ARRAY);
  ASSERT_EQ(nested.items.size(), 2u);
  EXPECT_EQ(nested.items[0].as_array("n").ints("n"), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(nested.items[1].as_array("n").strings("n"), (std::vector<std::string>{"x"}));

  EXPECT_EQ(f.get_u32_or("absent", 7), 7u);
  EXPECT_EQ(f.get_f32_or("absent", 1.5f), 1.5f);
  EXPECT_TRUE(f.get_bool_or("absent", true));
  EXPECT_EQ(f.get_string_or("absent", "dflt"), "dflt");
  EXPECT_EQ(f.get_string_or("t.str", "dflt").size(), 12u);
  EXPECT_EQ(f.find("absent"), nullptr);
  EXPECT_FALSE(f.has("absent"));
}

TEST_P(GgufVersions, TensorInfosAndData) {
  GgufWriter w = rich_file(GetParam());
  GgufLayout lay;
  const std::vector<uint8_t> bytes = w.to_bytes(&lay);
  const GgufFile f = parse(bytes);
  ASSERT_EQ(f.tensors().size(), w.n_tensors());
  EXPECT_EQ(f.file_size(), bytes.size());
  const uint8_t* base = f.tensors().front().data - lay.tensor_offsets.front();
  for (size_t i = 0; i < w.n_tensors(); ++i) {
    const testing::GgufWriteTensor& want = w.tensor(i);
    const GgufTensor& t = f.tensors()[i];
    SCOPED_TRACE(want.name);
    EXPECT_EQ(t.name, want.name);
    EXPECT_EQ(static_cast<uint32_t>(t.type), want.type_id);
    EXPECT_EQ(t.ne, want.ne);
    uint64_t n = 1;
    for (uint64_t d : want.ne) n *= d;
    EXPECT_EQ(t.n_elements, n);
    EXPECT_EQ(t.rows(), n / want.ne[0]);
    EXPECT_EQ(t.row_bytes(), ggml_row_bytes(t.type, want.ne[0]));
    EXPECT_EQ(t.n_bytes, want.data.size());
    EXPECT_EQ(t.offset, lay.tensor_offsets[i]);
    EXPECT_EQ(t.offset % 32, 0u);
    EXPECT_EQ(t.data, base + t.offset);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 32, 0u);  // owned buffer is page-aligned
    EXPECT_EQ(std::memcmp(t.data, want.data.data(), want.data.size()), 0);
    EXPECT_EQ(&f.tensor(want.name), &t);
  }
  // The F32 tensor's values come back as written.
  const GgufTensor& f32 = f.tensor("f32");
  std::vector<float> row(3);
  dequantize_row(f32.type, f32.data + f32.row_bytes(), row.data(), 3);
  EXPECT_EQ(row, (std::vector<float>{4, 5, 6}));
  const GgufTensor& f16 = f.tensor("f16");
  std::vector<float> h(8);
  dequantize_row(f16.type, f16.data, h.data(), 8);
  EXPECT_EQ(h, (std::vector<float>{1, -2, 0.5f, 0, 65504, -0.25f, 3, 4}));
}

INSTANTIATE_TEST_SUITE_P(V2AndV3, GgufVersions, ::testing::Values(2u, 3u));

TEST(Gguf, CustomAlignment) {
  for (uint32_t a : {1u, 8u, 64u, 256u, 4096u}) {
    SCOPED_TRACE(a);
    GgufWriter w = small_file();
    w.set_alignment(a);
    w.add_tensor("c.weight", GgmlType::Q4_0, {32}, pattern_bytes(18, 9));  // odd size
    w.add_tensor_f32("d.weight", {1}, {42.0f});
    GgufLayout lay;
    const std::vector<uint8_t> bytes = w.to_bytes(&lay);
    const GgufFile f = parse(bytes);
    EXPECT_EQ(f.alignment(), a);
    EXPECT_EQ(f.get_u32("general.alignment"), a);
    EXPECT_EQ(lay.data_start % a, 0u);
    for (const GgufTensor& t : f.tensors()) {
      EXPECT_EQ(t.offset % a, 0u) << t.name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % std::min<uint32_t>(a, 4096), 0u) << t.name;
    }
    float v = 0;
    std::memcpy(&v, f.tensor("d.weight").data, 4);
    EXPECT_EQ(v, 42.0f);
  }
}

TEST(Gguf, AlignmentAsAnotherUnsignedTypeIsAccepted) {
  GgufWriter w = small_file();
  w.add_u64("general.alignment", 64);
  w.layout_alignment = 64;
  EXPECT_EQ(parse(w.to_bytes()).alignment(), 64u);
}

TEST(Gguf, OverlappingTensorsAreAllowed) {
  GgufWriter w = small_file();
  w.add_tensor_f32("alias", {4}, {}).offset = 0;  // shares the bytes of a.weight
  w.tensor(2).data.clear();
  const GgufFile f = parse(w.to_bytes());
  EXPECT_EQ(f.tensor("alias").data, f.tensor("a.weight").data);
}

TEST(Gguf, MetadataOnlyFile) {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  const std::vector<uint8_t> bytes = w.to_bytes();  // no padding, no data section
  const GgufFile f = parse(bytes);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.find_tensor("x"), nullptr);

  const GgufFile empty = parse(GgufWriter().to_bytes());  // just the 24-byte header
  EXPECT_TRUE(empty.keys().empty());
}

std::string temp_path(const std::string& stem) {
  return (fs::temp_directory_path() / (stem + "-" + std::to_string(::getpid()) + ".gguf")).string();
}

TEST(Gguf, OpensAndMapsAFile) {
  const std::string path = temp_path("flashmem-test-open");
  const GgufWriter w = rich_file(3);
  w.write_file(path);
  {
    GgufFile f = GgufFile::open(path);
    EXPECT_EQ(f.path(), path);
    EXPECT_EQ(f.file_size(), fs::file_size(path));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(f.tensors().front().data) % 32, 0u);
    const uint8_t* q4k = f.tensor("q4_k").data;
    GgufFile moved = std::move(f);  // the mapping moves with the object
    EXPECT_EQ(moved.tensor("q4_k").data, q4k);
    EXPECT_EQ(std::memcmp(q4k, w.tensor(6).data.data(), 288), 0);
    EXPECT_EQ(moved.get_u64("t.u64"), std::numeric_limits<uint64_t>::max());
  }
  fs::remove(path);
}

// ---- malformed files: one test per problem --------------------------------------------------

TEST(GgufMalformed, BadMagic) {
  std::vector<uint8_t> b = small_file().to_bytes();
  b[0] = 'X';
  expect_parse_error(b, ErrorCode::kFormat, {"bad magic", "offset 0"});
}

TEST(GgufMalformed, EmptyImage) {
  expect_error([] { GgufFile::from_bytes(nullptr, 0); }, ErrorCode::kFormat,
               {"truncated", "magic"});
}

TEST(GgufMalformed, TruncatedHeader) {
  std::vector<uint8_t> b = small_file().to_bytes();
  b.resize(10);
  expect_parse_error(b, ErrorCode::kFormat, {"truncated", "tensor count", "offset 8"});
}

TEST(GgufMalformed, Version1IsUnsupported) {
  GgufWriter w = small_file();
  w.version = 1;
  expect_parse_error(w.to_bytes(), ErrorCode::kUnsupported, {"version 1"});
}

TEST(GgufMalformed, UnknownVersions) {
  for (uint32_t v : {0u, 4u, 1000u}) {
    GgufWriter w = small_file();
    w.version = v;
    expect_parse_error(w.to_bytes(), ErrorCode::kUnsupported, {"version " + std::to_string(v)});
  }
}

TEST(GgufMalformed, BigEndian) {
  GgufWriter w = small_file();
  w.version = 0x03000000;  // v3 written big-endian
  expect_parse_error(w.to_bytes(), ErrorCode::kUnsupported, {"big-endian"});
}

TEST(GgufMalformed, AbsurdKvCount) {
  GgufWriter w = small_file();
  w.n_kv_override = 1ull << 60;
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"n_kv", "1152921504606846976"});
}

TEST(GgufMalformed, AbsurdTensorCount) {
  GgufWriter w = small_file();
  w.n_tensors_override = std::numeric_limits<uint64_t>::max();
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"n_tensors"});
}

TEST(GgufMalformed, KvCountLargerThanPresent) {
  GgufWriter w;
  w.add_string("general.architecture", "llama").add_u32("llama.block_count", 2);
  w.n_kv_override = 3;  // plausible for the size, but only 2 are there
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"truncated", "metadata entry 2"});
}

TEST(GgufMalformed, KeyLengthPastEnd) {
  GgufLayout lay;
  std::vector<uint8_t> b = small_file().to_bytes(&lay);
  patch<uint64_t>(b, lay.kv_offsets[1], 1ull << 62);
  expect_parse_error(b, ErrorCode::kFormat,
                     {"string length 4611686018427387904", "metadata entry 1", "exceeds"});
}

TEST(GgufMalformed, StringValueLengthPastEnd) {
  GgufWriter w = small_file();
  std::vector<uint8_t> payload;
  testing::gguf_put<uint64_t>(payload, 1000000);
  payload.push_back('x');
  w.add("general.name", GgufWriteValue::raw(8, payload));
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"string length 1000000", "'general.name'"});
}

TEST(GgufMalformed, TruncatedAtEveryByte) {
  GgufLayout lay;
  const std::vector<uint8_t> full = rich_file(3).to_bytes(&lay);
  // Every prefix that ends before the last tensor byte must be rejected (a prefix that only
  // drops trailing padding is still a valid file).
  size_t data_end = 0;
  const GgufFile f = parse(full);
  for (const GgufTensor& t : f.tensors()) {
    data_end = std::max<size_t>(data_end, lay.data_start + t.offset + t.n_bytes);
  }
  for (size_t len = 0; len < data_end; ++len) {
    const std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len));
    try {
      parse(cut);
      ADD_FAILURE() << "prefix of " << len << " bytes parsed";
    } catch (const Error& e) {
      ASSERT_EQ(e.code(), ErrorCode::kFormat) << len << ": " << e.what();
      const std::string m = e.what();
      ASSERT_TRUE(
          m.find("truncated") != std::string::npos || m.find("exceeds") != std::string::npos ||
          m.find("past the end") != std::string::npos ||
          m.find("impossible") != std::string::npos || m.find("larger than") != std::string::npos)
          << len << ": " << m;
    }
  }
}

TEST(GgufMalformed, TruncatedTensorInfoNamesTheTensor) {
  GgufLayout lay;
  std::vector<uint8_t> b = small_file().to_bytes(&lay);
  // Cut after b.weight's name (8 + 8 bytes) and n_dims (4): ne[0] is missing.
  b.resize(lay.tensor_info_offsets[1] + 8 + 8 + 4 + 3);
  expect_parse_error(b, ErrorCode::kFormat, {"truncated", "ne[0]", "'b.weight'"});
}

TEST(GgufMalformed, UnknownValueType) {
  GgufWriter w = small_file();
  w.add("weird.key", GgufWriteValue::raw(13, {0, 0, 0, 0}));
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"unknown value type 13", "'weird.key'"});
}

TEST(GgufMalformed, HostileNamesAreEscapedInMessages) {
  GgufWriter w = small_file();
  w.add(std::string("bad\nkey\x01") + std::string(500, 'k'), GgufWriteValue::raw(13, {}));
  try {
    parse(w.to_bytes());
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'bad\\x0akey\\x01kkk"), std::string::npos) << m;
    EXPECT_NE(m.find("(cut, 508 bytes)"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_LT(m.size(), 300u) << m;
  }
}

TEST(GgufMalformed, DuplicateKey) {
  GgufWriter w = small_file();
  w.add_u32("llama.block_count", 3);
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat,
                     {"duplicate metadata key", "'llama.block_count'"});
}

TEST(GgufMalformed, ArrayCountPastEnd) {
  GgufWriter w = small_file();
  std::vector<uint8_t> payload;
  testing::gguf_put<uint32_t>(payload, static_cast<uint32_t>(VT::UINT32));
  testing::gguf_put<uint64_t>(payload, 1ull << 40);
  w.add("tokenizer.ggml.scores", GgufWriteValue::raw(9, payload));
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat,
                     {"array count 1099511627776", "'tokenizer.ggml.scores'"});
}

TEST(GgufMalformed, StringArrayCountPastEnd) {
  // 8 bytes per (empty) string at least: a count that fits the bytes as UINT8s does not.
  GgufWriter w;
  std::vector<uint8_t> payload;
  testing::gguf_put<uint32_t>(payload, static_cast<uint32_t>(VT::STRING));
  testing::gguf_put<uint64_t>(payload, 100);
  payload.resize(payload.size() + 100, 0);
  w.add("tokenizer.ggml.tokens", GgufWriteValue::raw(9, payload));
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"array count 100", "STRING"});
}

TEST(GgufMalformed, UnknownArrayElementType) {
  GgufWriter w = small_file();
  std::vector<uint8_t> payload;
  testing::gguf_put<uint32_t>(payload, 42);
  testing::gguf_put<uint64_t>(payload, 0);
  w.add("arr", GgufWriteValue::raw(9, payload));
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"unknown array element type 42", "'arr'"});
}

TEST(GgufMalformed, ArraysNestedTooDeep) {
  GgufWriteValue v = GgufWriteValue::array(VT::UINT8, {});
  for (int i = 0; i < 20; ++i) v = GgufWriteValue::array(VT::ARRAY, {v});
  GgufWriter w = small_file();
  w.add("deep", v);
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"nested", "'deep'"});
}

TEST(GgufMalformed, BoolOtherThanZeroOrOne) {
  GgufWriter w = small_file();
  w.add("flag", GgufWriteValue::raw(7, {2}));
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"bool", "'flag'", "is 2"});
}

TEST(GgufMalformed, AlignmentNotAPowerOfTwo) {
  for (uint32_t a : {0u, 3u, 48u}) {
    GgufWriter w = small_file();
    w.add_u32("general.alignment", a);
    expect_parse_error(w.to_bytes(), ErrorCode::kFormat,
                       {"general.alignment = " + std::to_string(a), "power of two"});
  }
}

TEST(GgufMalformed, AlignmentOfWrongType) {
  GgufWriter w = small_file();
  w.add_string("general.alignment", "32");
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"general.alignment", "STRING"});
  GgufWriter w2 = small_file();
  w2.add_i32("general.alignment", -32);
  expect_parse_error(w2.to_bytes(), ErrorCode::kFormat, {"general.alignment", "-32"});
}

TEST(GgufMalformed, DuplicateTensorName) {
  GgufWriter w = small_file();
  w.add_tensor_f32("a.weight", {1}, {1.0f});
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"duplicate tensor name", "'a.weight'"});
}

TEST(GgufMalformed, NDimsOutOfRange) {
  GgufWriter w0 = small_file();
  w0.add_tensor_f32("scalar", {}, {});
  expect_parse_error(w0.to_bytes(), ErrorCode::kFormat, {"'scalar'", "n_dims = 0"});
  GgufWriter w5 = small_file();
  w5.add_tensor_f32("five", {1, 1, 1, 1, 1}, {1.0f});
  expect_parse_error(w5.to_bytes(), ErrorCode::kFormat, {"'five'", "n_dims = 5"});
}

TEST(GgufMalformed, ZeroDimension) {
  GgufWriter w = small_file();
  w.add_tensor_f32("empty", {4, 0}, {});
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"'empty'", "ne[1] = 0"});
}

TEST(GgufMalformed, UnknownTensorType) {
  GgufWriter w = small_file();
  w.add_tensor_raw("mystery", 99, {32}, std::vector<uint8_t>(32));
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"unknown tensor type id 99", "'mystery'"});
}

TEST(GgufMalformed, GgmlTypeFlashmemDoesNotKnow) {
  GgufWriter w = small_file();
  w.add_tensor_raw("iq", 16, {256}, std::vector<uint8_t>(66));
  expect_parse_error(w.to_bytes(), ErrorCode::kUnsupported, {"IQ2_XXS", "'iq'"});
}

TEST(GgufMalformed, RowNotAMultipleOfTheBlockSize) {
  GgufWriter w = small_file();
  w.add_tensor_raw("odd", static_cast<uint32_t>(GgmlType::Q4_0), {33, 2}, std::vector<uint8_t>(64));
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"'odd'", "ne[0] = 33", "block size 32"});
}

TEST(GgufMalformed, ElementCountOverflow) {
  GgufWriter w = small_file();
  w.add_tensor_raw("huge", 0, {1ull << 32, 1ull << 32}, std::vector<uint8_t>(4));
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"'huge'", "element count", "overflows"});
  GgufWriter w2 = small_file();
  w2.add_tensor_raw("neg", 0, {1ull << 63}, std::vector<uint8_t>(4));  // > INT64_MAX
  expect_parse_error(w2.to_bytes(), ErrorCode::kFormat, {"'neg'", "ne[0]"});
}

TEST(GgufMalformed, ByteSizeOverflow) {
  GgufWriter w = small_file();
  // 2^62 elements fit int64, but 2^62 × 4 bytes does not fit 64 bits.
  w.add_tensor_raw("wide", 0, {1ull << 31, 1ull << 31}, std::vector<uint8_t>(4));
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"'wide'", "byte size", "overflows"});
}

TEST(GgufMalformed, RowByteSizeOverflow) {
  // One F32 row of 2^62 elements: the element count fits int64, but its 2^64 bytes wrapped to
  // a byte size of 0 and the tensor was accepted (issue #25).
  GgufWriter w = small_file();
  w.add_tensor_raw("long_row", 0, {1ull << 62}, std::vector<uint8_t>(4));
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat,
                     {"byte size of tensor 'long_row' (F32, 4611686018427387904 elements) overflows"});
  // A block type's rows are smaller than their element count: 2^62 Q8_0 elements are 2^57
  // blocks of 34 bytes, no overflow, and the file is refused for being too short instead.
  GgufWriter w2 = small_file();
  w2.add_tensor_raw("long_q8", static_cast<uint32_t>(GgmlType::Q8_0), {1ull << 62},
                    std::vector<uint8_t>(34));
  expect_parse_error(w2.to_bytes(), ErrorCode::kFormat, {"'long_q8'", "4899916394579099648 bytes", "past the end"});
}

TEST(GgufMalformed, UnalignedOffset) {
  GgufWriter w = small_file();
  w.tensor(1).offset = 48;
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat,
                     {"'b.weight'", "offset 48", "aligned to 32"});
}

TEST(GgufMalformed, TensorDataPastEnd) {
  GgufWriter w = small_file();
  w.tensor(1).offset = 1u << 20;
  expect_parse_error(w.to_bytes(), ErrorCode::kFormat, {"'b.weight'", "past the end"});
  GgufWriter w2 = small_file();
  w2.tensor(1).offset = std::numeric_limits<uint64_t>::max() - 31;  // offset + size overflows
  expect_parse_error(w2.to_bytes(), ErrorCode::kFormat, {"'b.weight'", "past the end"});
}

TEST(GgufMalformed, DataSectionPastEnd) {
  GgufWriter w = small_file();
  w.set_alignment(4096);
  GgufLayout lay;
  std::vector<uint8_t> b = w.to_bytes(&lay);
  b.resize(lay.header_end + 1);
  expect_parse_error(b, ErrorCode::kFormat, {"data section", "4096"});
}

TEST(GgufMalformed, MissingFileAndDirectory) {
  expect_error([] { GgufFile::open("/nonexistent/dir/model.gguf"); }, ErrorCode::kIo,
               {"/nonexistent/dir/model.gguf", "No such file"});
  expect_error([] { GgufFile::open(fs::temp_directory_path().string()); }, ErrorCode::kIo,
               {"not a regular file"});
}

TEST(GgufMalformed, EmptyFileOnDisk) {
  const std::string path = temp_path("flashmem-test-empty");
  std::ofstream(path).close();
  expect_error([&] { GgufFile::open(path); }, ErrorCode::kFormat, {"truncated", path});
  fs::remove(path);
}

// ---- accessors ---------------------------------------------------------------------------

TEST(GgufAccessors, TypeAndRangeErrors) {
  GgufWriter w = small_file();
  w.add_u64("big", 1ull << 40).add_i32("neg", -5).add_u64("huge", ~0ull);
  w.add_i32s("ints", {1, 2}).add_strings("strs", {"a"}).add_f32("flt", 1.5f);
  const GgufFile f = parse(w.to_bytes());
  expect_error([&] { f.get("nope"); }, ErrorCode::kFormat, {"missing metadata key", "'nope'"});
  expect_error([&] { f.get_u32("general.architecture"); }, ErrorCode::kFormat,
               {"'general.architecture'", "STRING", "integer"});
  expect_error([&] { f.get_u32("big"); }, ErrorCode::kFormat, {"'big'", "does not fit"});
  expect_error([&] { f.get_u64("neg"); }, ErrorCode::kFormat, {"'neg'", "-5"});
  expect_error([&] { f.get_i64("huge"); }, ErrorCode::kFormat, {"'huge'", "does not fit"});
  expect_error([&] { f.get_u32("flt"); }, ErrorCode::kFormat, {"'flt'", "FLOAT32"});
  expect_error([&] { f.get_string("llama.block_count"); }, ErrorCode::kFormat,
               {"'llama.block_count'", "UINT32"});
  expect_error([&] { f.get_bool("llama.block_count"); }, ErrorCode::kFormat, {"BOOL"});
  expect_error([&] { f.get_array("flt"); }, ErrorCode::kFormat, {"ARRAY"});
  expect_error([&] { f.get_f32("strs"); }, ErrorCode::kFormat, {"'strs'", "ARRAY"});
  expect_error([&] { f.get_array("ints").strings("ints"); }, ErrorCode::kFormat, {"'ints[0]'"});
  expect_error([&] { f.get_array("strs").ints("strs"); }, ErrorCode::kFormat, {"'strs[0]'"});
  expect_error([&] { f.get_array("strs").floats("strs"); }, ErrorCode::kFormat, {"'strs[0]'"});
  expect_error([&] { f.get_u32_or("general.architecture", 1); }, ErrorCode::kFormat, {"STRING"});
  expect_error([&] { f.tensor("nope.weight"); }, ErrorCode::kFormat,
               {"missing tensor", "'nope.weight'"});
  EXPECT_EQ(f.get_f32("neg"), -5.0f);
  EXPECT_EQ(f.get_i64("big"), 1ll << 40);
}

// ---- the real default model ---------------------------------------------------------------

std::string model_path() {
  if (const char* env = std::getenv("FLASHMEM_MODEL"); env != nullptr && *env != '\0') return env;
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "") +
         "/.cache/flashmem/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::vector<float> floats_from_hex(const std::string& hex) {
  std::vector<float> out(hex.size() / 8);
  for (size_t i = 0; i < out.size(); ++i) {
    uint8_t b[4];
    for (int k = 0; k < 4; ++k) {
      b[k] = static_cast<uint8_t>(std::stoul(hex.substr(8 * i + 2 * k, 2), nullptr, 16));
    }
    std::memcpy(&out[i], b, 4);
  }
  return out;
}

TEST(GgufModel, SmolLM2ParsesAndDequantisesLikeGgufPy) {
  const std::string path = model_path();
  ASSERT_TRUE(fs::exists(path)) << "default model not found at " << path
                                << "; run scripts/fetch-model.sh (or set FLASHMEM_MODEL)";
  const GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.tensors().size(), 272u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_u32("llama.block_count"), 30u);
  EXPECT_EQ(f.get_u32("llama.embedding_length"), 576u);
  EXPECT_EQ(f.keys().front(), "general.architecture");
  const GgufTensor& emb = f.tensor("token_embd.weight");
  EXPECT_EQ(emb.type, GgmlType::Q8_0);
  EXPECT_EQ(emb.ne, (std::vector<uint64_t>{576, 49152}));
  EXPECT_EQ(emb.n_bytes, 49152u * 18u * 34u);
  EXPECT_EQ(f.get_array("tokenizer.ggml.tokens").strings("tokenizer.ggml.tokens").size(), 49152u);
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight").type, GgmlType::Q4_1);

  // Rows dequantised by gguf-py when the fixture was generated.
  const std::string fixture = std::string(FLASHMEM_FIXTURES_DIR) + "/quant_blocks.json";
  std::ifstream in(fixture);
  ASSERT_TRUE(in) << "missing " << fixture;
  const nlohmann::json j = nlohmann::json::parse(in);
  const auto& rows = j.at("model").at("rows");
  ASSERT_GE(rows.size(), 3u);
  bool saw_q4_1 = false;
  for (const auto& r : rows) {
    const GgufTensor& t = f.tensor(r.at("tensor").get<std::string>());
    const auto row = r.at("row").get<uint64_t>();
    SCOPED_TRACE(t.name + " row " + std::to_string(row));
    ASSERT_EQ(ggml_type_name(t.type), r.at("type").get<std::string>());
    ASSERT_LT(row, t.rows());
    const std::vector<float> want = floats_from_hex(r.at("expected_f32").get<std::string>());
    ASSERT_EQ(want.size(), t.ne[0]);
    std::vector<float> ref(t.ne[0]), fast(t.ne[0]);
    dequantize_row_ref(t.type, t.data + row * t.row_bytes(), ref.data(), t.ne[0]);
    dequantize_row(t.type, t.data + row * t.row_bytes(), fast.data(), t.ne[0]);
    ASSERT_EQ(std::memcmp(ref.data(), want.data(), want.size() * 4), 0);
    ASSERT_EQ(std::memcmp(fast.data(), want.data(), want.size() * 4), 0);
    saw_q4_1 = saw_q4_1 || t.type == GgmlType::Q4_1;
  }
  EXPECT_TRUE(saw_q4_1);
}

// ---- fuzz corpus replay -------------------------------------------------------------------

std::vector<uint8_t> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
}

std::vector<fs::path> corpus_files() {
  std::vector<fs::path> out;
  const fs::path dir = fs::path(FLASHMEM_SOURCE_DIR) / "fuzz" / "corpus";
  if (fs::is_directory(dir)) {
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.is_regular_file()) out.push_back(e.path());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(GgufFuzz, CorpusReplay) {
  const std::vector<fs::path> files = corpus_files();
  ASSERT_GE(files.size(), 10u) << "fuzz/corpus is missing or nearly empty";
  for (const fs::path& p : files) {
    const std::vector<uint8_t> b = read_file(p);
    EXPECT_NO_THROW(LLVMFuzzerTestOneInput(b.data(), b.size())) << p;
  }
}

TEST(GgufFuzz, DeterministicMutationsOfValidSeeds) {
  std::vector<std::vector<uint8_t>> seeds = {small_file(2).to_bytes(), rich_file(3).to_bytes()};
  for (const fs::path& p : corpus_files()) {
    std::vector<uint8_t> b = read_file(p);
    try {
      parse(b);
      seeds.push_back(std::move(b));
    } catch (const Error&) {
    }
  }
  ASSERT_GE(seeds.size(), 4u);
  std::mt19937_64 rng(0x5eed);
  const uint64_t interesting[] = {0,          1,     0x7f, 0x80, 0xff, 0xffff, 0xffffffffull,
                                  1ull << 63, ~0ull, 31,   32,   256};
  size_t n_runs = 0;
  for (const std::vector<uint8_t>& seed : seeds) {
    for (int i = 0; i < 300; ++i, ++n_runs) {
      std::vector<uint8_t> m = seed;
      switch (rng() % 4) {
        case 0:  // flip a few bits
          for (int k = 0, n = 1 + static_cast<int>(rng() % 8); k < n; ++k) {
            m[rng() % m.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
          }
          break;
        case 1:  // truncate
          m.resize(rng() % m.size());
          break;
        case 2: {  // overwrite an aligned 8-byte word with an interesting value
          if (m.size() < 8) break;
          const size_t at = (rng() % (m.size() / 8)) * 8;
          const uint64_t v = interesting[rng() % std::size(interesting)];
          std::memcpy(m.data() + at, &v, 8);
          break;
        }
        default: {  // overwrite an unaligned 4-byte word in the header part
          const size_t limit = std::min<size_t>(m.size(), 512);
          if (limit < 4) break;
          const size_t at = rng() % (limit - 3);
          const auto v = static_cast<uint32_t>(interesting[rng() % std::size(interesting)]);
          std::memcpy(m.data() + at, &v, 4);
          break;
        }
      }
      ASSERT_NO_THROW(LLVMFuzzerTestOneInput(m.data(), m.size())) << "seed mutation " << n_runs;
    }
  }
  EXPECT_GE(n_runs, 1200u);
}

// Regenerates the seed part of fuzz/corpus. Run on purpose only:
//   flashmem_tests --gtest_also_run_disabled_tests --gtest_filter='*WriteFuzzSeedCorpus*'
TEST(GgufFuzz, DISABLED_WriteFuzzSeedCorpus) {
  const fs::path dir = fs::path(FLASHMEM_SOURCE_DIR) / "fuzz" / "corpus";
  fs::create_directories(dir);
  const auto put = [&](const std::string& name, const std::vector<uint8_t>& b) {
    GgufWriter::write_bytes((dir / name).string(), b);
  };
  put("seed-small-v2.gguf", small_file(2).to_bytes());
  put("seed-small-v3.gguf", small_file(3).to_bytes());
  put("seed-rich-v3.gguf", rich_file(3).to_bytes());
  put("seed-rich-v2.gguf", rich_file(2).to_bytes());
  GgufWriter aligned = small_file();
  aligned.set_alignment(64);
  aligned.add_tensor("q4_k", GgmlType::Q4_K, {256}, pattern_bytes(144, 11));
  aligned.add_tensor("q6_k", GgmlType::Q6_K, {256}, pattern_bytes(210, 12));
  put("seed-align64.gguf", aligned.to_bytes());
  GgufWriter meta;
  meta.add_string("general.architecture", "llama")
      .add_strings("tokenizer.ggml.tokens", {"<s>", "a"});
  put("seed-metadata-only.gguf", meta.to_bytes());

  // Malformed seeds: each reaches a different check.
  std::vector<uint8_t> b = small_file().to_bytes();
  b[0] = 'G' + 1;
  put("bad-magic.gguf", b);
  GgufWriter v1 = small_file();
  v1.version = 1;
  put("bad-version1.gguf", v1.to_bytes());
  b = small_file().to_bytes();
  b.resize(b.size() / 2);
  put("bad-truncated.gguf", b);
  GgufWriter kv = small_file();
  kv.n_kv_override = 1ull << 60;
  put("bad-nkv.gguf", kv.to_bytes());
  GgufWriter arr = small_file();
  std::vector<uint8_t> payload;
  testing::gguf_put<uint32_t>(payload, static_cast<uint32_t>(VT::STRING));
  testing::gguf_put<uint64_t>(payload, 1ull << 40);
  arr.add("tokenizer.ggml.tokens", GgufWriteValue::raw(9, payload));
  put("bad-array-count.gguf", arr.to_bytes());
  GgufWriter type = small_file();
  type.add_tensor_raw("x", 99, {32}, std::vector<uint8_t>(32));
  put("bad-tensor-type.gguf", type.to_bytes());
  GgufWriter off = small_file();
  off.tensor(1).offset = 1u << 20;
  put("bad-offset.gguf", off.to_bytes());
  GgufWriter ovf = small_file();
  ovf.add_tensor_raw("wide", 0, {1ull << 31, 1ull << 31}, std::vector<uint8_t>(4));
  put("bad-overflow.gguf", ovf.to_bytes());
  GgufWriteValue deep = GgufWriteValue::array(VT::UINT8, {});
  for (int i = 0; i < 12; ++i) deep = GgufWriteValue::array(VT::ARRAY, {deep});
  GgufWriter nest;
  nest.add("deep", deep);
  put("bad-nesting.gguf", nest.to_bytes());
}

}  // namespace
}  // namespace flashmem
