// flashmem/io/gguf.cpp — the checked GGUF reader.
//
// Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv × (string key,
// u32 value type, value), n_tensors × (string name, u32 n_dims, u64 ne[n_dims], u32 type,
// u64 offset), padding to `general.alignment`, then the tensor data section. Strings are
// u64 length + bytes (no terminator). v1 used u32 counts and lengths and is not supported.
//
// Every read goes through Reader, which checks the remaining size first; every count is
// bounded by what the remaining bytes could hold before anything is allocated for it.
#include "io/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <new>

#include "core/error.h"

namespace flashmem {

// Values are decoded with memcpy, which is only correct on a little-endian host.
static_assert(std::endian::native == std::endian::little,
              "GGUF reader assumes a little-endian host");

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;
// Deeper nesting than this is certainly hostile; the limit bounds the parser's recursion.
constexpr int kMaxArrayDepth = 8;
// Smallest encodings, used to bound counts by the bytes left: a KV is at least an empty key
// (8) + type (4) + 1 value byte; a tensor info at least an empty name (8) + n_dims (4) +
// one dim (8) + type (4) + offset (8).
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
constexpr size_t kOwnedBufferAlignment = 4096;  // like a page-aligned mapping

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::FLOAT64); }

// Bytes a value of this type needs at minimum (exact for scalars).
uint64_t min_value_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
    case GgufValueType::INT8:
    case GgufValueType::BOOL:
      return 1;
    case GgufValueType::UINT16:
    case GgufValueType::INT16:
      return 2;
    case GgufValueType::UINT32:
    case GgufValueType::INT32:
    case GgufValueType::FLOAT32:
      return 4;
    case GgufValueType::UINT64:
    case GgufValueType::INT64:
    case GgufValueType::FLOAT64:
      return 8;
    case GgufValueType::STRING:
      return 8;
    case GgufValueType::ARRAY:
      return 4 + 8;
  }
  return 1;
}

bool is_integer_type(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
    case GgufValueType::INT8:
    case GgufValueType::UINT16:
    case GgufValueType::INT16:
    case GgufValueType::UINT32:
    case GgufValueType::INT32:
    case GgufValueType::UINT64:
    case GgufValueType::INT64:
      return true;
    default:
      return false;
  }
}

// GGML type ids that exist upstream but that flashmem has no traits for: such a file is
// well-formed, just unsupported, so it gets kUnsupported with the type's name.
const char* foreign_ggml_type_name(uint32_t id) {
  switch (id) {
    case 4:
      return "Q4_2 (removed from GGML)";
    case 5:
      return "Q4_3 (removed from GGML)";
    case 16:
      return "IQ2_XXS";
    case 17:
      return "IQ2_XS";
    case 18:
      return "IQ3_XXS";
    case 19:
      return "IQ1_S";
    case 20:
      return "IQ4_NL";
    case 21:
      return "IQ3_S";
    case 22:
      return "IQ2_S";
    case 23:
      return "IQ4_XS";
    case 29:
      return "IQ1_M";
    case 31:
      return "Q4_0_4_4 (removed from GGUF)";
    case 32:
      return "Q4_0_4_8 (removed from GGUF)";
    case 33:
      return "Q4_0_8_8 (removed from GGUF)";
    case 34:
      return "TQ1_0";
    case 35:
      return "TQ2_0";
    case 36:
      return "IQ4_NL_4_4 (removed from GGUF)";
    case 37:
      return "IQ4_NL_4_8 (removed from GGUF)";
    case 38:
      return "IQ4_NL_8_8 (removed from GGUF)";
    case 39:
      return "MXFP4";
    case 40:
      return "NVFP4";
    case 41:
      return "Q1_0";
    case 42:
      return "Q2_0";
    default:
      return nullptr;
  }
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}
bool checked_add(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}

// Bounds-checked little-endian cursor over the image. Descriptions of what is being read
// are passed as callables so that error text is only built when something fails.
class Reader {
 public:
  Reader(const uint8_t* data, uint64_t size, const std::string& source)
      : data_(data), size_(size), source_(source) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  const std::string& source() const { return source_; }

