// Tests of the evaluation data-set loaders: LongBench v2 (src/eval/longbench_v2.h), LongMemEval
// (src/eval/longmemeval.h), middle truncation (src/eval/truncation.h) and the SQuAD / HotpotQA
// backed RULER qa_1 / qa_2 (src/eval/ruler.h). Fixtures: tests/fixtures/eval/ (hand-made).
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "core/error.h"
#include "eval/longbench_v2.h"
#include "eval/longmemeval.h"
#include "eval/ruler.h"
#include "eval/truncation.h"
#include "io/chat_template.h"
#include "io/gguf.h"
#include "io/tokenizer.h"
#include "test_util.h"

namespace flashmem::eval {
namespace {

std::string fixture(const std::string& name) {
  return std::string(FLASHMEM_FIXTURES_DIR) + "/eval/" + name;
}

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

struct Model {
  Tokenizer tok;
  ChatTemplate chat;
};

const Model& model() {
  static std::unique_ptr<Model> m = [] {
    GgufFile f = GgufFile::open(test::require_default_model());
    return std::unique_ptr<Model>(new Model{Tokenizer::from_gguf(f), ChatTemplate::from_gguf(f)});
  }();
  return *m;
}

int64_t n_tokens(const std::string& text) {
  return static_cast<int64_t>(model().tok.encode(text).size());
}

// Runs `f`, expects Error(kFormat) and returns its message ("" and a failure otherwise).
template <typename F>
std::string format_error(F&& f) {
  try {
    f();
    ADD_FAILURE() << "expected Error(kFormat)";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFormat) << e.what();
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected flashmem::Error, got: " << e.what();
  }
  return "";
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0u) != 0x80u) return false;
    i += len;
  }
  return true;
}

// ---- LongBench v2 ------------------------------------------------------------------------------

TEST(EvalLoaders, LongBenchV2ParsesJsonAndJsonl) {
  const auto recs = load_longbench_v2(fixture("longbench_v2.json"));
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[0].id, "lb-001");
  EXPECT_EQ(recs[0].domain, "Single-Document QA");
  EXPECT_EQ(recs[0].sub_domain, "Novel");
  EXPECT_EQ(recs[0].difficulty, "easy");
  EXPECT_EQ(recs[0].length, "short");
  EXPECT_EQ(recs[0].choices[1], "Blue");
  EXPECT_EQ(recs[0].answer, 'B');
  EXPECT_EQ(recs[1].answer, 'A');
  EXPECT_EQ(recs[2].answer, 'D');
  EXPECT_TRUE(contains(recs[1].context, "def load_config(path):\n"));
  EXPECT_TRUE(contains(recs[2].context, "CLOSING-MARKER"));

  const auto lines = load_longbench_v2(fixture("longbench_v2.jsonl"));
  ASSERT_EQ(lines.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(lines[i].id, recs[i].id);
    EXPECT_EQ(lines[i].question, recs[i].question);
    EXPECT_EQ(lines[i].choices, recs[i].choices);
    EXPECT_EQ(lines[i].context, recs[i].context);
  }
}

TEST(EvalLoaders, LongBenchV2PromptShape) {
  const auto recs = load_longbench_v2(fixture("longbench_v2.json"));
  const LongBenchV2Record& r = recs[0];
  const std::string u = longbench_v2_user_prompt(r, r.context);
  const size_t text = u.find("<text>\n" + r.context + "\n</text>");
  const size_t q = u.find("What is the correct answer to this question: " + r.question);
  const size_t a = u.find("(A) Red\n(B) Blue\n(C) Green\n(D) Yellow\n");
  const size_t fmt = u.find("\"The correct answer is (insert answer here)\"");
  ASSERT_NE(text, std::string::npos);
  ASSERT_NE(q, std::string::npos);
  ASSERT_NE(a, std::string::npos);
  ASSERT_NE(fmt, std::string::npos);
  EXPECT_LT(text, q);
  EXPECT_LT(q, a);
  EXPECT_LT(a, fmt);

  // With the chat template: one user turn, assistant turn opened, token count reported.
  const LongBenchV2Prompt p = longbench_v2_prompt(r, model().tok, &model().chat, 4096);
  EXPECT_FALSE(p.truncated);
  EXPECT_EQ(p.prompt.rfind("<|im_start|>", 0), 0u);
  EXPECT_TRUE(contains(p.prompt, u));
  EXPECT_EQ(p.prompt.substr(p.prompt.size() - 22), "<|im_start|>assistant\n");
  EXPECT_EQ(p.n_tokens, n_tokens(p.prompt));
  EXPECT_EQ(p.kept_context_tokens, p.context_tokens);
  // Without a template the prompt is the user message itself.
  EXPECT_EQ(longbench_v2_prompt(r, model().tok, nullptr, 4096).prompt, u);
}

