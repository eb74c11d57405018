#include "io/gguf_image.h"

#include <cstring>

#include "core/error.h"

namespace flashmem {

namespace {

constexpr uint64_t kAlignment = 32;  // GGUF's default (no general.alignment key)

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

void put_string(std::vector<uint8_t>& out, std::string_view s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

}  // namespace

void GgufImage::key(std::string_view k, GgufValueType t) {
  put_string(meta_, k);
  put<uint32_t>(meta_, static_cast<uint32_t>(t));
  ++n_kv_;
}

void GgufImage::add_u32(std::string_view k, uint32_t v) {
  key(k, GgufValueType::UINT32);
  put(meta_, v);
}

void GgufImage::add_f32(std::string_view k, float v) {
  key(k, GgufValueType::FLOAT32);
  put(meta_, v);
}

void GgufImage::add_bool(std::string_view k, bool v) {
  key(k, GgufValueType::BOOL);
  put<uint8_t>(meta_, v ? 1 : 0);
}

void GgufImage::add_string(std::string_view k, std::string_view v) {
  key(k, GgufValueType::STRING);
  put_string(meta_, v);
}

void GgufImage::add_strings(std::string_view k, const std::vector<std::string>& v) {
  key(k, GgufValueType::ARRAY);
  put<uint32_t>(meta_, static_cast<uint32_t>(GgufValueType::STRING));
  put<uint64_t>(meta_, v.size());
  for (const std::string& s : v) put_string(meta_, s);
}

void GgufImage::add_i32s(std::string_view k, const std::vector<int32_t>& v) {
  key(k, GgufValueType::ARRAY);
  put<uint32_t>(meta_, static_cast<uint32_t>(GgufValueType::INT32));
  put<uint64_t>(meta_, v.size());
  for (const int32_t x : v) put(meta_, x);
}

void GgufImage::add_tensor(std::string_view name, GgmlType type, std::vector<uint64_t> ne) {
  FM_CHECK(!ne.empty() && ne.size() <= 4, ErrorCode::kInvalidArgument, "tensor ", name, " needs 1 to 4 dims");
  const GgmlTypeTraits& tr = ggml_traits(type);
  FM_CHECK(ne[0] % tr.block_elems == 0, ErrorCode::kInvalidArgument, "tensor ", name, ": rows of ", ne[0],
           " are not whole ", tr.name, " blocks of ", tr.block_elems);
  uint64_t n_bytes = ggml_row_bytes(type, ne[0]);
  for (size_t d = 1; d < ne.size(); ++d) n_bytes *= ne[d];
  Tensor t{std::string(name), type, std::move(ne), n_bytes, data_bytes_};
  data_bytes_ += (n_bytes + kAlignment - 1) / kAlignment * kAlignment;
  tensors_.push_back(std::move(t));
}

std::vector<uint8_t> GgufImage::header() const {
  std::vector<uint8_t> h;
  put<uint32_t>(h, 0x46554747u);  // "GGUF"
  put<uint32_t>(h, 3);
  put<uint64_t>(h, tensors_.size());
  put<uint64_t>(h, n_kv_);
  h.insert(h.end(), meta_.begin(), meta_.end());
  for (const Tensor& t : tensors_) {
    put_string(h, t.name);
    put<uint32_t>(h, static_cast<uint32_t>(t.ne.size()));
    for (const uint64_t n : t.ne) put(h, n);
    put<uint32_t>(h, static_cast<uint32_t>(t.type));
    put<uint64_t>(h, t.offset);
  }
  return h;
}

uint64_t GgufImage::image_bytes() const {
  const uint64_t h = header().size();
  return (h + kAlignment - 1) / kAlignment * kAlignment + data_bytes_;
}

GgufFile GgufImage::build(const Fill& fill, std::string_view source) const {
  const std::vector<uint8_t> h = header();
  const uint64_t data_at = (h.size() + kAlignment - 1) / kAlignment * kAlignment;
  return GgufFile::from_writer(data_at + data_bytes_, [&](uint8_t* dst) {
    std::memcpy(dst, h.data(), h.size());
    std::memset(dst + h.size(), 0, data_at - h.size());
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      uint8_t* at = dst + data_at + t.offset;
      fill(i, at, t.n_bytes);
      const uint64_t padded = (t.n_bytes + kAlignment - 1) / kAlignment * kAlignment;
      std::memset(at + t.n_bytes, 0, padded - t.n_bytes);
    }
  }, source);
}

}  // namespace flashmem
