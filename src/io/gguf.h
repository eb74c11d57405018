// flashmem/io/gguf.h — a checked reader for GGUF v2/v3 model files.
//
// The whole file is memory-mapped read-only; tensor data is never copied. Every count,
// length and offset read from the file is validated against the file size before use, so a
// malformed or hostile file yields Error(kFormat) with a message naming what is wrong (and
// where), never a crash or an allocation proportional to a bogus count.
//
//   GgufFile f = GgufFile::open("model.gguf");
//   uint32_t n_layer = f.get_u32("llama.block_count");
//   const GgufTensor& t = f.tensor("blk.0.attn_q.weight");   // t.data points into the map
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "core/quant.h"

namespace flashmem {

// GGUF metadata value types, as numbered on disk.
enum class GgufValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
  BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_value_type_name(GgufValueType t);

// An array value: element type plus the decoded elements. Arrays of arrays are accepted
// by the parser (nested) as the format allows.
struct GgufArray;

// One metadata value. Scalars are stored widened; strings as std::string.
struct GgufValue {
  GgufValueType type = GgufValueType::UINT8;
  std::variant<uint64_t, int64_t, double, bool, std::string, std::shared_ptr<GgufArray>> v;

  // Checked accessors: throw Error(kFormat) naming `key` when the type does not fit.
  // Integer accessors accept any integer type whose value fits the requested range.
  uint64_t as_u64(std::string_view key) const;
  int64_t as_i64(std::string_view key) const;
  double as_f64(std::string_view key) const;   // any float or integer type
  bool as_bool(std::string_view key) const;
  const std::string& as_string(std::string_view key) const;
  const GgufArray& as_array(std::string_view key) const;
};

struct GgufArray {
  GgufValueType elem_type = GgufValueType::UINT8;
  std::vector<GgufValue> items;
  // Convenience conversions with the same checks as GgufValue's accessors.
  std::vector<std::string> strings(std::string_view key) const;
  std::vector<int64_t> ints(std::string_view key) const;
  std::vector<double> floats(std::string_view key) const;
};

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<uint64_t> ne;  // dims, innermost first (ne[0] = row length), as GGUF stores them
  uint64_t n_elements = 0;
  uint64_t offset = 0;       // relative to the start of the tensor data section
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // points into the mapping; valid while the GgufFile lives

  uint64_t rows() const { return ne.empty() ? 0 : n_elements / ne[0]; }
  size_t row_bytes() const;  // bytes of one row of ne[0] elements
};

class GgufFile {
 public:
  // Opens and validates a file. Throws Error(kIo) when it cannot be read and
  // Error(kFormat) when it is malformed.
  static GgufFile open(const std::string& path);
  // Parses an in-memory image (the bytes are copied and owned). For tests and the fuzzer.
  static GgufFile from_bytes(const void* data, size_t size);
  // Parses an image of `size` bytes that write(dst) lays out in a buffer the file then owns (no
  // copy; GgufImage builds models this way). `source` names the image in errors.
  static GgufFile from_writer(uint64_t size, const std::function<void(uint8_t*)>& write, std::string_view source);

  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  ~GgufFile();

  uint32_t version() const;
  uint64_t alignment() const;  // general.alignment or 32
  const std::string& path() const;  // "" for from_bytes
  uint64_t file_size() const;

  // Metadata, in file order of keys.
  const std::vector<std::string>& keys() const;
  const GgufValue* find(std::string_view key) const;  // nullptr if absent
  bool has(std::string_view key) const { return find(key) != nullptr; }
  const GgufValue& get(std::string_view key) const;  // Error(kFormat) "missing key ..." if absent

  // Typed getters: the key must exist and have a fitting type (Error(kFormat) otherwise).
  uint32_t get_u32(std::string_view key) const;
  uint64_t get_u64(std::string_view key) const;
  int64_t get_i64(std::string_view key) const;
  float get_f32(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  const std::string& get_string(std::string_view key) const;
  const GgufArray& get_array(std::string_view key) const;
  // Same with a default when the key is absent (a present key of the wrong type still throws).
  uint32_t get_u32_or(std::string_view key, uint32_t dflt) const;
  float get_f32_or(std::string_view key, float dflt) const;
  bool get_bool_or(std::string_view key, bool dflt) const;
  std::string get_string_or(std::string_view key, std::string_view dflt) const;

  // Gives the host memory under the tensor data back to the OS, for a backend that has copied
  // every weight into its own memory: an owned image's pages are freed, a mapped file's are
  // dropped (read again from the file if touched). Metadata stays; the tensors' data pointers
  // stay valid, reading zeros (owned) or the file (mapped). Returns the bytes given back.
  uint64_t release_tensor_data();

  // Tensors, in file order.
  const std::vector<GgufTensor>& tensors() const;
  const GgufTensor* find_tensor(std::string_view name) const;  // nullptr if absent
  const GgufTensor& tensor(std::string_view name) const;  // Error(kFormat) if absent

 private:
  struct Impl;
  explicit GgufFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace flashmem