TEST(EvalLoaders, LongBenchV2AnswerExtraction) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"The correct answer is (B)", "B"},
      {"The correct answer is C", "C"},
      {"The correct answer is (A).", "A"},
      {"**The correct answer is (D)**", "D"},
      {"The correct answer is **(B)**", "B"},
      {"The correct answer is: A", "A"},
      {"the correct answer is (c)", ""},  // lowercase letters are not answer letters
      {"Let me think. Paragraph 3 says so.\nThe correct answer is (C)", "C"},
      {"The correct answer is (E). On reflection, the correct answer is (A).", "A"},
      {"", ""},
      {"I believe it is B.", ""},
      {"(B)", ""},
      {"The correct answer is (E)", ""},
      {"The correct answer is Apple", ""},
      {"The correct answer isB", ""},
      {"The correct answer is", ""},
      {"The correct answer is (insert answer here)", ""},
  };
  for (const auto& [text, want] : cases) EXPECT_EQ(extract_longbench_v2_answer(text), want) << text;

  const auto recs = load_longbench_v2(fixture("longbench_v2.json"));
  EXPECT_DOUBLE_EQ(score_longbench_v2("The correct answer is (B)", recs[0]), 1.0);
  EXPECT_DOUBLE_EQ(score_longbench_v2("The correct answer is (A)", recs[0]), 0.0);
  EXPECT_DOUBLE_EQ(score_longbench_v2("Blue", recs[0]), 0.0);
  EXPECT_DOUBLE_EQ(score_longbench_v2("**The correct answer is: D**", recs[2]), 1.0);
}

TEST(EvalLoaders, LongBenchV2MiddleTruncation) {
  const auto recs = load_longbench_v2(fixture("longbench_v2.json"));
  const LongBenchV2Record& r = recs[2];
  const Model& m = model();
  const int64_t full = n_tokens(render_user_prompt(&m.chat, longbench_v2_user_prompt(r, r.context)));
  ASSERT_GT(full, 2000);  // the fixture's long context
  for (const int64_t limit : {300, 457, 1000, 1601}) {
    SCOPED_TRACE(limit);
    const LongBenchV2Prompt p = longbench_v2_prompt(r, m.tok, &m.chat, limit);
    EXPECT_TRUE(p.truncated);
    EXPECT_EQ(p.n_tokens, n_tokens(p.prompt));
    EXPECT_LE(p.n_tokens, limit);
    EXPECT_GE(p.n_tokens, limit - 4);  // the budget is used, not just respected
    EXPECT_LT(p.kept_context_tokens, p.context_tokens);
    // The start and the end of the context survive; its middle does not.
    EXPECT_TRUE(contains(p.prompt, "<text>\nOPENING-MARKER: the ledger"));
    EXPECT_TRUE(contains(p.prompt, "crate 999 in aisle 12.\n</text>"));
    EXPECT_FALSE(contains(p.prompt, "Entry 100:"));
    // Instructions, question and choices are never cut.
    EXPECT_TRUE(contains(p.prompt, "What is the correct answer to this question: " + r.question));
    EXPECT_TRUE(contains(p.prompt, "(D) Aisle 12\n"));
    EXPECT_TRUE(contains(p.prompt, "(insert answer here)"));
  }
  // Exactly at the limit: a no-op.
  const LongBenchV2Prompt same = longbench_v2_prompt(r, m.tok, &m.chat, full);
  EXPECT_FALSE(same.truncated);
  EXPECT_EQ(same.n_tokens, full);
  EXPECT_TRUE(contains(same.prompt, r.context));
  // Too small for the question alone.
  try {
    (void)longbench_v2_prompt(r, m.tok, &m.chat, 40);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfRange);
  }
}

