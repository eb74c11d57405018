// Tests for core/quant: type traits, the reference dequantisers against hand-derived blocks
// and against gguf-py (fixture), and the fast path against the reference, bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/quant.h"

namespace flashmem {
namespace {

constexpr GgmlType kSupported[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                                   GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K};

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

// Expects two float arrays to be identical bit for bit (NaNs included).
void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(bits_of(got[i]), bits_of(want[i]))
        << what << ": element " << i << " is " << got[i] << ", expected " << want[i];
  }
}

std::vector<float> deq_ref(GgmlType t, const std::vector<uint8_t>& raw, uint64_t n) {
  std::vector<float> y(n);
  dequantize_row_ref(t, raw.data(), y.data(), n);
  return y;
}

// ---- traits ---------------------------------------------------------------------------------

TEST(QuantTraits, SizesOfAllKnownTypes) {
  struct Row {
    uint32_t id;
    const char* name;
    uint32_t elems, bytes;
    bool deq;
  };
  const Row rows[] = {
      {0, "F32", 1, 4, true},        {1, "F16", 1, 2, true},        {2, "Q4_0", 32, 18, true},
      {3, "Q4_1", 32, 20, true},     {6, "Q5_0", 32, 22, true},    {7, "Q5_1", 32, 24, false},
      {8, "Q8_0", 32, 34, true},     {9, "Q8_1", 32, 36, false},    {10, "Q2_K", 256, 84, false},
      {11, "Q3_K", 256, 110, false}, {12, "Q4_K", 256, 144, true},  {13, "Q5_K", 256, 176, false},
      {14, "Q6_K", 256, 210, true},  {15, "Q8_K", 256, 292, false}, {24, "I8", 1, 1, false},
      {25, "I16", 1, 2, false},      {26, "I32", 1, 4, false},      {27, "I64", 1, 8, false},
      {28, "F64", 1, 8, false},      {30, "BF16", 1, 2, true},
  };
  for (const Row& r : rows) {
    const auto t = ggml_type_traits(r.id);
    ASSERT_TRUE(t.has_value()) << r.name;
    EXPECT_STREQ(t->name, r.name);
    EXPECT_EQ(t->block_elems, r.elems) << r.name;
    EXPECT_EQ(t->block_bytes, r.bytes) << r.name;
    EXPECT_EQ(t->dequant_supported, r.deq) << r.name;
    EXPECT_EQ(ggml_type_name(static_cast<GgmlType>(r.id)), r.name);
    EXPECT_EQ(ggml_traits(static_cast<GgmlType>(r.id)).block_bytes, r.bytes);
  }
  for (uint32_t unknown : {4u, 5u, 16u, 23u, 29u, 31u, 39u, 1000u, 0xffffffffu}) {
    EXPECT_FALSE(ggml_type_traits(unknown).has_value()) << unknown;
  }
  EXPECT_THROW(ggml_traits(static_cast<GgmlType>(99)), Error);
}

TEST(QuantTraits, RowBytes) {
  EXPECT_EQ(ggml_row_bytes(GgmlType::F32, 576), 2304u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q4_1, 576), 18u * 20u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q8_0, 576), 18u * 34u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q6_K, 512), 420u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q4_K, 0), 0u);
  EXPECT_THROW(ggml_row_bytes(GgmlType::Q4_K, 100), Error);
}

