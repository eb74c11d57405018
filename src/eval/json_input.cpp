// flashmem/eval/json_input.cpp — checked access to user-supplied JSON data sets.
#include "eval/json_input.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace flashmem::eval::detail {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FM_CHECK(in, ErrorCode::kIo, path, ": cannot open the file");
  std::ostringstream os;
  os << in.rdbuf();
  FM_CHECK(!in.bad(), ErrorCode::kIo, path, ": read error");
  return os.str();
}

Json parse_json(const std::string& text, const std::string& source) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    FM_FAIL(ErrorCode::kFormat, source, ": malformed JSON: ", e.what());
  }
}

std::vector<Json> parse_json_records(const std::string& text, const std::string& source) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  FM_CHECK(first != std::string::npos, ErrorCode::kFormat, source,
           ": empty file (expected a JSON array or JSON Lines)");
  std::vector<Json> out;
  if (text[first] == '[') {
    Json doc = parse_json(text, source);
    for (auto& v : doc) out.push_back(std::move(v));
    return out;
  }
  // JSON Lines.
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    ++line_no;
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    out.push_back(parse_json(line, source + " line " + std::to_string(line_no)));
  }
  return out;
}

const char* json_type_name(const Json& v) { return v.type_name(); }

const Json& json_field(const Json& obj, const char* name, const std::string& where) {
  FM_CHECK(obj.is_object(), ErrorCode::kFormat, where, ": expected a JSON object, got ",
           json_type_name(obj));
  const auto it = obj.find(name);
  FM_CHECK(it != obj.end(), ErrorCode::kFormat, where, ": field '", name, "' is missing");
  return *it;
}

std::string json_string(const Json& obj, const char* name, const std::string& where) {
  const Json& v = json_field(obj, name, where);
  FM_CHECK(v.is_string(), ErrorCode::kFormat, where, ": field '", name,
           "' must be a string, got ", json_type_name(v));
  return v.get<std::string>();
}

const Json& json_array(const Json& obj, const char* name, const std::string& where) {
  const Json& v = json_field(obj, name, where);
  FM_CHECK(v.is_array(), ErrorCode::kFormat, where, ": field '", name,
           "' must be an array, got ", json_type_name(v));
  return v;
}

bool json_bool(const Json& obj, const char* name, const std::string& where) {
  const Json& v = json_field(obj, name, where);
  FM_CHECK(v.is_boolean(), ErrorCode::kFormat, where, ": field '", name,
           "' must be a boolean, got ", json_type_name(v));
  return v.get<bool>();
}

std::string json_string_at(const Json& arr, size_t i, const std::string& where,
                           const std::string& what) {
  const Json& v = arr.at(i);
  FM_CHECK(v.is_string(), ErrorCode::kFormat, where, ": ", what, "[", i,
           "] must be a string, got ", json_type_name(v));
  return v.get<std::string>();
}

}  // namespace flashmem::eval::detail
