// The samples of an eval run, whatever the suite: prompt text (chat template applied), answers,
// generation length, stop strings and the suite's scorer.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace flashmem {
class Engine;
}

namespace flashmem::cli {

struct SuiteItem {
  std::string suite, task;
  int64_t length = 0;  // target length (RULER) or the context limit
  int64_t index = 0;
  std::string prompt_id;
  std::string prompt;
  std::vector<std::string> answers;
  int max_new_tokens = 0;
  std::vector<std::string> stop_strings;
  std::function<double(const std::string&)> score;  // in [0, 1]
  bool synthetic_substitute = false;
  nlohmann::json extra = nlohmann::json::object();  // merged into the record's extra
};

struct SuiteRequest {
  std::string suite;
  std::vector<int64_t> lengths;
  std::vector<std::string> tasks;  // RULER; {"all"} for every task
  std::vector<std::string> haystacks;  // needle: one directory per text family (task = its name)
  int samples = 20;                    // per task and length (RULER, needle) or the first N records
  uint64_t seed = 0;
  std::string data;        // LongBench-v2 / LongMemEval file
  int64_t max_length = 0;  // context limit for the file suites
};

// Builds every item up front, so a bad task, length or data file is reported before anything
// is run or written. Error(kInvalidArgument / kFormat / kOutOfRange) with a clear message.
std::vector<SuiteItem> make_suite_items(const Engine& eng, const SuiteRequest& req);

}  // namespace flashmem::cli
