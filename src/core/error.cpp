#include "core/error.h"

namespace flashmem {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kIo: return "I/O error";
    case ErrorCode::kFormat: return "format error";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kOutOfRange: return "out of range";
    case ErrorCode::kOutOfMemory: return "out of memory";
    case ErrorCode::kInternal: return "internal error";
    case ErrorCode::kBusy: return "busy";
  }
  return "error";
}

namespace detail {
void throw_internal(const char* file, int line, const char* cond, const std::string& msg) {
  throw Error(ErrorCode::kInternal,
              concat("internal check failed at ", file, ":", line, ": ", cond,
                     msg.empty() ? "" : " — ", msg));
}
}  // namespace detail

}  // namespace flashmem