TEST(EvalLoaders, MiddleTruncationKeepsUtf8AndHalves) {
  const Model& m = model();
  std::string ctx = "START ";
  for (int i = 0; i < 300; ++i) ctx += "naïve café 漢字テキスト " + std::to_string(i) + " ";
  ctx += "END";
  const PromptBuilder build = [](const std::string& c) { return "Q: [" + c + "]"; };
  for (const int64_t limit : {50, 123, 400}) {
    SCOPED_TRACE(limit);
    const FittedContext f = truncate_context_middle(m.tok, ctx, build, limit);
    EXPECT_TRUE(f.truncated);
    EXPECT_EQ(f.prompt, build(f.context));
    EXPECT_EQ(f.prompt_tokens, n_tokens(f.prompt));
    EXPECT_LE(f.prompt_tokens, limit);
    EXPECT_GE(f.prompt_tokens, limit - 4);
    EXPECT_TRUE(valid_utf8(f.context));
    EXPECT_EQ(f.context.rfind("START naïve", 0), 0u);
    EXPECT_EQ(f.context.substr(f.context.size() - 7), "299 END");
    // Head and tail hold about half the kept tokens each: the seam sits near the middle.
    const int64_t head = n_tokens(f.context.substr(0, f.context.size() / 2));
    EXPECT_NEAR(static_cast<double>(head), static_cast<double>(f.kept_context_tokens) / 2.0,
                static_cast<double>(f.kept_context_tokens) / 4.0 + 4.0);
  }
  const FittedContext all = truncate_context_middle(m.tok, "short text", build, 100);
  EXPECT_FALSE(all.truncated);
  EXPECT_EQ(all.context, "short text");
  EXPECT_EQ(all.kept_context_tokens, all.context_tokens);
}

// ---- LongMemEval -------------------------------------------------------------------------------

TEST(EvalLoaders, LongMemEvalParses) {
  const auto recs = load_longmemeval(fixture("longmemeval.json"));
  ASSERT_EQ(recs.size(), 3u);
  const LongMemEvalRecord& r = recs[0];
  EXPECT_EQ(r.question_id, "lme-q1");
  EXPECT_EQ(r.question_type, "single-session-user");
  EXPECT_EQ(r.answer, "a golden retriever");
  EXPECT_EQ(r.question_date, "2023/06/01 (Thu) 10:00");
  ASSERT_EQ(r.sessions.size(), 2u);
  EXPECT_EQ(r.sessions[1].id, "s2");
  EXPECT_EQ(r.sessions[1].date, "2023/05/25 (Thu) 18:40");
  ASSERT_EQ(r.sessions[1].turns.size(), 2u);
  EXPECT_EQ(r.sessions[1].turns[0].role, "user");
  EXPECT_TRUE(r.sessions[1].turns[0].has_answer);
  EXPECT_FALSE(r.sessions[1].turns[1].has_answer);
  EXPECT_FALSE(r.sessions[0].turns[0].has_answer);  // absent in the file
  EXPECT_EQ(r.answer_session_ids, std::vector<std::string>{"s2"});
  EXPECT_EQ(recs[1].answer, "3");  // a number in the file
  EXPECT_FALSE(recs[0].is_abstention());
  EXPECT_TRUE(recs[2].is_abstention());
}