  template <typename Describe>
  void need(uint64_t n, const Describe& what) const {
    if (n > remaining()) {
      FM_FAIL(ErrorCode::kFormat, source_, ": truncated while reading ", what(), " at byte offset ",
              pos_, " (needs ", n, " bytes, ", remaining(), " left)");
    }
  }

  template <typename T, typename Describe>
  T read(const Describe& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  template <typename Describe>
  std::string read_string(const Describe& what) {
    const uint64_t at = pos_;
    const auto len = read<uint64_t>([&] { return concat_what("length of ", what()); });
    if (len > remaining()) {
      FM_FAIL(ErrorCode::kFormat, source_, ": string length ", len, " of ", what(),
              " at byte offset ", at, " exceeds the ", remaining(), " bytes left in the file");
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

 private:
  static std::string concat_what(const char* a, const std::string& b) { return a + b; }

  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& source_;
};

// Quotes a name from the file for an error message. Names are untrusted: control bytes are
// escaped and very long names are cut, so a hostile key cannot flood or garble the message.
std::string quoted(std::string_view s) {
  constexpr size_t kMaxShown = 96;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || c == '\\' || c == '\'') {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  out += "'";
  if (s.size() > kMaxShown) out += detail::concat(" (cut, ", s.size(), " bytes)");
  return out;
}

GgufValue read_value(Reader& r, GgufValueType type, const std::string& key, int depth);

// Reads an array body (element type, count, elements) of the value of `key`.
std::shared_ptr<GgufArray> read_array(Reader& r, const std::string& key, int depth) {
  const uint64_t at = r.pos();
  FM_CHECK(depth < kMaxArrayDepth, ErrorCode::kFormat, r.source(), ": arrays nested deeper than ",
           kMaxArrayDepth, " levels in key ", quoted(key), " at byte offset ", at);
  const auto elem_raw =
      r.read<uint32_t>([&] { return "array element type of key " + quoted(key); });
  FM_CHECK(valid_value_type(elem_raw), ErrorCode::kFormat, r.source(),
           ": unknown array element type ", elem_raw, " in key ", quoted(key), " at byte offset ",
           at);
  const auto elem_type = static_cast<GgufValueType>(elem_raw);
  const uint64_t count_at = r.pos();
  const auto count = r.read<uint64_t>([&] { return "array length of key " + quoted(key); });
  const uint64_t max_count = r.remaining() / min_value_bytes(elem_type);
  FM_CHECK(count <= max_count, ErrorCode::kFormat, r.source(), ": array count ", count, " of key ",
           quoted(key), " at byte offset ", count_at, " is larger than the ", r.remaining(),
           " bytes left could hold (", gguf_value_type_name(elem_type), " elements)");
  auto arr = std::make_shared<GgufArray>();
  arr->elem_type = elem_type;
  arr->items.reserve(static_cast<size_t>(count));  // bounded by the file size just above
  for (uint64_t i = 0; i < count; ++i)
    arr->items.push_back(read_value(r, elem_type, key, depth + 1));
  return arr;
}

GgufValue read_value(Reader& r, GgufValueType type, const std::string& key, int depth) {
  const auto what = [&] { return "value of key " + quoted(key); };
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufValueType::UINT8:
      v.v = uint64_t{r.read<uint8_t>(what)};
      break;
    case GgufValueType::INT8:
      v.v = int64_t{r.read<int8_t>(what)};
      break;
    case GgufValueType::UINT16:
      v.v = uint64_t{r.read<uint16_t>(what)};
      break;
    case GgufValueType::INT16:
      v.v = int64_t{r.read<int16_t>(what)};
      break;
    case GgufValueType::UINT32:
      v.v = uint64_t{r.read<uint32_t>(what)};
      break;
    case GgufValueType::INT32:
      v.v = int64_t{r.read<int32_t>(what)};
      break;
    case GgufValueType::UINT64:
      v.v = r.read<uint64_t>(what);
      break;
    case GgufValueType::INT64:
      v.v = r.read<int64_t>(what);
      break;
    case GgufValueType::FLOAT32:
      v.v = double{r.read<float>(what)};
      break;
    case GgufValueType::FLOAT64:
      v.v = r.read<double>(what);
      break;
    case GgufValueType::BOOL: {
      const uint64_t at = r.pos();
      const auto b = r.read<uint8_t>(what);
      FM_CHECK(b <= 1, ErrorCode::kFormat, r.source(), ": bool value of key ", quoted(key),
               " at byte offset ", at, " is ", unsigned{b}, " (must be 0 or 1)");
      v.v = b == 1;
      break;
    }
    case GgufValueType::STRING:
      v.v = r.read_string(what);
      break;
    case GgufValueType::ARRAY:
      v.v = read_array(r, key, depth);
      break;
  }
  return v;
}

[[noreturn]] void type_mismatch(std::string_view key, GgufValueType have, const char* want) {
  FM_FAIL(ErrorCode::kFormat, "metadata key ", quoted(key), " has type ",
          gguf_value_type_name(have), ", expected ", want);
}

// Non-throwing conversions used by the bulk array helpers; the throwing accessors are called
// only to produce the error for an element that does not convert.
bool try_i64(const GgufValue& v, int64_t* out) {
  if (const auto* u = std::get_if<uint64_t>(&v.v)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(*u);
    return true;
  }
  if (const auto* s = std::get_if<int64_t>(&v.v)) {
    *out = *s;
    return true;
  }
  return false;
}

std::string element_name(std::string_view key, size_t i) {
  return detail::concat(key, "[", i, "]");
}

}  // namespace

const char* gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
      return "UINT8";
    case GgufValueType::INT8:
      return "INT8";
    case GgufValueType::UINT16:
      return "UINT16";
    case GgufValueType::INT16:
      return "INT16";
    case GgufValueType::UINT32:
      return "UINT32";
    case GgufValueType::INT32:
      return "INT32";
    case GgufValueType::FLOAT32:
      return "FLOAT32";
    case GgufValueType::BOOL:
      return "BOOL";
    case GgufValueType::STRING:
      return "STRING";
    case GgufValueType::ARRAY:
      return "ARRAY";
    case GgufValueType::UINT64:
      return "UINT64";
    case GgufValueType::INT64:
      return "INT64";
    case GgufValueType::FLOAT64:
      return "FLOAT64";
  }
  return "UNKNOWN";
}

