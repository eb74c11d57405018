#include "eval_suites.h"

#include <algorithm>

#include "core/error.h"
#include "engine/engine.h"
#include "eval/longbench_v2.h"
#include "eval/longmemeval.h"
#include "eval/needle.h"
#include "eval/ruler.h"

namespace flashmem::cli {

namespace {

std::vector<SuiteItem> ruler_items(const Engine& eng, const SuiteRequest& req) {
  std::vector<std::string> tasks = req.tasks;
  if (tasks.empty() || (tasks.size() == 1 && tasks[0] == "all")) tasks = eval::ruler_tasks();
  const auto& known = eval::ruler_tasks();
  for (const auto& t : tasks)
    FM_CHECK(std::find(known.begin(), known.end(), t) != known.end(), ErrorCode::kInvalidArgument,
             "unknown RULER task '", t, "'");
  FM_CHECK(!req.lengths.empty(), ErrorCode::kInvalidArgument, "RULER needs --lengths");
  FM_CHECK(req.data.empty(), ErrorCode::kInvalidArgument, "--data ", req.data,
           " is for --suite longbench-v2 or longmemeval: RULER generates its samples (drop --data)");
  const ChatTemplate& chat = eng.chat();
  eval::RulerGenerator gen(eng.tokenizer(), &chat, eval::RulerSources::load_default());
  std::vector<SuiteItem> items;
  for (int64_t len : req.lengths)
    for (const auto& task : tasks)
      for (int64_t i = 0; i < req.samples; ++i) {
        eval::RulerSample s = gen.generate(task, len, req.seed, i);
        SuiteItem it;
        it.suite = "ruler";
        it.task = task;
        it.length = len;
        it.index = i;
        it.prompt_id = "ruler/" + task + "/" + std::to_string(len) + "/seed" + std::to_string(req.seed) + "/" + std::to_string(i);
        it.prompt = std::move(s.prompt);
        it.answers = s.answers;
        it.max_new_tokens = s.tokens_to_generate;
        it.stop_strings = chat.stop_strings();
        const bool all = s.metric == "all";
        const auto answers = s.answers;
        it.score = [all, answers](const std::string& pred) {
          return all ? eval::score_string_match_all(pred, answers) : eval::score_string_match_part(pred, answers);
        };
        it.synthetic_substitute = s.synthetic_substitute;
        items.push_back(std::move(it));
      }
  return items;
}

// Needle retrieval over folders of text: one task per family (directory basename); samples
// per family and length, the needle's shape rotating with the sample index (eval/needle.h).
std::vector<SuiteItem> needle_items(const Engine& eng, const SuiteRequest& req) {
  FM_CHECK(!req.haystacks.empty(), ErrorCode::kInvalidArgument, "--suite needle needs --haystack DIR...");
  FM_CHECK(!req.lengths.empty(), ErrorCode::kInvalidArgument, "--suite needle needs --lengths");
  const auto families = eval::load_needle_families(req.haystacks);
  const ChatTemplate& chat = eng.chat();
  eval::NeedleGenerator gen(eng.tokenizer(), &chat, eval::RulerSources::load_default().words);
  std::vector<SuiteItem> items;
  for (int64_t len : req.lengths)
    for (const auto& fam : families)
      for (int64_t i = 0; i < req.samples; ++i) {
        eval::NeedleSample s = gen.generate(fam, len, req.seed, i);
        SuiteItem it;
        it.suite = "needle";
        it.task = fam.name;
        it.length = len;
        it.index = i;
        it.prompt_id = "needle/" + fam.name + "/" + std::to_string(len) + "/seed" + std::to_string(req.seed) + "/" +
                       std::to_string(i);
        it.prompt = std::move(s.prompt);
        it.answers = s.answers;
        it.max_new_tokens = s.tokens_to_generate;
        it.stop_strings = chat.stop_strings();
        const auto answers = s.answers;
        it.score = [answers](const std::string& pred) { return eval::score_string_match_part(pred, answers); };
        it.extra = {{"needle_shape", s.shape}, {"needle_depth", s.depth}};
        items.push_back(std::move(it));
      }
  return items;
}

const ChatTemplate* chat_or_null(const Engine& eng) {
  try {
    return &eng.chat();
  } catch (const Error&) {
    return nullptr;  // raw prompt, no template
  }
}

// LongBench-v2: 4-way multiple choice; the official decoding is 128 new tokens (0-shot).
std::vector<SuiteItem> longbench_items(const Engine& eng, const SuiteRequest& req) {
  FM_CHECK(!req.data.empty(), ErrorCode::kInvalidArgument,
           "--suite longbench-v2 needs --data FILE (the public data.json or JSON Lines)");
  const auto records = eval::load_longbench_v2(req.data);
  const ChatTemplate* chat = chat_or_null(eng);
  constexpr int kGen = 128;
  std::vector<SuiteItem> items;
  for (size_t i = 0; i < records.size() && static_cast<int64_t>(i) < req.samples; ++i) {
    const auto& r = records[i];
    const auto p = eval::longbench_v2_prompt(r, eng.tokenizer(), chat, req.max_length - kGen);
    SuiteItem it;
    it.suite = "longbench-v2";
    it.task = r.domain.empty() ? "all" : r.domain;
    it.length = req.max_length;
    it.index = static_cast<int64_t>(i);
    it.prompt_id = "longbench-v2/" + r.id;
    it.prompt = p.prompt;
    it.answers = {std::string(1, r.answer)};
    it.max_new_tokens = kGen;
    if (chat) it.stop_strings = chat->stop_strings();
    it.score = [r](const std::string& pred) { return eval::score_longbench_v2(pred, r); };
    items.push_back(std::move(it));
  }
  return items;
}

// LongMemEval: short free-form answers scored by normalised string match (see longmemeval.h).
std::vector<SuiteItem> longmemeval_items(const Engine& eng, const SuiteRequest& req) {
  FM_CHECK(!req.data.empty(), ErrorCode::kInvalidArgument,
           "--suite longmemeval needs --data FILE (longmemeval_oracle.json, _s.json, ...)");
  const auto records = eval::load_longmemeval(req.data);
  const ChatTemplate* chat = chat_or_null(eng);
  constexpr int kGen = 64;
  std::vector<SuiteItem> items;
  for (size_t i = 0; i < records.size() && static_cast<int64_t>(i) < req.samples; ++i) {
    const auto& r = records[i];
    const auto p = eval::longmemeval_prompt(r, eng.tokenizer(), chat, req.max_length - kGen);
    SuiteItem it;
    it.suite = "longmemeval";
    it.task = r.question_type;
    it.length = req.max_length;
    it.index = static_cast<int64_t>(i);
    it.prompt_id = "longmemeval/" + r.question_id;
    it.prompt = p.prompt;
    it.answers = {r.answer};
    it.max_new_tokens = kGen;
    if (chat) it.stop_strings = chat->stop_strings();
    it.score = [r](const std::string& pred) { return eval::score_longmemeval(pred, r); };
    items.push_back(std::move(it));
  }
  return items;
}

}  // namespace

std::vector<SuiteItem> make_suite_items(const Engine& eng, const SuiteRequest& req) {
  if (req.suite == "ruler") return ruler_items(eng, req);
  if (req.suite == "longbench-v2") return longbench_items(eng, req);
  if (req.suite == "longmemeval") return longmemeval_items(eng, req);
  if (req.suite == "needle") return needle_items(eng, req);
  FM_FAIL(ErrorCode::kInvalidArgument, "unknown suite '", req.suite, "'");
}

}  // namespace flashmem::cli
