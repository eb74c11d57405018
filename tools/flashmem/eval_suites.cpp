#include "eval_suites.h"

#include <algorithm>

#include "core/error.h"
#include "engine/engine.h"
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

}  // namespace

std::vector<SuiteItem> make_suite_items(const Engine& eng, const SuiteRequest& req) {
  if (req.suite == "ruler") return ruler_items(eng, req);
  FM_FAIL(ErrorCode::kInvalidArgument, "unknown suite '", req.suite, "'");
}

}  // namespace flashmem::cli