// ---- GgufValue / GgufArray accessors ----------------------------------------------------------

uint64_t GgufValue::as_u64(std::string_view key) const {
  if (const auto* u = std::get_if<uint64_t>(&v)) return *u;
  if (const auto* s = std::get_if<int64_t>(&v)) {
    FM_CHECK(*s >= 0, ErrorCode::kFormat, "metadata key ", quoted(key), " is ", *s,
             ", expected a non-negative integer");
    return static_cast<uint64_t>(*s);
  }
  type_mismatch(key, type, "an integer");
}

int64_t GgufValue::as_i64(std::string_view key) const {
  int64_t out = 0;
  if (try_i64(*this, &out)) return out;
  if (const auto* u = std::get_if<uint64_t>(&v)) {
    FM_FAIL(ErrorCode::kFormat, "metadata key ", quoted(key), " is ", *u,
            ", which does not fit a signed 64-bit integer");
  }
  type_mismatch(key, type, "an integer");
}

double GgufValue::as_f64(std::string_view key) const {
  if (const auto* d = std::get_if<double>(&v)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&v)) return static_cast<double>(*u);
  if (const auto* s = std::get_if<int64_t>(&v)) return static_cast<double>(*s);
  type_mismatch(key, type, "a number");
}

bool GgufValue::as_bool(std::string_view key) const {
  if (const auto* b = std::get_if<bool>(&v)) return *b;
  type_mismatch(key, type, "BOOL");
}

const std::string& GgufValue::as_string(std::string_view key) const {
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  type_mismatch(key, type, "STRING");
}

const GgufArray& GgufValue::as_array(std::string_view key) const {
  if (const auto* a = std::get_if<std::shared_ptr<GgufArray>>(&v)) {
    if (*a) return **a;
  }
  type_mismatch(key, type, "ARRAY");
}

std::vector<std::string> GgufArray::strings(std::string_view key) const {
  std::vector<std::string> out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const auto* s = std::get_if<std::string>(&items[i].v);
    out.push_back(s != nullptr ? *s : items[i].as_string(element_name(key, i)));
  }
  return out;
}

