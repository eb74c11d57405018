// The end-to-end references in tests/fixtures/logits (see tests/fixtures/README.md): a prompt's
// token ids, the last-position logits of the float64 oracle and of llama.cpp, and both greedy
// continuations.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"

namespace flashmem::test {

struct LogitsFixture {
  std::string name;
  std::vector<int32_t> tokens;
  std::vector<float> f64_logits, llamacpp_logits;
  std::vector<int32_t> f64_greedy, llamacpp_greedy;
};

// logits/<file>.json, .f64.bin and .llamacpp.bin; the continuations are stored under
// "f64_<greedy_key>" and "llamacpp_<greedy_key>".
inline LogitsFixture load_logits_fixture(const std::string& name, const std::string& file,
                                         const std::string& greedy_key) {
  const std::string dir = std::string(FLASHMEM_FIXTURES_DIR) + "/logits/";
  std::ifstream in(dir + file + ".json");
  EXPECT_TRUE(in.good()) << "missing fixture " << dir << file << ".json";
  const auto j = nlohmann::json::parse(in);
  LogitsFixture f;
  f.name = name;
  f.tokens = j.at("tokens").get<std::vector<int32_t>>();
  const size_t n_vocab = j.at("n_vocab").get<size_t>();
  f.f64_logits = read_f32(dir + file + ".f64.bin", n_vocab);
  f.llamacpp_logits = read_f32(dir + file + ".llamacpp.bin", n_vocab);
  f.f64_greedy = j.at("f64_" + greedy_key).get<std::vector<int32_t>>();
  f.llamacpp_greedy = j.at("llamacpp_" + greedy_key).get<std::vector<int32_t>>();
  return f;
}

}  // namespace flashmem::test
