#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace flashmem {

size_t safetensors_dtype_size(const std::string& d) {
  if (d == "F32" || d == "I32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16") return 2;
  if (d == "I64" || d == "F64") return 8;
  if (d == "U8" || d == "I8" || d == "BOOL") return 1;
  return 0;
}

namespace {

uint64_t elements(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t s : shape) n *= static_cast<uint64_t>(s);
  return n;
}

// Bytes of a tensor of `shape` and element size `es`; false when the product overflows.
bool checked_bytes(const std::vector<int64_t>& shape, size_t es, uint64_t* out) {
  uint64_t n = es;
  for (int64_t s : shape)
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(s), &n)) return false;
  *out = n;
  return true;
}

}  // namespace

void write_safetensors(const std::string& path, const SafeTensorsFile& f) {
  nlohmann::json h = nlohmann::json::object();
  if (!f.metadata.empty()) h["__metadata__"] = f.metadata;
  uint64_t off = 0;
  for (const auto& [name, t] : f.tensors) {
    const size_t es = safetensors_dtype_size(t.dtype);
    FM_CHECK(es > 0 && elements(t.shape) * es == t.data.size(), ErrorCode::kInvalidArgument, "tensor ", name,
             ": ", t.data.size(), " bytes do not match ", t.dtype, " of its shape");
    h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.data.size()}}};
    off += t.data.size();
  }
  std::string hs = h.dump();
  hs.append((8 - hs.size() % 8) % 8, ' ');
  const uint64_t hl = hs.size();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  FM_CHECK(out.good(), ErrorCode::kIo, "cannot write ", path);
  out.write(reinterpret_cast<const char*>(&hl), 8);
  out.write(hs.data(), static_cast<std::streamsize>(hs.size()));
  for (const auto& [name, t] : f.tensors)
    out.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
  out.close();
  FM_CHECK(out.good(), ErrorCode::kIo, "writing ", path, " failed");
}

SafeTensorsFile read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FM_CHECK(in.good(), ErrorCode::kIo, "cannot open ", path);
  const std::vector<uint8_t> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_safetensors(buf.data(), buf.size(), path);
}

SafeTensorsFile parse_safetensors(const uint8_t* bytes, size_t size, const std::string& path) {
  FM_CHECK(size >= 8, ErrorCode::kFormat, path, ": too short for a safetensors file");
  uint64_t hl = 0;
  std::memcpy(&hl, bytes, 8);
  FM_CHECK(hl >= 2 && hl <= (100u << 20) && 8 + hl <= size, ErrorCode::kFormat, path,
           ": header length ", hl, " does not fit the file of ", size, " bytes");
  const uint8_t* data = bytes + 8 + hl;
  const uint64_t data_size = size - 8 - hl;
  SafeTensorsFile f;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  try {
    const auto h = nlohmann::json::parse(bytes + 8, bytes + 8 + hl);
    FM_CHECK(h.is_object(), ErrorCode::kFormat, path, ": the header is not a JSON object");
    for (const auto& [name, v] : h.items()) {
      if (name == "__metadata__") {
        FM_CHECK(v.is_object(), ErrorCode::kFormat, path, ": __metadata__ is not an object");
        for (const auto& [k, s] : v.items()) {
          FM_CHECK(s.is_string(), ErrorCode::kFormat, path, ": metadata '", k, "' is not a string");
          f.metadata[k] = s.get<std::string>();
        }
        continue;
      }
      SafeTensor t;
      t.dtype = v.at("dtype").get<std::string>();
      const size_t es = safetensors_dtype_size(t.dtype);
      FM_CHECK(es > 0, ErrorCode::kFormat, path, ": tensor ", name, " has unknown dtype ", t.dtype);
      // Sizes are taken only as JSON integers in range: nlohmann converts a float with a plain
      // cast, undefined behaviour for one out of the integer's range (found by fuzz_safetensors).
      const std::string& tensor = name;  // clang 14 cannot capture a structured binding
      const nlohmann::json& fields = v;
      const auto integers = [&](const char* key, uint64_t limit) {
        const nlohmann::json& a = fields.at(key);
        FM_CHECK(a.is_array(), ErrorCode::kFormat, path, ": tensor ", tensor, ": ", key, " is not an array");
        std::vector<uint64_t> out;
        for (const nlohmann::json& x : a) {
          FM_CHECK(x.is_number_unsigned() && x.get<uint64_t>() <= limit, ErrorCode::kFormat, path, ": tensor ", tensor,
                   ": ", key, " holds ", x.dump(), ", not an integer in [0, ", limit, "]");
          out.push_back(x.get<uint64_t>());
        }
        return out;
      };
      for (uint64_t d : integers("shape", (uint64_t{1} << 40) - 1)) t.shape.push_back(static_cast<int64_t>(d));
      const auto off = integers("data_offsets", data_size);
      FM_CHECK(off.size() == 2 && off[0] <= off[1] && off[1] <= data_size, ErrorCode::kFormat, path, ": tensor ",
               name, " lies outside the data");
      uint64_t need = 0;
      FM_CHECK(checked_bytes(t.shape, es, &need), ErrorCode::kFormat, path, ": tensor ", name,
               " has a shape whose byte size overflows 64 bits");
      FM_CHECK(off[1] - off[0] == need, ErrorCode::kFormat, path, ": tensor ", name, " holds ", off[1] - off[0],
               " bytes, its shape needs ", need);
      t.data.assign(data + off[0], data + off[1]);
      ranges.emplace_back(off[0], off[1]);
      f.tensors.emplace(name, std::move(t));
    }
  } catch (const nlohmann::json::exception& e) {
    FM_FAIL(ErrorCode::kFormat, path, ": bad safetensors header: ", e.what());
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    FM_CHECK(ranges[i].first >= ranges[i - 1].second, ErrorCode::kFormat, path, ": tensors overlap");
  return f;
}

}  // namespace flashmem