std::vector<int64_t> GgufArray::ints(std::string_view key) const {
  std::vector<int64_t> out(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    if (!try_i64(items[i], &out[i])) out[i] = items[i].as_i64(element_name(key, i));
  }
  return out;
}

std::vector<double> GgufArray::floats(std::string_view key) const {
  std::vector<double> out(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    if (const auto* d = std::get_if<double>(&items[i].v)) {
      out[i] = *d;
    } else {
      out[i] = items[i].as_f64(element_name(key, i));
    }
  }
  return out;
}

size_t GgufTensor::row_bytes() const { return ne.empty() ? 0 : ggml_row_bytes(type, ne[0]); }

// ---- GgufFile -----------------------------------------------------------------------------------

struct GgufFile::Impl {
  // The image: either a read-only mapping of the file or an owned aligned copy.
  const uint8_t* data = nullptr;
  uint64_t size = 0;
  void* map_base = nullptr;  // non-null for a mapping
  void* owned = nullptr;     // non-null for an owned copy

  std::string path;
  std::string source;  // how errors name the image
  uint32_t version = 0;
  uint64_t alignment = kDefaultAlignment;
  uint64_t data_offset = 0;

  std::vector<std::string> keys;
  std::vector<GgufValue> values;  // parallel to keys
  std::unordered_map<std::string, size_t> key_index;
  std::vector<GgufTensor> tensors;
  std::unordered_map<std::string, size_t> tensor_index;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (map_base != nullptr) ::munmap(map_base, static_cast<size_t>(size));
    if (owned != nullptr) ::operator delete(owned, std::align_val_t(kOwnedBufferAlignment));
  }

  void parse();
  void parse_tensor_info(Reader& r);
  void locate_tensors();
};

void GgufFile::Impl::parse() {
  Reader r(data, size, source);
  const auto magic = r.read<uint32_t>([] { return std::string("the magic number"); });
  if (magic != kMagic) {
    char shown[5] = {};
    std::memcpy(shown, &magic, 4);
    for (char& c : shown) {
      if (c != 0 && (c < 0x20 || c > 0x7e)) c = '?';
    }
    FM_FAIL(ErrorCode::kFormat, source, ": bad magic 0x", std::hex, magic, std::dec, " (\"", shown,
            "\") at byte offset 0; expected \"GGUF\" — not a GGUF file");
  }
  version = r.read<uint32_t>([] { return std::string("the version"); });
  // A big-endian file (allowed since v3) shows its version byte-swapped.
  const uint32_t swapped = __builtin_bswap32(version);
  FM_CHECK(!(version > 0xffff && swapped >= 1 && swapped <= 3), ErrorCode::kUnsupported, source,
           ": big-endian GGUF (version ", swapped, ") is not supported");
  FM_CHECK(version != 1, ErrorCode::kUnsupported, source,
           ": GGUF version 1 is not supported (it predates 64-bit lengths); "
           "re-convert the model with a current llama.cpp");
  FM_CHECK(version == 2 || version == 3, ErrorCode::kUnsupported, source, ": GGUF version ",
           version, " is not supported (only versions 2 and 3 are)");

  const auto n_tensors = r.read<uint64_t>([] { return std::string("the tensor count"); });
  const auto n_kv = r.read<uint64_t>([] { return std::string("the metadata key/value count"); });
  FM_CHECK(n_kv <= r.remaining() / kMinKvBytes, ErrorCode::kFormat, source, ": n_kv = ", n_kv,
           " (byte offset 16) is impossible: the ", r.remaining(),
           " bytes after the header hold at most ", r.remaining() / kMinKvBytes,
           " key/value pairs");
  FM_CHECK(n_tensors <= r.remaining() / kMinTensorInfoBytes, ErrorCode::kFormat, source,
           ": n_tensors = ", n_tensors, " (byte offset 8) is impossible: the ", r.remaining(),
           " bytes after the header hold at most ", r.remaining() / kMinTensorInfoBytes,
           " tensor infos");

  // Metadata. The counts are bounded above, so these reservations are too.
  keys.reserve(static_cast<size_t>(n_kv));
  values.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint64_t at = r.pos();
    std::string key =
        r.read_string([&] { return detail::concat("the key of metadata entry ", i); });
    FM_CHECK(key_index.find(key) == key_index.end(), ErrorCode::kFormat, source,
             ": duplicate metadata key ", quoted(key), " at byte offset ", at);
    const uint64_t type_at = r.pos();
    const auto type_raw = r.read<uint32_t>([&] { return "the value type of key " + quoted(key); });
    FM_CHECK(valid_value_type(type_raw), ErrorCode::kFormat, source, ": unknown value type ",
             type_raw, " for key ", quoted(key), " at byte offset ", type_at);
    values.push_back(read_value(r, static_cast<GgufValueType>(type_raw), key, 0));
    key_index.emplace(key, keys.size());
    keys.push_back(std::move(key));
  }

  if (const auto it = key_index.find("general.alignment"); it != key_index.end()) {
    const GgufValue& v = values[it->second];
    FM_CHECK(is_integer_type(v.type), ErrorCode::kFormat, source, ": general.alignment has type ",
             gguf_value_type_name(v.type), ", expected an unsigned integer");
    const uint64_t a = v.as_u64("general.alignment");
    // llama.cpp stores it as a u32, hence the 2^31 cap.
    FM_CHECK(a != 0 && (a & (a - 1)) == 0 && a <= (uint64_t{1} << 31), ErrorCode::kFormat, source,
             ": general.alignment = ", a, " is not a power of two in [1, 2^31]");
    alignment = a;
  }

  tensors.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) parse_tensor_info(r);

  // The data section starts at the first aligned offset after the tensor infos.
  const uint64_t header_end = r.pos();
  // header_end ≤ size < 2^63 and alignment ≤ 2^31, so this cannot overflow.
  data_offset = (header_end + alignment - 1) / alignment * alignment;
  if (!tensors.empty()) {
    FM_CHECK(data_offset <= size, ErrorCode::kFormat, source,
             ": the tensor data section would start at byte offset ", data_offset,
             " (header ends at ", header_end, ", alignment ", alignment, "), past the end of the ",
             size, "-byte file");
    locate_tensors();
  }
}

