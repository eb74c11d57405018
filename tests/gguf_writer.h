// tests/gguf_writer.h — a tiny GGUF v2/v3 writer for tests.
//
// Builds valid files (metadata of every type, tensors of any type from raw bytes) and, through
// its public knobs, deliberately broken ones: wrong magic/version/counts, arbitrary type tags,
// unaligned or out-of-range tensor offsets, bogus n_dims. It validates nothing on purpose.
//
//   flashmem::testing::GgufWriter w;                    // v3, alignment 32
//   w.add_string("general.architecture", "llama");
//   w.add_u32("llama.block_count", 2);
//   w.add_tensor_f32("output_norm.weight", {4}, {1, 2, 3, 4});
//   std::vector<uint8_t> bytes = w.to_bytes();          // or w.write_file(path)
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <deque>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/quant.h"
#include "io/gguf.h"

namespace flashmem::testing {

static_assert(std::endian::native == std::endian::little, "the writer emits host byte order");

template <typename T>
inline void gguf_put(std::vector<uint8_t>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

inline void gguf_put_string(std::vector<uint8_t>& out, std::string_view s) {
  gguf_put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

// An encoded metadata value: its type tag plus the payload bytes that follow the tag.
struct GgufWriteValue {
  GgufValueType type = GgufValueType::UINT8;
  std::vector<uint8_t> bytes;

  template <typename T>
  static GgufWriteValue scalar(GgufValueType t, T v) {
    GgufWriteValue w{t, {}};
    gguf_put<T>(w.bytes, v);
    return w;
  }
  static GgufWriteValue u8(uint8_t v) { return scalar(GgufValueType::UINT8, v); }
  static GgufWriteValue i8(int8_t v) { return scalar(GgufValueType::INT8, v); }
  static GgufWriteValue u16(uint16_t v) { return scalar(GgufValueType::UINT16, v); }
  static GgufWriteValue i16(int16_t v) { return scalar(GgufValueType::INT16, v); }
  static GgufWriteValue u32(uint32_t v) { return scalar(GgufValueType::UINT32, v); }
  static GgufWriteValue i32(int32_t v) { return scalar(GgufValueType::INT32, v); }
  static GgufWriteValue u64(uint64_t v) { return scalar(GgufValueType::UINT64, v); }
  static GgufWriteValue i64(int64_t v) { return scalar(GgufValueType::INT64, v); }
  static GgufWriteValue f32(float v) { return scalar(GgufValueType::FLOAT32, v); }
  static GgufWriteValue f64(double v) { return scalar(GgufValueType::FLOAT64, v); }
  static GgufWriteValue boolean(bool v) { return scalar<uint8_t>(GgufValueType::BOOL, v ? 1 : 0); }
  static GgufWriteValue str(std::string_view s) {
    GgufWriteValue w{GgufValueType::STRING, {}};
    gguf_put_string(w.bytes, s);
    return w;
  }
  // An array whose items all have type `elem` (arrays of arrays included). Mismatched items
  // are written as given, which makes a malformed file.
  static GgufWriteValue array(GgufValueType elem, const std::vector<GgufWriteValue>& items) {
    GgufWriteValue w{GgufValueType::ARRAY, {}};
    gguf_put<uint32_t>(w.bytes, static_cast<uint32_t>(elem));
    gguf_put<uint64_t>(w.bytes, items.size());
    for (const GgufWriteValue& it : items)
      w.bytes.insert(w.bytes.end(), it.bytes.begin(), it.bytes.end());
    return w;
  }
  // An array of plain scalars of C++ type T encoded as `elem` (sizeof(T) must match).
  template <typename T>
  static GgufWriteValue array_of(GgufValueType elem, const std::vector<T>& xs) {
    GgufWriteValue w{GgufValueType::ARRAY, {}};
    gguf_put<uint32_t>(w.bytes, static_cast<uint32_t>(elem));
    gguf_put<uint64_t>(w.bytes, xs.size());
    for (const T& x : xs) gguf_put<T>(w.bytes, x);
    return w;
  }
  static GgufWriteValue strings(const std::vector<std::string>& xs) {
    GgufWriteValue w{GgufValueType::ARRAY, {}};
    gguf_put<uint32_t>(w.bytes, static_cast<uint32_t>(GgufValueType::STRING));
    gguf_put<uint64_t>(w.bytes, xs.size());
    for (const std::string& x : xs) gguf_put_string(w.bytes, x);
    return w;
  }
  // Any tag with any payload, for malformed files (e.g. tag 13, or a truncated payload).
  static GgufWriteValue raw(uint32_t type_tag, std::vector<uint8_t> payload) {
    return GgufWriteValue{static_cast<GgufValueType>(type_tag), std::move(payload)};
  }
};

struct GgufWriteTensor {
  std::string name;
  uint32_t type_id = 0;
  std::vector<uint64_t> ne;
  std::vector<uint8_t> data;
  std::optional<uint64_t> offset;  // overrides the computed (aligned) data offset
  std::optional<uint32_t> n_dims;  // overrides ne.size() in the tensor info
};

// Byte positions of the parts of the last image built, for tests that corrupt them.
struct GgufLayout {
  size_t kv_start = 0;                      // first metadata entry (= 24)
  std::vector<size_t> kv_offsets;           // start of each metadata entry (its key length)
  std::vector<size_t> tensor_info_offsets;  // start of each tensor info (its name length)
  size_t header_end = 0;                    // end of the last tensor info
  size_t data_start = 0;                    // aligned start of the data section
  std::vector<uint64_t> tensor_offsets;     // offsets written, relative to data_start
};

class GgufWriter {
 public:
  // ---- knobs (public on purpose: tests set them to build broken files) ----
  uint32_t magic = 0x46554747;  // "GGUF"
  uint32_t version = 3;
  std::optional<uint64_t> n_tensors_override;
  std::optional<uint64_t> n_kv_override;
  uint64_t layout_alignment = 32;  // padding used for the data section and tensor offsets

  explicit GgufWriter(uint32_t file_version = 3) : version(file_version) {}

  // ---- metadata, written in call order ----
  GgufWriter& add(std::string key, GgufWriteValue v) {
    kvs_.emplace_back(std::move(key), std::move(v));
    return *this;
  }
  GgufWriter& add_u8(std::string k, uint8_t v) { return add(std::move(k), GgufWriteValue::u8(v)); }
  GgufWriter& add_i8(std::string k, int8_t v) { return add(std::move(k), GgufWriteValue::i8(v)); }
  GgufWriter& add_u16(std::string k, uint16_t v) {
    return add(std::move(k), GgufWriteValue::u16(v));
  }
  GgufWriter& add_i16(std::string k, int16_t v) {
    return add(std::move(k), GgufWriteValue::i16(v));
  }
  GgufWriter& add_u32(std::string k, uint32_t v) {
    return add(std::move(k), GgufWriteValue::u32(v));
  }
  GgufWriter& add_i32(std::string k, int32_t v) {
    return add(std::move(k), GgufWriteValue::i32(v));
  }
  GgufWriter& add_u64(std::string k, uint64_t v) {
    return add(std::move(k), GgufWriteValue::u64(v));
  }
  GgufWriter& add_i64(std::string k, int64_t v) {
    return add(std::move(k), GgufWriteValue::i64(v));
  }
  GgufWriter& add_f32(std::string k, float v) { return add(std::move(k), GgufWriteValue::f32(v)); }
  GgufWriter& add_f64(std::string k, double v) { return add(std::move(k), GgufWriteValue::f64(v)); }
  GgufWriter& add_bool(std::string k, bool v) {
    return add(std::move(k), GgufWriteValue::boolean(v));
  }
  GgufWriter& add_string(std::string k, std::string_view v) {
    return add(std::move(k), GgufWriteValue::str(v));
  }
  GgufWriter& add_strings(std::string k, const std::vector<std::string>& v) {
    return add(std::move(k), GgufWriteValue::strings(v));
  }
  GgufWriter& add_i32s(std::string k, const std::vector<int32_t>& v) {
    return add(std::move(k), GgufWriteValue::array_of(GgufValueType::INT32, v));
  }
  GgufWriter& add_u32s(std::string k, const std::vector<uint32_t>& v) {
    return add(std::move(k), GgufWriteValue::array_of(GgufValueType::UINT32, v));
  }
  GgufWriter& add_f32s(std::string k, const std::vector<float>& v) {
    return add(std::move(k), GgufWriteValue::array_of(GgufValueType::FLOAT32, v));
  }
  // Writes general.alignment (UINT32) and lays the data section out with it.
  GgufWriter& set_alignment(uint32_t a) {
    layout_alignment = a;
    return add_u32("general.alignment", a);
  }

  // ---- tensors, written in call order; references stay valid (deque) ----
  // `data` is written verbatim; when empty, zero bytes of the right size are used.
  GgufWriteTensor& add_tensor_raw(std::string name, uint32_t type_id, std::vector<uint64_t> ne,
                                  std::vector<uint8_t> data = {}) {
    if (data.empty()) data.resize(expected_bytes(type_id, ne));
    tensors_.push_back(GgufWriteTensor{std::move(name), type_id, std::move(ne), std::move(data),
                                       std::nullopt, std::nullopt});
    return tensors_.back();
  }
  GgufWriteTensor& add_tensor(std::string name, GgmlType type, std::vector<uint64_t> ne,
                              std::vector<uint8_t> data = {}) {
    return add_tensor_raw(std::move(name), static_cast<uint32_t>(type), std::move(ne),
                          std::move(data));
  }
  GgufWriteTensor& add_tensor_f32(std::string name, std::vector<uint64_t> ne,
                                  const std::vector<float>& values) {
    std::vector<uint8_t> bytes(values.size() * 4);
    if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
    return add_tensor(std::move(name), GgmlType::F32, std::move(ne), std::move(bytes));
  }
  GgufWriteTensor& add_tensor_f16(std::string name, std::vector<uint64_t> ne,
                                  const std::vector<float>& values) {
    std::vector<uint8_t> bytes;
    for (float v : values) gguf_put<uint16_t>(bytes, fp32_to_fp16(v));
    return add_tensor(std::move(name), GgmlType::F16, std::move(ne), std::move(bytes));
  }

  GgufWriteTensor& tensor(size_t i) { return tensors_.at(i); }
  const GgufWriteTensor& tensor(size_t i) const { return tensors_.at(i); }
  size_t n_tensors() const { return tensors_.size(); }
  size_t n_kv() const { return kvs_.size(); }

  // Bytes of a tensor of a known type and shape (0 when the shape does not divide evenly).
  static size_t expected_bytes(uint32_t type_id, const std::vector<uint64_t>& ne) {
    const std::optional<GgmlTypeTraits> t = ggml_type_traits(type_id);
    if (!t || ne.empty() || ne[0] % t->block_elems != 0) return 0;
    uint64_t rows = 1;
    for (size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
    return static_cast<size_t>(rows * (ne[0] / t->block_elems) * t->block_bytes);
  }

  std::vector<uint8_t> to_bytes(GgufLayout* layout = nullptr) const {
    GgufLayout lay;
    std::vector<uint8_t> out;
    gguf_put<uint32_t>(out, magic);
    gguf_put<uint32_t>(out, version);
    gguf_put<uint64_t>(out, n_tensors_override.value_or(tensors_.size()));
    gguf_put<uint64_t>(out, n_kv_override.value_or(kvs_.size()));
    lay.kv_start = out.size();
    for (const auto& [key, v] : kvs_) {
      lay.kv_offsets.push_back(out.size());
      gguf_put_string(out, key);
      gguf_put<uint32_t>(out, static_cast<uint32_t>(v.type));
      out.insert(out.end(), v.bytes.begin(), v.bytes.end());
    }
    // Tensor data offsets: each tensor starts at the next aligned offset unless overridden.
    // Only tensors at computed offsets extend the data section. An overridden offset is
    // written into the tensor info as is; its bytes are stored only if they fall inside the
    // section (overlaps), so offsets past the end really point past the end of the file.
    uint64_t next = 0;
    for (const GgufWriteTensor& t : tensors_) {
      const uint64_t off = t.offset.value_or(next);
      lay.tensor_offsets.push_back(off);
      if (!t.offset) next = align_up(off + t.data.size());
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const GgufWriteTensor& t = tensors_[i];
      lay.tensor_info_offsets.push_back(out.size());
      gguf_put_string(out, t.name);
      gguf_put<uint32_t>(out, t.n_dims.value_or(static_cast<uint32_t>(t.ne.size())));
      for (uint64_t d : t.ne) gguf_put<uint64_t>(out, d);
      gguf_put<uint32_t>(out, t.type_id);
      gguf_put<uint64_t>(out, lay.tensor_offsets[i]);
    }
    lay.header_end = out.size();
    if (!tensors_.empty()) {
      out.resize(align_up(out.size()), 0);
      lay.data_start = out.size();
      out.resize(lay.data_start + static_cast<size_t>(next), 0);
      for (size_t i = 0; i < tensors_.size(); ++i) {
        const GgufWriteTensor& t = tensors_[i];
        const uint64_t off = lay.tensor_offsets[i];
        if (off > next || t.data.size() > next - off) continue;
        if (!t.data.empty()) {
          std::memcpy(out.data() + lay.data_start + static_cast<size_t>(off), t.data.data(),
                      t.data.size());
        }
      }
    } else {
      lay.data_start = out.size();
    }
    if (layout != nullptr) *layout = std::move(lay);
    return out;
  }

  void write_file(const std::string& path) const { write_bytes(path, to_bytes()); }

  static void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error("gguf_writer: cannot create " + path);
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
    if (!f) throw std::runtime_error("gguf_writer: cannot write " + path);
  }

 private:
  uint64_t align_up(uint64_t x) const {
    const uint64_t a = layout_alignment == 0 ? 1 : layout_alignment;
    return (x + a - 1) / a * a;
  }

  std::vector<std::pair<std::string, GgufWriteValue>> kvs_;
  std::deque<GgufWriteTensor> tensors_;
};

}  // namespace flashmem::testing
