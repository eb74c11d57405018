// flashmem/eval/json_input.h — checked access to user-supplied JSON data sets (internal to
// src/eval).
//
// Every failure throws Error(kFormat) (Error(kIo) when the file cannot be read) with a message
// that starts with `where`, the caller's description of the record ("data.json: record 3
// (_id \"66f3\")"), and names the field and what was wrong with it.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace flashmem::eval::detail {

using Json = nlohmann::json;

// The whole file as bytes; Error(kIo) naming the path when it cannot be opened or read.
std::string read_text_file(const std::string& path);

// Parses one JSON document; Error(kFormat) "<source>: malformed JSON: ..." on a syntax error.
Json parse_json(const std::string& text, const std::string& source);

// A JSON array document, or JSON Lines (one object per non-blank line) when the first
// non-blank byte is not '['. Each element is returned as it is (the caller checks types).
std::vector<Json> parse_json_records(const std::string& text, const std::string& source);

// A readable name of the JSON type of `v` ("string", "number", "object", ...).
const char* json_type_name(const Json& v);

// `obj[name]`; Error(kFormat) when `obj` is not an object or the field is missing.
const Json& json_field(const Json& obj, const char* name, const std::string& where);
// The field as a string / array / object / bool; Error(kFormat) on a missing field or a wrong
// type.
std::string json_string(const Json& obj, const char* name, const std::string& where);
const Json& json_array(const Json& obj, const char* name, const std::string& where);
bool json_bool(const Json& obj, const char* name, const std::string& where);
// An element of an array that must be a string.
std::string json_string_at(const Json& arr, size_t i, const std::string& where,
                           const std::string& what);

}  // namespace flashmem::eval::detail