TEST(EvalLoaders, LongMemEvalPromptAndTruncation) {
  const auto recs = load_longmemeval(fixture("longmemeval.json"));
  const LongMemEvalRecord& r = recs[0];
  const std::string h = longmemeval_history(r);
  const size_t s1 = h.find("Session 1 (date: 2023/05/20 (Sat) 09:12)");
  const size_t s2 = h.find("Session 2 (date: 2023/05/25 (Thu) 18:40)");
  const size_t ev = h.find("user: I just adopted a golden retriever puppy named Biscuit!");
  ASSERT_NE(s1, std::string::npos);
  ASSERT_NE(s2, std::string::npos);
  ASSERT_NE(ev, std::string::npos);
  EXPECT_LT(s1, s2);
  EXPECT_LT(s2, ev);

  const Model& m = model();
  const LongMemEvalPrompt p = longmemeval_prompt(r, m.tok, nullptr, 4096);
  EXPECT_FALSE(p.truncated);
  EXPECT_TRUE(contains(p.prompt, h));
  const std::string end = "\n\nCurrent Date: 2023/06/01 (Thu) 10:00\nQuestion: What breed is my new dog?\nAnswer:";
  ASSERT_GE(p.prompt.size(), end.size());
  EXPECT_EQ(p.prompt.substr(p.prompt.size() - end.size()), end);
  EXPECT_LT(p.prompt.find(h), p.prompt.find("Current Date:"));

  const LongMemEvalPrompt c = longmemeval_prompt(r, m.tok, &m.chat, 4096);
  const int64_t limit = c.n_tokens - 15;
  const LongMemEvalPrompt t = longmemeval_prompt(r, m.tok, &m.chat, limit);
  EXPECT_TRUE(t.truncated);
  EXPECT_LE(t.n_tokens, limit);
  EXPECT_EQ(t.n_tokens, n_tokens(t.prompt));
  EXPECT_LT(t.kept_history_tokens, t.history_tokens);
  EXPECT_TRUE(contains(t.prompt, "Chat history:\n\n### Session 1 (date: "));
  EXPECT_TRUE(contains(t.prompt, "wonderful companions.\n\n\nCurrent Date: 2023/06/01"));
  EXPECT_TRUE(contains(t.prompt, "Question: What breed is my new dog?\nAnswer:"));
  EXPECT_FALSE(contains(t.prompt, h));
}

TEST(EvalLoaders, LongMemEvalScorer) {
  EXPECT_EQ(normalize_answer("  The Quick, brown\tfox!  "), "quick brown fox");
  EXPECT_EQ(normalize_answer("An apple a day"), "apple day");
  EXPECT_EQ(normalize_answer("I don't know."), "i dont know");

  const auto recs = load_longmemeval(fixture("longmemeval.json"));
  const LongMemEvalRecord &dog = recs[0], &books = recs[1], &cat = recs[2];
  EXPECT_DOUBLE_EQ(score_longmemeval("Your new dog is a Golden Retriever.", dog), 1.0);
  EXPECT_DOUBLE_EQ(score_longmemeval("golden-retriever", dog), 0.0);  // hyphen removed: one word
  EXPECT_DOUBLE_EQ(score_longmemeval("It is a labrador.", dog), 0.0);
  EXPECT_DOUBLE_EQ(score_longmemeval("Golden.", dog), 0.0);
  EXPECT_DOUBLE_EQ(score_longmemeval("You finished 3 books.", books), 1.0);
  EXPECT_DOUBLE_EQ(score_longmemeval("You finished 13 books.", books), 0.0);
  EXPECT_DOUBLE_EQ(score_longmemeval("I don't know: you never mentioned a cat.", cat), 1.0);
  EXPECT_DOUBLE_EQ(score_longmemeval("That information is NOT MENTIONED in our chats.", cat), 1.0);
  EXPECT_DOUBLE_EQ(score_longmemeval("Your cat is called Biscuit.", cat), 0.0);
  // Abstaining on an answerable question scores 0.
  EXPECT_DOUBLE_EQ(score_longmemeval("I don't know.", dog), 0.0);
  for (const auto& ph : longmemeval_abstention_phrases())
    EXPECT_DOUBLE_EQ(score_longmemeval("Sorry, " + ph + ".", cat), 1.0) << ph;
}

// ---- Bad input ---------------------------------------------------------------------------------