TEST(Quant, UnsupportedTypesThrow) {
  std::vector<uint8_t> raw(4096);
  std::vector<float> y(256);
  for (GgmlType t : {GgmlType::Q5_1, GgmlType::Q8_1, GgmlType::Q2_K, GgmlType::Q3_K,
                     GgmlType::Q5_K, GgmlType::Q8_K, GgmlType::I8, GgmlType::I16, GgmlType::I32,
                     GgmlType::I64, GgmlType::F64}) {
    for (auto fn : {&dequantize_row_ref, &dequantize_row}) {
      try {
        fn(t, raw.data(), y.data(), 256);
        FAIL() << "no error for " << ggml_type_name(t);
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.what();
        EXPECT_NE(std::string(e.what()).find(ggml_type_name(t)), std::string::npos) << e.what();
      }
    }
  }
  try {
    dequantize_row(static_cast<GgmlType>(77), raw.data(), y.data(), 32);
    FAIL() << "no error for type id 77";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  }
  // A row that is not a whole number of blocks is a caller error.
  try {
    dequantize_row_ref(GgmlType::Q4_0, raw.data(), y.data(), 40);
    FAIL() << "no error for a partial block";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
}

// ---- reference vs hand-derived values --------------------------------------------------------
// Each block is assembled byte by byte from the format definition and the expected floats are
// computed from the chosen quants and scales, not from the packed bytes, so the unpacking
// logic of the reference is checked independently.

TEST(QuantRef, KnownF32F16Bf16) {
  std::vector<uint8_t> f32(8);
  const float a = 1.5f, b = -0.25f;
  std::memcpy(f32.data(), &a, 4);
  std::memcpy(f32.data() + 4, &b, 4);
  expect_same_bits(deq_ref(GgmlType::F32, f32, 2), {1.5f, -0.25f}, "F32");

  std::vector<uint8_t> f16(8);
  put_u16(&f16[0], 0x3c00);  // 1
  put_u16(&f16[2], 0xc000);  // -2
  put_u16(&f16[4], 0x3800);  // 0.5
  put_u16(&f16[6], 0x0001);  // 2^-24
  expect_same_bits(deq_ref(GgmlType::F16, f16, 4), {1.0f, -2.0f, 0.5f, std::ldexp(1.0f, -24)},
                   "F16");

  std::vector<uint8_t> bf(4);
  put_u16(&bf[0], 0x3f80);  // 1
  put_u16(&bf[2], 0x4049);  // 0x40490000 = 3.140625
  expect_same_bits(deq_ref(GgmlType::BF16, bf, 2), {1.0f, 3.140625f}, "BF16");
}

TEST(QuantRef, KnownQ8_0) {
  std::vector<uint8_t> raw(34);
  put_u16(&raw[0], 0x3800);  // d = 0.5
  std::vector<float> want(32);
  for (int j = 0; j < 32; ++j) {
    raw[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j * 8 - 128));  // -128..120
    want[j] = static_cast<float>(j * 8 - 128) * 0.5f;
  }
  expect_same_bits(deq_ref(GgmlType::Q8_0, raw, 32), want, "Q8_0");
}

TEST(QuantRef, KnownQ4_0) {
  // Byte j holds value j in its low nibble (element j) and 15-j in its high nibble
  // (element j+16); values are stored offset by 8.
  std::vector<uint8_t> raw(18);
  put_u16(&raw[0], 0x4000);  // d = 2
  std::vector<float> want(32);
  for (int j = 0; j < 16; ++j) {
    raw[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
    want[j] = static_cast<float>(j - 8) * 2.0f;
    want[j + 16] = static_cast<float>(7 - j) * 2.0f;
  }
  expect_same_bits(deq_ref(GgmlType::Q4_0, raw, 32), want, "Q4_0");
}

TEST(QuantRef, KnownQ4_1) {
  std::vector<uint8_t> raw(20);
  put_u16(&raw[0], 0x3400);  // d = 0.25
  put_u16(&raw[2], 0xbc00);  // m = -1
  std::vector<float> want(32);
  for (int j = 0; j < 16; ++j) {
    raw[4 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
    want[j] = static_cast<float>(j) * 0.25f - 1.0f;
    want[j + 16] = static_cast<float>(15 - j) * 0.25f - 1.0f;
  }
  expect_same_bits(deq_ref(GgmlType::Q4_1, raw, 32), want, "Q4_1");
}

TEST(QuantRef, KnownQ5_0) {
  // Element j is 5 bits: nibble j of qs (high nibbles: j ≥ 16) and bit j of qh as bit 4;
  // stored offset by 16. Element j holds j, so bit 4 is set for j ≥ 16 only.
  std::vector<uint8_t> raw(22);
  put_u16(&raw[0], 0x3c00);  // d = 1
  const uint32_t qh = 0xffff0000u;
  std::memcpy(&raw[2], &qh, 4);
  std::vector<float> want(32);
  for (int j = 0; j < 16; ++j) raw[6 + j] = static_cast<uint8_t>(j | (j << 4));
  for (int j = 0; j < 32; ++j) want[j] = static_cast<float>(j - 16);
  expect_same_bits(deq_ref(GgmlType::Q5_0, raw, 32), want, "Q5_0");
}

TEST(QuantRef, KnownQ4_K) {
  // Eight sub-blocks of 32 with 6-bit scales sc[] and mins mn[]; value = d*sc*q - dmin*mn.
  const int sc[8] = {1, 2, 3, 4, 17, 33, 48, 63};
  const int mn[8] = {5, 6, 7, 8, 20, 40, 50, 62};
  std::vector<uint8_t> raw(144);
  put_u16(&raw[0], 0x3c00);  // d = 1
  put_u16(&raw[2], 0x3800);  // dmin = 0.5
  // Packing (12 bytes): bytes 0-3 = sc[0..3] | top 2 bits of sc[4..7] << 6; bytes 4-7 =
  // mn[0..3] | top 2 bits of mn[4..7] << 6; bytes 8-11 = low 4 bits of sc[4..7] | low 4 bits
  // of mn[4..7] << 4. Written out by hand:
  const uint8_t scales[12] = {0x41, 0x82, 0xC3, 0xC4, 0x45, 0x86,
                              0xC7, 0xC8, 0x41, 0x81, 0x20, 0xEF};
  std::memcpy(&raw[4], scales, 12);
  // qs: 4 chunks of 32 bytes; chunk c gives sub-block 2c (low nibbles) and 2c+1 (high).
  int q[256];
  for (int i = 0; i < 256; ++i) q[i] = (i * 5 + i / 32) % 16;
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      raw[16 + 32 * c + l] = static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
    }
  }
  std::vector<float> want(256);
  for (int i = 0; i < 256; ++i) {
    const int s = i / 32;
    want[i] = static_cast<float>(sc[s] * q[i]) - 0.5f * static_cast<float>(mn[s]);
  }
  expect_same_bits(deq_ref(GgmlType::Q4_K, raw, 256), want, "Q4_K");
}