void GgufFile::Impl::parse_tensor_info(Reader& r) {
  const uint64_t at = r.pos();
  const size_t index = tensors.size();
  GgufTensor t;
  t.name = r.read_string([&] { return detail::concat("the name of tensor info ", index); });
  const std::string qname = quoted(t.name);
  FM_CHECK(tensor_index.find(t.name) == tensor_index.end(), ErrorCode::kFormat, source,
           ": duplicate tensor name ", qname, " at byte offset ", at);
  const auto n_dims = r.read<uint32_t>([&] { return "n_dims of tensor " + qname; });
  FM_CHECK(n_dims >= 1 && n_dims <= kMaxDims, ErrorCode::kFormat, source, ": tensor ", qname,
           " has n_dims = ", n_dims, " (must be 1..", kMaxDims, ") at byte offset ", at);
  t.ne.resize(n_dims);
  uint64_t n_elements = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    t.ne[d] = r.read<uint64_t>([&] { return detail::concat("ne[", d, "] of tensor ", qname); });
    // ggml stores dims as int64_t; a zero dim would make rows() divide by zero.
    FM_CHECK(t.ne[d] >= 1 && t.ne[d] <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
             ErrorCode::kFormat, source, ": tensor ", qname, " has invalid dimension ne[", d,
             "] = ", t.ne[d], " at byte offset ", at);
    FM_CHECK(checked_mul(n_elements, t.ne[d], &n_elements) &&
                 n_elements <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
             ErrorCode::kFormat, source, ": element count of tensor ", qname,
             " overflows 64 bits (dimension ", d, ") at byte offset ", at);
  }
  t.n_elements = n_elements;
  const uint64_t type_at = r.pos();
  const auto type_id = r.read<uint32_t>([&] { return "the type of tensor " + qname; });
  const std::optional<GgmlTypeTraits> traits = ggml_type_traits(type_id);
  if (!traits) {
    if (const char* foreign = foreign_ggml_type_name(type_id)) {
      FM_FAIL(ErrorCode::kUnsupported, source, ": tensor ", qname, " uses GGML type ", foreign,
              " (id ", type_id, "), which flashmem does not support");
    }
    FM_FAIL(ErrorCode::kFormat, source, ": tensor ", qname, " has unknown tensor type id ", type_id,
            " at byte offset ", type_at);
  }
  t.type = static_cast<GgmlType>(type_id);
  FM_CHECK(t.ne[0] % traits->block_elems == 0, ErrorCode::kFormat, source, ": tensor ", qname,
           " of type ", traits->name, " has a row length ne[0] = ", t.ne[0],
           " that is not a multiple of the block size ", traits->block_elems,
           " (tensor info at byte offset ", at, ")");
  // Both products are checked: an F32 row of ne[0] = 2^62 elements would otherwise wrap to a
  // byte size of 0 and be accepted.
  uint64_t row_bytes = 0;
  FM_CHECK(checked_mul(t.ne[0] / traits->block_elems, traits->block_bytes, &row_bytes) &&
               checked_mul(t.rows(), row_bytes, &t.n_bytes),
           ErrorCode::kFormat, source, ": byte size of tensor ", qname, " (", traits->name, ", ",
           t.n_elements, " elements) overflows 64 bits (tensor info at byte offset ", at, ")");
  t.offset = r.read<uint64_t>([&] { return "the data offset of tensor " + qname; });
  tensor_index.emplace(t.name, tensors.size());
  tensors.push_back(std::move(t));
}

