// flashmem/core/quant.h — GGML tensor types and their quantisation blocks.
//
// A "row" is the innermost dimension of a tensor (ne[0] elements). Quantised rows are made of
// blocks; every block type below stores `block_elems` values in `block_bytes` bytes.
// Two dequantisers exist for every supported type: a deliberately plain scalar reference
// (`dequantize_row_ref`, the oracle) and a fast path (`dequantize_row`, SIMD where available)
// that must produce bit-identical floats.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace flashmem {

// Values are the GGML type ids used on disk by GGUF (see gguf.py GGMLQuantizationType).
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

struct GgmlTypeTraits {
  const char* name;    // e.g. "Q4_K"
  uint32_t block_elems;  // values per block (1 for plain types)
  uint32_t block_bytes;  // bytes per block
  bool dequant_supported;  // flashmem can turn it into f32
};

// Traits of a type id read from a file; std::nullopt for ids flashmem does not know
// (the GGUF reader turns that into a format error naming the tensor).
std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t type_id);
const GgmlTypeTraits& ggml_traits(GgmlType type);  // for known enum values
std::string_view ggml_type_name(GgmlType type);

// Bytes used by a row of n elements; n must be a multiple of block_elems (callers check).
size_t ggml_row_bytes(GgmlType type, uint64_t n);

// Block layouts (little-endian, packed as GGML stores them).
constexpr int kQK4_0 = 32, kQK4_1 = 32, kQK5_0 = 32, kQK8_0 = 32, kQK_K = 256, kKScaleSize = 12;
#pragma pack(push, 1)
struct BlockQ4_0 { uint16_t d; uint8_t qs[kQK4_0 / 2]; };                 // 18 bytes
struct BlockQ4_1 { uint16_t d; uint16_t m; uint8_t qs[kQK4_1 / 2]; };     // 20 bytes
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[kQK5_0 / 2]; };  // 22 bytes
struct BlockQ8_0 { uint16_t d; int8_t qs[kQK8_0]; };                      // 34 bytes
struct BlockQ4_K {                                                        // 144 bytes
  uint16_t d, dmin; uint8_t scales[kKScaleSize]; uint8_t qs[kQK_K / 2];
};
struct BlockQ6_K {                                                        // 210 bytes
  uint8_t ql[kQK_K / 2]; uint8_t qh[kQK_K / 4]; int8_t scales[kQK_K / 16]; uint16_t d;
};
#pragma pack(pop)
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
              sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ6_K) == 210);

// Plain scalar reference: src holds ggml_row_bytes(type, n) bytes; writes n floats.
// Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K. Throws Error(kUnsupported) otherwise.
void dequantize_row_ref(GgmlType type, const void* src, float* dst, uint64_t n);
// Fast path, bit-identical to the reference.
void dequantize_row(GgmlType type, const void* src, float* dst, uint64_t n);

}  // namespace flashmem