TEST(QuantRef, KnownQ6_K) {
  // 256 six-bit values stored offset by 32, sixteen int8 scales (one per 16 values), one f16 d.
  int q[256];
  for (int i = 0; i < 256; ++i) q[i] = (i * 7 + 3) % 64;
  int8_t scales[16];
  for (int k = 0; k < 16; ++k) scales[k] = static_cast<int8_t>(k * 9 - 70);  // -70..65
  std::vector<uint8_t> raw(210, 0);
  uint8_t* ql = &raw[0];
  uint8_t* qh = &raw[128];
  // Layout: element e = 128h + 32k + l (h half, k group 0..3, l 0..31). Its low 4 bits go to
  // ql[64h + l] (k=0 low nibble, k=2 high nibble) or ql[64h + 32 + l] (k=1 low, k=3 high);
  // its top 2 bits go to bits 2k..2k+1 of qh[32h + l].
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    const int lo = q[e] & 15, hi = q[e] >> 4;
    uint8_t& b = ql[64 * h + ((k & 1) ? 32 : 0) + l];
    b = static_cast<uint8_t>(b | (k < 2 ? lo : lo << 4));
    qh[32 * h + l] = static_cast<uint8_t>(qh[32 * h + l] | (hi << (2 * k)));
  }
  std::memcpy(&raw[192], scales, 16);
  put_u16(&raw[208], 0x3800);  // d = 0.5
  std::vector<float> want(256);
  for (int e = 0; e < 256; ++e) {
    // Scale index: the 16 values of element e: 8h + 2k + l/16 = e / 16.
    want[e] = 0.5f * static_cast<float>(scales[e / 16]) * static_cast<float>(q[e] - 32);
  }
  expect_same_bits(deq_ref(GgmlType::Q6_K, raw, 256), want, "Q6_K");
}

// ---- fast path vs reference ------------------------------------------------------------------

// Random blocks: random payload bytes, with every f16 scale replaced by a finite value.
std::vector<uint8_t> random_row(GgmlType t, uint64_t n_blocks, std::mt19937_64& rng) {
  const GgmlTypeTraits& tr = ggml_traits(t);
  std::vector<uint8_t> raw(n_blocks * tr.block_bytes);
  for (uint8_t& b : raw) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> mag(-14.0f, 3.0f);
  const auto scale = [&] {
    const float v = std::exp2(mag(rng)) * ((rng() & 1) ? -1.0f : 1.0f);
    return fp32_to_fp16(v);
  };
  for (uint64_t b = 0; b < n_blocks; ++b) {
    uint8_t* blk = raw.data() + b * tr.block_bytes;
    switch (t) {
      case GgmlType::Q8_0:
      case GgmlType::Q4_0:
      case GgmlType::Q5_0:
        put_u16(blk, scale());
        break;
      case GgmlType::Q4_1:
      case GgmlType::Q4_K:
        put_u16(blk, scale());
        put_u16(blk + 2, scale());
        break;
      case GgmlType::Q6_K:
        put_u16(blk + 208, scale());
        break;
      default:
        break;  // F32/F16/BF16: every bit pattern, NaNs included, must match too
    }
  }
  return raw;
}