void GgufFile::Impl::locate_tensors() {
  const uint64_t data_size = size - data_offset;
  for (GgufTensor& t : tensors) {
    FM_CHECK(t.offset % alignment == 0, ErrorCode::kFormat, source, ": tensor ", quoted(t.name),
             " has data offset ", t.offset, " that is not aligned to ", alignment, " bytes");
    uint64_t end = 0;
    FM_CHECK(checked_add(t.offset, t.n_bytes, &end) && end <= data_size, ErrorCode::kFormat, source,
             ": data of tensor ", quoted(t.name), " (", t.n_bytes, " bytes at data offset ",
             t.offset, ", file offset ", data_offset, " + ", t.offset,
             ") runs past the end of the file (", size, " bytes)");
    t.data = data + data_offset + t.offset;
  }
}

GgufFile::GgufFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

GgufFile GgufFile::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->source = "GGUF file " + quoted(path);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FM_CHECK(fd >= 0, ErrorCode::kIo, "cannot open GGUF file ", quoted(path), ": ",
           std::strerror(errno));
  struct stat st {};
  const int stat_rc = ::fstat(fd, &st);
  const int stat_errno = errno;
  if (stat_rc != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    FM_FAIL(ErrorCode::kIo, "cannot read GGUF file ", quoted(path), ": ",
            stat_rc != 0 ? std::strerror(stat_errno) : "not a regular file");
  }
  impl->size = static_cast<uint64_t>(st.st_size);
  if (impl->size > 0) {
    void* p = ::mmap(nullptr, static_cast<size_t>(impl->size), PROT_READ, MAP_PRIVATE, fd, 0);
    const int map_errno = errno;
    ::close(fd);
    FM_CHECK(p != MAP_FAILED, ErrorCode::kIo, "cannot mmap GGUF file ", quoted(path), " (",
             impl->size, " bytes): ", std::strerror(map_errno));
    impl->map_base = p;
    impl->data = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
  impl->parse();
  return GgufFile(std::move(impl));
}

GgufFile GgufFile::from_bytes(const void* data, size_t size) {
  auto impl = std::make_unique<Impl>();
  impl->source = "GGUF image";
  FM_CHECK(data != nullptr || size == 0, ErrorCode::kInvalidArgument,
           "GgufFile::from_bytes: null data");
  impl->owned = ::operator new(size == 0 ? 1 : size, std::align_val_t(kOwnedBufferAlignment));
  if (size > 0) std::memcpy(impl->owned, data, size);
  impl->data = static_cast<const uint8_t*>(impl->owned);
  impl->size = size;
  impl->parse();
  return GgufFile(std::move(impl));
}