TEST(EvalLoaders, LongBenchV2BadInputNamesTheProblem) {
  std::string msg = format_error([] { (void)load_longbench_v2(fixture("longbench_v2_bad_answer.json")); });
  EXPECT_TRUE(contains(msg, "longbench_v2_bad_answer.json")) << msg;
  EXPECT_TRUE(contains(msg, "record 1")) << msg;
  EXPECT_TRUE(contains(msg, "lb-bad-answer")) << msg;
  EXPECT_TRUE(contains(msg, "'answer'")) << msg;
  EXPECT_TRUE(contains(msg, "\"E\"")) << msg;

  msg = format_error([] { (void)load_longbench_v2(fixture("longbench_v2_missing_field.json")); });
  EXPECT_TRUE(contains(msg, "longbench_v2_missing_field.json: record 1 (_id \"lb-missing\")")) << msg;
  EXPECT_TRUE(contains(msg, "'choice_C' is missing")) << msg;

  msg = format_error([] { (void)load_longbench_v2(fixture("longbench_v2_wrong_type.json")); });
  EXPECT_TRUE(contains(msg, "lb-wrong-type")) << msg;
  EXPECT_TRUE(contains(msg, "'question' must be a string, got number")) << msg;

  msg = format_error([] { (void)load_longbench_v2(fixture("longbench_v2_malformed.json")); });
  EXPECT_TRUE(contains(msg, "longbench_v2_malformed.json: malformed JSON")) << msg;

  msg = format_error([] { (void)parse_longbench_v2("[1, 2]", "inline"); });
  EXPECT_TRUE(contains(msg, "inline: record 0: expected a JSON object, got number")) << msg;
  msg = format_error([] { (void)parse_longbench_v2("  \n ", "blank.json"); });
  EXPECT_TRUE(contains(msg, "blank.json: empty file")) << msg;
  msg = format_error([] { (void)parse_longbench_v2("{\"_id\": \"x\"}\n\n{\"_id\": ", "lines.jsonl"); });
  EXPECT_TRUE(contains(msg, "lines.jsonl line 3: malformed JSON")) << msg;

  try {
    (void)load_longbench_v2(fixture("no_such_file.json"));
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_TRUE(contains(e.what(), "no_such_file.json")) << e.what();
  }
}

TEST(EvalLoaders, LongMemEvalBadInputNamesTheProblem) {
  std::string msg = format_error([] { (void)load_longmemeval(fixture("longmemeval_bad_lengths.json")); });
  EXPECT_TRUE(contains(msg, "longmemeval_bad_lengths.json: record 0 (question_id \"lme-bad-lengths\")")) << msg;
  EXPECT_TRUE(contains(msg, "'haystack_dates' (1)")) << msg;

  msg = format_error([] { (void)load_longmemeval(fixture("longmemeval_bad_turn.json")); });
  EXPECT_TRUE(contains(msg, "record 1 (question_id \"lme-bad-turn\")")) << msg;
  EXPECT_TRUE(contains(msg, "haystack_sessions[1][0]: field 'content' is missing")) << msg;

  msg = format_error([] {
    (void)parse_longmemeval(R"([{"question_id": "q", "question_type": "t", "question": "?", "answer": [1],
        "question_date": "d", "haystack_session_ids": [], "haystack_dates": [], "haystack_sessions": [],
        "answer_session_ids": []}])", "inline");
  });
  EXPECT_TRUE(contains(msg, "'answer' must be a string or a number, got array")) << msg;
  msg = format_error([] { (void)parse_longmemeval("[{\"question_id\": \"q\"", "cut.json"); });
  EXPECT_TRUE(contains(msg, "cut.json: malformed JSON")) << msg;
}

// ---- RULER qa_1 / qa_2 from SQuAD / HotpotQA ----------------------------------------------------

