// flashmem/io/safetensors.h — the safetensors format: an 8-byte little-endian header length, a
// JSON header ({name: {dtype, shape, data_offsets}}, "__metadata__": {string: string}), then
// the tensors' bytes. Used for Memory Indexer checkpoints.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace flashmem {

struct SafeTensor {
  std::string dtype;           // "F32", "F16", "BF16", "I32", "I64", "U8"
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;   // little-endian, row-major
};

struct SafeTensorsFile {
  std::map<std::string, SafeTensor> tensors;
  std::map<std::string, std::string> metadata;
};

size_t safetensors_dtype_size(const std::string& dtype);  // 0 for an unknown dtype

// Throws Error(kIo) when the file cannot be written, Error(kInvalidArgument) for a tensor whose
// bytes do not match its dtype and shape.
void write_safetensors(const std::string& path, const SafeTensorsFile& f);
// Throws Error(kIo) when unreadable and Error(kFormat) for a malformed file: short, absurd
// header length, bad JSON, unknown dtype, size mismatch, offsets outside the data or
// overlapping, non-string metadata.
SafeTensorsFile read_safetensors(const std::string& path);
// The same from an image in memory; errors name it `path`.
SafeTensorsFile parse_safetensors(const uint8_t* bytes, size_t size, const std::string& path);

}  // namespace flashmem
