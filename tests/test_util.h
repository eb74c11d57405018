// Shared helpers for flashmem tests.
#pragma once

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace flashmem::test {

// Path of the default model. Tests that need it fail (never skip) when it is missing: the
// test command always installs it first.
inline std::string default_model_path() {
  if (const char* env = std::getenv("FLASHMEM_MODEL"); env && *env) return env;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : ".") + "/.cache/flashmem/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

inline std::string require_default_model() {
  const std::string p = default_model_path();
  if (!std::filesystem::exists(p))
    ADD_FAILURE() << "default model not found at " << p << "; run scripts/fetch-model.sh";
  return p;
}

// The second model the tests run, Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2 graph, 32K context),
// installed by `scripts/fetch-model.sh qwen2.5-coder-0.5b`; $FLASHMEM_QWEN_MODEL overrides.
// Missing, the tests that need it fail, as for the default model.
inline std::string require_qwen_model() {
  std::string p;
  if (const char* env = std::getenv("FLASHMEM_QWEN_MODEL"); env && *env) {
    p = env;
  } else {
    const char* home = std::getenv("HOME");
    p = std::string(home ? home : ".") + "/.cache/flashmem/models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf";
  }
  if (!std::filesystem::exists(p))
    ADD_FAILURE() << "Qwen2.5 model not found at " << p << "; run scripts/fetch-model.sh qwen2.5-coder-0.5b";
  return p;
}

// n little-endian floats from a fixture file (a test failure when it is missing or short).
inline std::vector<float> read_f32(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << path;
  std::vector<float> v(n);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(float)));
  EXPECT_EQ(static_cast<size_t>(in.gcount()), n * sizeof(float)) << path << " is truncated";
  return v;
}

// ‖a − b‖₂ / ‖b‖₂ in double; NaN if either side has a NaN.
inline double rel_l2(const float* a, const float* b, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

inline bool all_finite(const float* a, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(a[i])) return false;
  return true;
}

// Runs the flashmem CLI with `args` (shell words), capturing stdout and stderr together.
struct CmdResult {
  int code;
  std::string out;
};
inline CmdResult run_cli(const std::string& args) {
  const std::string cmd = std::string(FLASHMEM_CLI_PATH) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace flashmem::test