GgufFile GgufFile::from_writer(uint64_t size, const std::function<void(uint8_t*)>& write, std::string_view source) {
  FM_CHECK(size < (uint64_t{1} << 62), ErrorCode::kInvalidArgument, source, ": an image of ", size, " bytes");
  auto impl = std::make_unique<Impl>();
  impl->source = std::string(source);
  try {
    impl->owned = ::operator new(size == 0 ? 1 : static_cast<size_t>(size), std::align_val_t(kOwnedBufferAlignment));
  } catch (const std::bad_alloc&) {
    FM_FAIL(ErrorCode::kOutOfMemory, source, " needs ", size, " bytes of host memory, which could not be allocated");
  }
  impl->data = static_cast<const uint8_t*>(impl->owned);
  impl->size = size;
  write(static_cast<uint8_t*>(impl->owned));
  impl->parse();
  return GgufFile(std::move(impl));
}

uint64_t GgufFile::release_tensor_data() {
  Impl& m = *impl_;
  if (m.data == nullptr || m.data_offset >= m.size) return 0;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<uintptr_t>(m.data) + m.data_offset + page - 1) / page * page;
  const auto end = (reinterpret_cast<uintptr_t>(m.data) + m.size) / page * page;
  if (end <= begin) return 0;
  // Anonymous pages (an owned image) read as zeros afterwards; a private file mapping's read the
  // file again. Either way nothing dangles.
  if (::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED) != 0) return 0;
  return end - begin;
}

uint32_t GgufFile::version() const { return impl_->version; }
uint64_t GgufFile::alignment() const { return impl_->alignment; }
const std::string& GgufFile::path() const { return impl_->path; }
uint64_t GgufFile::file_size() const { return impl_->size; }
const std::vector<std::string>& GgufFile::keys() const { return impl_->keys; }

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = impl_->key_index.find(std::string(key));
  return it == impl_->key_index.end() ? nullptr : &impl_->values[it->second];
}

const GgufValue& GgufFile::get(std::string_view key) const {
  const GgufValue* v = find(key);
  FM_CHECK(v != nullptr, ErrorCode::kFormat, impl_->source, ": missing metadata key ", quoted(key));
  return *v;
}

uint32_t GgufFile::get_u32(std::string_view key) const {
  const uint64_t v = get(key).as_u64(key);
  FM_CHECK(v <= std::numeric_limits<uint32_t>::max(), ErrorCode::kFormat, "metadata key ",
           quoted(key), " is ", v, ", which does not fit an unsigned 32-bit integer");
  return static_cast<uint32_t>(v);
}
uint64_t GgufFile::get_u64(std::string_view key) const { return get(key).as_u64(key); }
int64_t GgufFile::get_i64(std::string_view key) const { return get(key).as_i64(key); }
float GgufFile::get_f32(std::string_view key) const {
  return static_cast<float>(get(key).as_f64(key));
}
bool GgufFile::get_bool(std::string_view key) const { return get(key).as_bool(key); }
const std::string& GgufFile::get_string(std::string_view key) const {
  return get(key).as_string(key);
}
const GgufArray& GgufFile::get_array(std::string_view key) const { return get(key).as_array(key); }

uint32_t GgufFile::get_u32_or(std::string_view key, uint32_t dflt) const {
  return has(key) ? get_u32(key) : dflt;
}
float GgufFile::get_f32_or(std::string_view key, float dflt) const {
  return has(key) ? get_f32(key) : dflt;
}
bool GgufFile::get_bool_or(std::string_view key, bool dflt) const {
  return has(key) ? get_bool(key) : dflt;
}
std::string GgufFile::get_string_or(std::string_view key, std::string_view dflt) const {
  return has(key) ? get_string(key) : std::string(dflt);
}

const std::vector<GgufTensor>& GgufFile::tensors() const { return impl_->tensors; }

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  const auto it = impl_->tensor_index.find(std::string(name));
  return it == impl_->tensor_index.end() ? nullptr : &impl_->tensors[it->second];
}

const GgufTensor& GgufFile::tensor(std::string_view name) const {
  const GgufTensor* t = find_tensor(name);
  FM_CHECK(t != nullptr, ErrorCode::kFormat, impl_->source, ": missing tensor ", quoted(name));
  return *t;
}

}  // namespace flashmem