TEST(QuantFast, MatchesReferenceBitForBit) {
  std::mt19937_64 rng(42);
  for (GgmlType t : kSupported) {
    const GgmlTypeTraits& tr = ggml_traits(t);
    for (int iter = 0; iter < 300; ++iter) {
      // Plain types get lengths that are not multiples of the vector width too.
      const uint64_t n_blocks = tr.block_elems == 1 ? 1 + rng() % 77 : 1 + rng() % 9;
      const uint64_t n = n_blocks * tr.block_elems;
      const std::vector<uint8_t> raw = random_row(t, n_blocks, rng);
      // Misaligned copies exercise unaligned loads.
      const size_t shift = static_cast<size_t>(rng() % 7);
      std::vector<uint8_t> buf(raw.size() + shift);
      std::memcpy(buf.data() + shift, raw.data(), raw.size());
      std::vector<float> ref(n), fast(n, -1.0f);
      dequantize_row_ref(t, raw.data(), ref.data(), n);
      dequantize_row(t, buf.data() + shift, fast.data(), n);
      expect_same_bits(fast, ref, std::string(tr.name) + " iteration " + std::to_string(iter));
      if (HasFatalFailure()) return;
    }
  }
}

TEST(QuantFast, ExtremeScalesMatchReference) {
  // Largest/smallest f16 scales, subnormal and zero scales, and infinities (which make NaN
  // through inf*0 and inf-inf in both paths alike).
  std::mt19937_64 rng(7);
  const uint16_t extremes[] = {0x7bff, 0xfbff, 0x0001, 0x8001, 0x0000, 0x8000, 0x7c00, 0xfc00};
  for (GgmlType t :
       {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
    const GgmlTypeTraits& tr = ggml_traits(t);
    for (uint16_t d : extremes) {
      for (uint16_t m : extremes) {
        std::vector<uint8_t> raw = random_row(t, 2, rng);
        const size_t d_off = t == GgmlType::Q6_K ? 208 : 0;
        for (size_t b = 0; b < 2; ++b) {
          put_u16(&raw[b * tr.block_bytes + d_off], d);
          if (t == GgmlType::Q4_1 || t == GgmlType::Q4_K) put_u16(&raw[b * tr.block_bytes + 2], m);
        }
        const uint64_t n = 2 * tr.block_elems;
        std::vector<float> ref(n), fast(n);
        dequantize_row_ref(t, raw.data(), ref.data(), n);
        dequantize_row(t, raw.data(), fast.data(), n);
        expect_same_bits(fast, ref, std::string(tr.name) + " extreme scales");
        if (HasFatalFailure()) return;
      }
    }
  }
}

// ---- reference vs gguf-py (fixture) ----------------------------------------------------------

std::vector<uint8_t> from_hex(const std::string& hex) {
  EXPECT_EQ(hex.size() % 2, 0u);
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<uint8_t>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
  }
  return out;
}

std::vector<float> floats_from_hex(const std::string& hex) {
  const std::vector<uint8_t> b = from_hex(hex);
  std::vector<float> out(b.size() / 4);
  if (!out.empty()) std::memcpy(out.data(), b.data(), out.size() * 4);
  return out;
}

TEST(QuantRef, MatchesGgufPyFixture) {
  const std::string path = std::string(FLASHMEM_FIXTURES_DIR) + "/quant_blocks.json";
  std::ifstream f(path);
  ASSERT_TRUE(f) << "missing " << path
                 << " (regenerate with scripts/reference/make_quant_fixture.py)";
  const nlohmann::json j = nlohmann::json::parse(f);
  size_t checked = 0;
  for (const auto& blk : j.at("blocks")) {
    const auto type_id = blk.at("type_id").get<uint32_t>();
    const auto n = blk.at("n").get<uint64_t>();
    const std::string name = blk.at("type").get<std::string>();
    const std::vector<uint8_t> raw = from_hex(blk.at("raw").get<std::string>());
    const std::vector<float> want = floats_from_hex(blk.at("expected_f32").get<std::string>());
    const auto t = static_cast<GgmlType>(type_id);
    ASSERT_EQ(ggml_type_name(t), name);
    ASSERT_EQ(raw.size(), ggml_row_bytes(t, n)) << name;
    expect_same_bits(deq_ref(t, raw, n), want, "gguf-py " + name + " (reference)");
    std::vector<float> fast(n);
    dequantize_row(t, raw.data(), fast.data(), n);
    expect_same_bits(fast, want, "gguf-py " + name + " (fast path)");
    ++checked;
  }
  // Every supported type is present in the fixture.
  EXPECT_GE(checked, 2 * std::size(kSupported));
}

}  // namespace
}  // namespace flashmem