TEST(EvalLoaders, RulerQaLoaders) {
  const RulerQaSet sq = load_ruler_squad(fixture("squad_v2_dev.json"));
  EXPECT_EQ(sq.docs.size(), 3u);
  ASSERT_EQ(sq.items.size(), 4u);  // the impossible question is left out
  for (const auto& it : sq.items) EXPECT_FALSE(contains(it.question, "southern lighthouse"));
  EXPECT_EQ(sq.items[0].answers, std::vector<std::string>{"1887"});  // duplicates merged
  EXPECT_EQ(sq.items[2].answers, (std::vector<std::string>{"the Brannock Banks", "Brannock Banks"}));
  for (const auto& it : sq.items) {
    ASSERT_EQ(it.gold.size(), 1u);
    for (const auto& a : it.answers) EXPECT_TRUE(contains(sq.docs[it.gold[0]], a)) << a;
  }

  const RulerQaSet hp = load_ruler_hotpotqa(fixture("hotpotqa_dev_distractor.json"));
  EXPECT_EQ(hp.docs.size(), 8u);
  ASSERT_EQ(hp.items.size(), 3u);
  EXPECT_EQ(hp.items[0].gold.size(), 3u);
  EXPECT_EQ(hp.items[1].answers, std::vector<std::string>{"yes"});
  EXPECT_EQ(hp.docs[hp.items[0].gold[0]],
            "Ida Morrow\nIda Morrow (1851-1920) was a landscape painter born in Harlow Cross. She "
            "studied in Paris.");

  std::string msg = format_error([] { (void)load_ruler_squad(fixture("squad_v2_bad.json")); });
  EXPECT_TRUE(contains(msg, "squad_v2_bad.json: data[1].paragraphs[0].qas[0]: field 'question' is missing")) << msg;
  msg = format_error([] { (void)load_ruler_hotpotqa(fixture("hotpotqa_bad.json")); });
  EXPECT_TRUE(contains(msg, "hotpotqa_bad.json: record 1 (_id \"hp2\"): context[1] must be [title, [sentences...]]")) << msg;
  msg = format_error([] { (void)parse_ruler_squad("[]", "list.json"); });
  EXPECT_TRUE(contains(msg, "list.json: expected a JSON object, got array")) << msg;
  msg = format_error([] { (void)parse_ruler_squad(R"({"data": []})", "empty.json"); });
  EXPECT_TRUE(contains(msg, "no answerable question")) << msg;
}

TEST(EvalLoaders, RulerQaFromDataFiles) {
  const Model& m = model();
  RulerSources src = RulerSources::load_default();
  src.prose = RulerSources::synth_prose(src.words, 2000);
  src.squad = load_ruler_squad(fixture("squad_v2_dev.json"));
  src.hotpotqa = load_ruler_hotpotqa(fixture("hotpotqa_dev_distractor.json"));
  const RulerQaSet squad = src.squad, hotpot = src.hotpotqa;
  const RulerGenerator gen(m.tok, &m.chat, std::move(src));
  for (const std::string task : {"qa_1", "qa_2"}) {
    const RulerQaSet& set = task == "qa_1" ? squad : hotpot;
    std::set<std::string> questions;
    int checked_answers = 0;
    for (int64_t idx = 0; idx < 8; ++idx) {
      SCOPED_TRACE(task + " #" + std::to_string(idx));
      const RulerSample s = gen.generate(task, 1024, 3, idx);
      EXPECT_FALSE(s.synthetic_substitute);
      EXPECT_EQ(s.metric, "part");
      EXPECT_EQ(s.tokens_to_generate, 32);
      EXPECT_EQ(s.n_tokens, n_tokens(s.prompt));
      EXPECT_LE(s.n_tokens + s.tokens_to_generate, 1024);
      const std::string ctx = s.prompt.substr(static_cast<size_t>(s.context_begin),
                                              static_cast<size_t>(s.context_end - s.context_begin));
      EXPECT_EQ(ctx.rfind("Document 1:\n", 0), 0u);
      // The question comes from the data set, and its gold paragraphs are all in the context.
      const RulerQaSet::Item* item = nullptr;
      for (const auto& it : set.items)
        if (contains(s.prompt, "Question: " + it.question)) item = &it;
      ASSERT_NE(item, nullptr);
      questions.insert(item->question);
      EXPECT_EQ(s.answers, item->answers);
      for (size_t g : item->gold) EXPECT_TRUE(contains(ctx, set.docs[g])) << set.docs[g];
      // The fixture is small: every other paragraph fits too, each exactly once.
      for (const auto& d : set.docs) {
        const size_t p = ctx.find(d);
        ASSERT_NE(p, std::string::npos) << d;
        EXPECT_EQ(ctx.find(d, p + 1), std::string::npos) << d;
      }
      for (const auto& a : s.answers) {
        if (a == "yes" || a == "no") continue;  // HotpotQA comparison answers are not spans
        EXPECT_TRUE(contains(ctx, a)) << a;
        ++checked_answers;
      }
      EXPECT_DOUBLE_EQ(score_string_match_part("Answer: " + s.answers[0], s.answers), 1.0);
    }
    EXPECT_GE(questions.size(), 2u) << task;  // different indices pick different questions
    EXPECT_GT(checked_answers, 0) << task;
  }
}

