// flashmem/io/gguf_image.h — a GGUF v3 image assembled in memory and opened as a GgufFile,
// without a file: the models flashmem builds from a shape alone (models/synthetic.h).
//
// Metadata and tensor declarations first; build() lays the image out once in one owned buffer
// (no copy of the tensor data is ever made), lets the caller write each tensor's bytes in place,
// and parses the result with the same checks as a file on disk.
//
//   GgufImage img;
//   img.add_string("general.architecture", "llama");
//   img.add_tensor("output_norm.weight", GgmlType::F32, {4096});
//   GgufFile f = img.build([](size_t i, uint8_t* dst, uint64_t n) { ... });
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/quant.h"
#include "io/gguf.h"

namespace flashmem {

class GgufImage {
 public:
  void add_u32(std::string_view key, uint32_t v);
  void add_f32(std::string_view key, float v);
  void add_bool(std::string_view key, bool v);
  void add_string(std::string_view key, std::string_view v);
  void add_strings(std::string_view key, const std::vector<std::string>& v);
  void add_i32s(std::string_view key, const std::vector<int32_t>& v);
  // A tensor of `type` and dims ne (innermost first, as GGUF stores them); its bytes are written
  // by build()'s fill. Error(kInvalidArgument) for a shape the type cannot hold.
  void add_tensor(std::string_view name, GgmlType type, std::vector<uint64_t> ne);

  // Tensor i's bytes: fill(i, dst, n_bytes) writes all n_bytes of them. Then the image is parsed
  // (Error(kFormat) as for a file). `source` names the image in errors.
  using Fill = std::function<void(size_t i, uint8_t* dst, uint64_t n_bytes)>;
  GgufFile build(const Fill& fill, std::string_view source = "GGUF image") const;

  // Bytes the image will take (header, metadata, tensor table and aligned data).
  uint64_t image_bytes() const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<uint64_t> ne;
    uint64_t n_bytes = 0;
    uint64_t offset = 0;  // in the data section
  };
  std::vector<uint8_t> meta_;  // encoded key/value pairs
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
  uint64_t data_bytes_ = 0;

  std::vector<uint8_t> header() const;  // magic … tensor table, unpadded
  void key(std::string_view k, GgufValueType t);
};

}  // namespace flashmem
