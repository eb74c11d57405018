// flashmem/core/error.h — the error policy of the library.
//
// Library code never aborts. User-facing problems (bad files, bad flags, budgets that do
// not fit) throw flashmem::Error carrying a code and a message that names the offending
// thing. FM_CHECK is for conditions that depend on input; FM_ICHECK is for internal
// invariants (a failure is a bug in flashmem, still reported as an exception).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace flashmem {

enum class ErrorCode {
  kInvalidArgument,  // a flag, option or API argument is out of its domain
  kIo,               // a file could not be opened, mapped or read
  kFormat,           // a file is malformed (GGUF, safetensors, JSON, fixtures)
  kUnsupported,      // well-formed but not supported (architecture, tensor type, template)
  kOutOfRange,       // a request exceeds a limit (context length, KV budget)
  kOutOfMemory,      // an allocation or reservation could not be satisfied
  kInternal,         // an invariant of flashmem itself was violated
  kBusy,             // at capacity now (a server's queue is full); try again later
};

const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message)
      : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_internal(const char* file, int line, const char* cond,
                                 const std::string& msg);
}  // namespace detail

// Throws Error(code, message) with the message built from the remaining arguments.
#define FM_CHECK(cond, code, ...)                                                \
  do {                                                                           \
    if (!(cond)) throw ::flashmem::Error((code), ::flashmem::detail::concat(__VA_ARGS__)); \
  } while (0)

#define FM_FAIL(code, ...) throw ::flashmem::Error((code), ::flashmem::detail::concat(__VA_ARGS__))

// Internal invariant: a failure is a flashmem bug; reported with file and line.
#define FM_ICHECK(cond, ...)                                                          \
  do {                                                                                \
    if (!(cond))                                                                      \
      ::flashmem::detail::throw_internal(__FILE__, __LINE__, #cond,                   \
                                         ::flashmem::detail::concat("" __VA_OPT__(,) __VA_ARGS__)); \
  } while (0)

}  // namespace flashmem