TEST(EvalLoaders, RulerQaFillsTheLengthWithDistractors) {
  // A SQuAD-shaped set with many paragraphs: the haystack is fitted to the length like the
  // synthetic one, with the gold paragraph inside.
  std::string text = R"({"data": [{"paragraphs": [)";
  for (int i = 0; i < 400; ++i) {
    if (i) text += ",";
    text += R"({"context": "Record )" + std::to_string(i) + R"( of the survey: the well at site )" +
            std::to_string(i) + R"( is )" + std::to_string(10 + i % 90) +
            R"( metres deep.", "qas": [{"question": "How deep is the well at site )" +
            std::to_string(i) + R"(?", "answers": [{"text": ")" + std::to_string(10 + i % 90) +
            R"( metres"}], "is_impossible": false}]})";
  }
  text += "]}]}";
  const Model& m = model();
  RulerSources src = RulerSources::load_default();
  src.prose = RulerSources::synth_prose(src.words, 2000);
  src.squad = parse_ruler_squad(text, "survey.json");
  ASSERT_EQ(src.squad.items.size(), 400u);
  const RulerGenerator gen(m.tok, &m.chat, std::move(src));
  for (const int64_t len : {1024, 2048}) {
    const RulerSample s = gen.generate("qa_1", len, 9, 0);
    EXPECT_FALSE(s.synthetic_substitute);
    EXPECT_LE(s.n_tokens + s.tokens_to_generate, len);
    EXPECT_GT(s.n_tokens + s.tokens_to_generate, len - 40);  // about one document of slack
    const std::string ctx = s.prompt.substr(static_cast<size_t>(s.context_begin),
                                            static_cast<size_t>(s.context_end - s.context_begin));
    const size_t q = s.prompt.find("How deep is the well at site ");
    ASSERT_NE(q, std::string::npos);
    const std::string site = s.prompt.substr(q + 29, s.prompt.find('?', q) - q - 29);
    EXPECT_TRUE(contains(ctx, "the well at site " + site + " is " + s.answers[0] + " deep.")) << site;
    EXPECT_GE(s.depth, 0.0);
  }
  // Synthetic qa_2 is kept when no HotpotQA file is given.
  EXPECT_TRUE(gen.generate("qa_2", 1024, 9, 0).synthetic_substitute);
}

TEST(EvalLoaders, RulerQaFromEnvironment) {
  auto saved = [](const char* name) {
    const char* v = std::getenv(name);
    return v ? std::optional<std::string>(v) : std::nullopt;
  };
  const auto old_sq = saved("FLASHMEM_RULER_SQUAD"), old_hp = saved("FLASHMEM_RULER_HOTPOTQA");
  auto restore = [](const char* name, const std::optional<std::string>& v) {
    if (v) ::setenv(name, v->c_str(), 1);
    else ::unsetenv(name);
  };
  ::setenv("FLASHMEM_RULER_SQUAD", fixture("squad_v2_dev.json").c_str(), 1);
  ::setenv("FLASHMEM_RULER_HOTPOTQA", fixture("hotpotqa_dev_distractor.json").c_str(), 1);
  const RulerSources s = RulerSources::load_default();
  EXPECT_EQ(s.squad.items.size(), 4u);
  EXPECT_EQ(s.hotpotqa.items.size(), 3u);
  EXPECT_EQ(s.squad.source, fixture("squad_v2_dev.json"));
  ::unsetenv("FLASHMEM_RULER_SQUAD");
  ::setenv("FLASHMEM_RULER_HOTPOTQA", fixture("no_such_hotpot.json").c_str(), 1);
  try {
    (void)RulerSources::load_default();
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_TRUE(contains(e.what(), "no_such_hotpot.json")) << e.what();
  }
  ::unsetenv("FLASHMEM_RULER_HOTPOTQA");
  const RulerSources none = RulerSources::load_default();
  EXPECT_TRUE(none.squad.empty());
  EXPECT_TRUE(none.hotpotqa.empty());
  restore("FLASHMEM_RULER_SQUAD", old_sq);
  restore("FLASHMEM_RULER_HOTPOTQA", old_hp);
}

}  // namespace
}  // namespace flashmem::eval
