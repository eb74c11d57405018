// flashmem dump — training data for the Memory Indexer (DESIGN.md §4, docs/formats.md).
//
//   flashmem dump -m MODEL --out DIR --ruler-lengths 4k,8k --ruler-samples 8
//                 --haystack corpus/man,corpus/csv --needle-samples 4 --text-docs 4
//                 --prose kjv.txt --prose-docs 100 --prose-lengths 4k,8k --layers 8,14,20
//
// Runs every document with full attention and writes DIR/<split>/<name>.fmd: RULER-style task
// prompts and the needle suite's prompts over text families (generated continuations, seed ≠
// the eval's) and natural text — a file, or each family's own — teacher-forced with its real
// continuation. Documents are split train/val/test by name. --shard i/n runs every
// n-th document (parallel processes); existing files are skipped (resume).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "engine/dump.h"
#include "eval/needle.h"
#include "eval/progress.h"
#include "eval_suites.h"

namespace flashmem::cli {

CLI::App* add_dump_command(CLI::App& app, DumpArgs& a) {
  CLI::App* c = app.add_subcommand("dump", "Dump Memory Indexer training data (hidden states, index keys, attended chunks)");
  c->add_option("-m,--model", a.model, "GGUF model file")->required();
  c->add_option("--out", a.out, "Output directory")->required();
  c->add_option("--ruler-lengths", a.ruler_lengths, "RULER prompt lengths, e.g. 2k,4k,8k")->delimiter(',');
  c->add_option("--tasks", a.tasks, "RULER tasks (all or a list)")->delimiter(',');
  c->add_option("--ruler-samples", a.ruler_samples, "RULER prompts per task and length")->check(CLI::Range(0, 1 << 20));
  c->add_option("--seed", a.seed, "Seed of the RULER prompts and prose offsets (the eval uses 0)");
  c->add_option("--prose", a.prose, "Plain-text file for natural-text documents")->check(CLI::ExistingFile);
  c->add_option("--prose-lengths", a.prose_lengths, "Natural-text prompt lengths")->delimiter(',');
  c->add_option("--prose-docs", a.prose_docs, "Natural-text documents per length")->check(CLI::Range(0, 1 << 20));
  c->add_option("--haystack", a.haystacks, "Text families (directories, scripts/make-corpus.sh) for needle and text documents")
      ->delimiter(',');
  c->add_option("--haystack-lengths", a.haystack_lengths, "Lengths of the family documents")->delimiter(',');
  c->add_option("--needle-samples", a.needle_samples, "Needle prompts per family and length (eval --suite needle's, answered by the model)")
      ->check(CLI::Range(0, 1 << 20));
  c->add_option("--text-docs", a.text_docs, "Teacher-forced continuations of each family's text per length")
      ->check(CLI::Range(0, 1 << 20));
  c->add_option("--layers", a.layers, "Target layers, e.g. 8,14,20")->delimiter(',')->required();
  c->add_option("--pooling", a.poolings, "Index-key poolings to record")->delimiter(',')
      ->check(CLI::IsMember({"post_rope_mean", "pre_rope_mean"}));
  c->add_option("--chunk-tokens", a.chunk_tokens, "Tokens per indexed chunk")->check(CLI::Range(1, 4096));
  c->add_option("--top-p", a.top_p, "Attention mass per head that counts as a hit")->check(CLI::Range(0.01, 1.0));
  c->add_option("--tau", a.tau, "Decode steps a decision looks ahead")->check(CLI::Range(1, 1 << 16));
  c->add_option("--point-stride", a.point_stride, "A decision point every N decode steps")->check(CLI::Range(1, 1 << 16));
  c->add_option("-n,--n-predict", a.n_predict, "Decode steps per document")->check(CLI::Range(1, 1 << 16));
  c->add_option("--shard", a.shard, "i/n: this process dumps documents i, i+n, ...");
  c->add_option("-t,--threads", a.threads, "CPU threads (0: all cores)")->check(CLI::Range(0, 1024));
  add_backend_option(c, a.backend, a.cpu_dot);
  return c;
}

namespace {

std::string file_name(const std::string& doc) {
  std::string s = doc;
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '.') ch = '_';
  return s + ".fmd";
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FM_CHECK(in.good(), ErrorCode::kIo, "cannot open ", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int dump_command(const DumpArgs& a) {
  int shard = 0, shards = 1;
  FM_CHECK(std::sscanf(a.shard.c_str(), "%d/%d", &shard, &shards) == 2 && shards >= 1 && shard >= 0 &&
               shard < shards,
           ErrorCode::kInvalidArgument, "bad --shard '", a.shard, "' (expected i/n with 0 ≤ i < n)");
  FM_CHECK(a.ruler_samples > 0 || a.prose_docs > 0 || a.needle_samples > 0 || a.text_docs > 0,
           ErrorCode::kInvalidArgument,
           "nothing to dump: give --ruler-samples, --prose with --prose-docs, or --haystack with --needle-samples "
           "and/or --text-docs");
  FM_CHECK(a.prose_docs == 0 || !a.prose.empty(), ErrorCode::kInvalidArgument, "--prose-docs needs --prose FILE");
  FM_CHECK((a.needle_samples == 0 && a.text_docs == 0) || !a.haystacks.empty(), ErrorCode::kInvalidArgument,
           "--needle-samples and --text-docs need --haystack DIR...");
  DumpSettings s;
  s.target_layers = a.layers;
  std::sort(s.target_layers.begin(), s.target_layers.end());
  s.poolings = a.poolings;
  s.chunk_tokens = a.chunk_tokens;
  s.top_p = a.top_p;
  s.tau = a.tau;
  s.point_stride = a.point_stride;
  s.max_new_tokens = a.n_predict;

  std::vector<int64_t> ruler_lengths, prose_lengths, family_lengths;
  if (a.ruler_samples > 0)
    for (const auto& l : a.ruler_lengths) ruler_lengths.push_back(parse_length(l));
  if (a.prose_docs > 0)
    for (const auto& l : a.prose_lengths) prose_lengths.push_back(parse_length(l));
  if (a.needle_samples > 0 || a.text_docs > 0)
    for (const auto& l : a.haystack_lengths) family_lengths.push_back(parse_length(l));
  // The families are read (and a bad directory refused) before the model is loaded.
  std::vector<eval::NeedleFamily> families;
  if (a.text_docs > 0) families = eval::load_needle_families(a.haystacks);
  EngineOptions eo;
  eo.model_path = a.model;
  eo.backend = a.backend;
  eo.cpu_dot = parse_cpu_dot(a.cpu_dot);
  eo.n_threads = a.threads;
  // What the flags alone decide is checked before the model is loaded, and what needs the
  // model before the first document (dump_document would refuse it only then).
  FM_CHECK(eo.page_tokens % a.chunk_tokens == 0, ErrorCode::kInvalidArgument, "--chunk-tokens ", a.chunk_tokens,
           " must divide the page size ", eo.page_tokens);
  FM_CHECK(!s.target_layers.empty(), ErrorCode::kInvalidArgument, "--layers needs at least one layer");
  for (size_t i = 0; i < s.target_layers.size(); ++i)
    FM_CHECK(s.target_layers[i] >= 0 && (i == 0 || s.target_layers[i] != s.target_layers[i - 1]),
             ErrorCode::kInvalidArgument, "--layers must be distinct layers ≥ 0");
  for (size_t i = 0; i < s.poolings.size(); ++i)
    FM_CHECK(std::find(s.poolings.begin(), s.poolings.begin() + static_cast<std::ptrdiff_t>(i), s.poolings[i]) ==
                 s.poolings.begin() + static_cast<std::ptrdiff_t>(i),
             ErrorCode::kInvalidArgument, "--pooling ", s.poolings[i], " is given twice");
  FM_CHECK(!s.poolings.empty(), ErrorCode::kInvalidArgument, "--pooling needs at least one pooling");
  auto eng = Engine::load(eo);  // the model's whole context
  FM_CHECK(s.target_layers.back() < eng->info().n_layers, ErrorCode::kInvalidArgument, "--layers ",
           s.target_layers.back(), " is outside the model's ", eng->info().n_layers, " layers");
  // A document must leave room for its generated tokens: lengths are capped there.
  const int64_t room = eng->n_ctx() - a.n_predict - 1;
  FM_CHECK(room >= 256, ErrorCode::kOutOfRange, "-n ", a.n_predict, " leaves no room for a prompt in the context of ",
           eng->n_ctx());
  for (int64_t& l : prose_lengths) l = std::min(l, room);
  for (int64_t l : family_lengths)
    FM_CHECK(l <= room, ErrorCode::kOutOfRange, "--haystack-lengths ", l, " leaves no room for -n ", a.n_predict,
             " generated tokens in the model's context of ", eng->n_ctx(), " tokens");
  for (int64_t l : ruler_lengths)
    FM_CHECK(l <= eng->n_ctx(), ErrorCode::kOutOfRange, "--ruler-lengths ", l, " exceeds the model's context of ",
             eng->n_ctx(), " tokens");

  std::vector<DumpInput> docs;
  // Generated task prompts (an eval suite's, at the dump's seed), answered by the model. A source
  // ending in ':' is completed with the item's task (needle: its family).
  auto task_docs = [&](SuiteRequest req, const std::string& source) {
    req.seed = a.seed;
    for (SuiteItem& it : make_suite_items(*eng, req)) {
      DumpInput in;
      in.name = it.prompt_id;
      in.source = source.back() == ':' ? source + it.task : source;
      in.prompt = eng->tokenizer().encode(it.prompt, true, true);
      in.stop_strings = it.stop_strings;
      docs.push_back(std::move(in));
    }
  };
  if (a.ruler_samples > 0) {
    SuiteRequest req;
    req.suite = "ruler";
    req.lengths = ruler_lengths;
    req.tasks = a.tasks;
    req.samples = a.ruler_samples;
    task_docs(req, "ruler");
  }
  // Natural text, teacher-forced with its real continuation: slices starting at a line
  // boundary, long enough for len + n_predict tokens.
  std::mt19937_64 rng(a.seed * 0x9E3779B97F4A7C15ull + 7);
  auto text_docs = [&](const std::string& text, const std::string& what, const std::vector<int64_t>& lengths, int n,
                       const std::string& name, const std::string& source) {
    for (int64_t len : lengths)
      for (int i = 0; i < n; ++i) {
        const size_t want = static_cast<size_t>((len + a.n_predict) * 8);
        FM_CHECK(text.size() > want, ErrorCode::kInvalidArgument, what, " is too short for ", len, "-token documents");
        size_t at = std::uniform_int_distribution<size_t>(0, text.size() - want)(rng);
        at = std::min(text.size() - want, text.find('\n', at) + 1);
        std::vector<int32_t> toks = eng->tokenizer().encode(text.substr(at, want), true, false);
        FM_CHECK(static_cast<int64_t>(toks.size()) >= len + a.n_predict, ErrorCode::kInvalidArgument, what,
                 ": a slice too short for ", len, "-token documents");
        DumpInput in;
        in.name = name + "/" + std::to_string(len) + "/seed" + std::to_string(a.seed) + "/" + std::to_string(i);
        in.source = source;
        in.prompt.assign(toks.begin(), toks.begin() + len);
        in.forced.assign(toks.begin() + len, toks.begin() + len + a.n_predict);
        docs.push_back(std::move(in));
      }
  };
  if (a.prose_docs > 0) text_docs(read_text(a.prose), a.prose, prose_lengths, a.prose_docs, "prose", "prose");
  for (const eval::NeedleFamily& fam : families) {
    std::string text;
    for (const eval::NeedleUnit& u : fam.units) text += u.text + u.sep;
    text_docs(text, "family " + fam.name, family_lengths, a.text_docs, "text/" + fam.name, "text:" + fam.name);
  }
  if (a.needle_samples > 0) {  // the needle suite over the families (source needle:<family>)
    SuiteRequest req;
    req.suite = "needle";
    req.lengths = family_lengths;
    req.samples = a.needle_samples;
    req.haystacks = a.haystacks;
    task_docs(req, "needle:");
  }

  // A seeded order mixing lengths, tasks and sources, so that a time-boxed dump (or the first
  // shards' worth of it) holds some of each; every shard sees the same order.
  std::shuffle(docs.begin(), docs.end(), std::mt19937_64(a.seed * 0xD1B54A32D192ED03ull + 1));

  namespace fs = std::filesystem;
  for (const char* split : {"train", "val", "test"}) fs::create_directories(fs::path(a.out) / split);
  int64_t mine = 0;
  for (size_t i = shard; i < docs.size(); i += shards) ++mine;
  eval::Progress progress(mine, "dump");
  DumpTiming timing;
  for (size_t i = shard; i < docs.size(); i += shards) {
    const DumpInput& in = docs[i];
    const fs::path path = fs::path(a.out) / train::split_of(in.name) / file_name(in.name);
    if (fs::exists(path)) {
      progress.skip(1, in.name);
      continue;
    }
    const train::DumpDoc d = dump_document(*eng, in, s, &timing);
    const fs::path tmp = path.string() + ".tmp";
    train::write_dump(tmp.string(), d);
    fs::rename(tmp, path);
    progress.tick(1, in.name);
    // Running totals after every document (a time-boxed dump may be stopped at any point).
    std::fprintf(stderr, "dump: %lld prompt tokens prefilled in %.1f s, %lld decode steps (labels included) in %.1f s\n",
                 static_cast<long long>(timing.prompt_tokens), timing.prefill_seconds,
                 static_cast<long long>(timing.decode_steps), timing.decode_seconds);
  }
  progress.finish();
  return 0;
}

}  // namespace flashmem::cli
