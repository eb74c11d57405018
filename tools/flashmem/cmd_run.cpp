#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "engine/engine.h"
#include "memory/policy.h"

namespace flashmem::cli {

CLI::App* add_run_command(CLI::App& app, RunArgs& a) {
  CLI::App* c = app.add_subcommand("run", "Generate text from a prompt, streaming tokens");
  c->add_option("-m,--model", a.model, "GGUF model file")->required();
  auto* p = c->add_option("-p,--prompt", a.prompt, "Prompt text");
  auto* f = c->add_option("-f,--file", a.prompt_file, "Read the prompt from a file")->check(CLI::ExistingFile);
  p->excludes(f);
  c->add_option("-n,--n-predict", a.n_predict, "Tokens to generate")->check(CLI::Range(0, 1 << 24));
  c->add_option("-c,--ctx", a.n_ctx, "Context length in tokens (0: the model's)")->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  c->add_flag("--chat", a.chat, "Wrap the prompt in the model's chat template");
  c->add_option("--system", a.system, "System message for --chat (default: the template's)");
  c->add_option("--temp", a.temperature, "Sampling temperature (0: greedy)")->check(CLI::Range(0.0f, 100.0f));
  c->add_option("--top-k", a.top_k, "Keep the k most likely tokens (0: all)")->check(CLI::NonNegativeNumber);
  c->add_option("--top-p", a.top_p, "Nucleus sampling mass in (0, 1]")->check(CLI::Range(1e-6f, 1.0f));
  c->add_option("--seed", a.seed, "Random seed for sampling");
  c->add_option("-t,--threads", a.threads, "CPU threads (0: all cores)")->check(CLI::Range(0, 1024));
  add_backend_option(c, a.backend, a.cpu_dot);
  c->add_option("--kv-type", a.kv_type, "KV cache precision (q8: int8 with one f32 scale per token and kv head)")
      ->check(CLI::IsMember({"f16", "f32", "q8"}));
  c->add_option("--page-tokens", a.page_tokens, "Tokens per KV page (default 64; with --policy lsa, the indexer's chunk size)")
      ->check(CLI::Range(1, 4096))
      ->default_str("auto");
  c->add_option("--report-json", a.report_json, "Also write the run report as JSON to this file");
  c->add_option("--host-memory", a.host_memory_gb,
                "Cap in GB on the host KV mirror (every page, in host memory); 0: what the OS has available")
      ->check(CLI::Range(0.0, 1e6));
  add_gpu_memory_option(c, a.gpu_memory_gb);
  add_memory_options(c, a.memory);
  c->add_option("--prompt-tokens", a.prompt_tokens,
                "Cut the tokenized prompt to this many tokens, from the middle (0: keep all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  c->add_flag("--kv-report", a.kv_report, "Print the KV footprint by category after the run");
  c->add_flag("--ignore-eos", a.ignore_eos, "Generate all -n tokens (no end-of-text or end-of-turn stop)");
  c->add_option("--force-tokens", a.force_tokens,
                "Teacher forcing: feed the \"tokens\" of this --report-json file, count argmax agreement")
      ->check(CLI::ExistingFile);
  return c;
}

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FM_CHECK(in.good(), ErrorCode::kIo, "cannot read prompt file ", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string mib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

}  // namespace

int run_command(const RunArgs& a) {
  FM_CHECK(!a.prompt.empty() || !a.prompt_file.empty(), ErrorCode::kInvalidArgument,
           "give a prompt with -p TEXT or -f FILE");
  ResidencyOptions memory = residency_options(a.memory);  // bad flags fail before loading
  EngineOptions eo = engine_options(a);
  eo.n_ctx = a.n_ctx;
  const bool lsa = policy_traits(a.memory.policy).needs_indexer;
  eo.indexer_path = indexer_path(a.memory, a.model, lsa);
  const auto settings = indexer_settings(eo.indexer_path);
  eo.page_tokens = page_tokens_for(a.page_tokens, settings, eo.indexer_path, lsa);
  apply_lsa_metadata(settings, a.memory.lsa_given, eo.indexer_path, memory.lsa);
  eo.host_kv_bytes = static_cast<uint64_t>(a.host_memory_gb * 1e9);
  auto eng = Engine::load(eo);

  std::string text = a.prompt_file.empty() ? a.prompt : read_file(a.prompt_file);
  GenerateOptions go;
  go.max_new_tokens = a.n_predict;
  go.sampling.temperature = a.temperature;
  go.sampling.top_k = a.top_k;
  go.sampling.top_p = a.top_p;
  go.sampling.seed = a.seed;
  go.memory = memory;
  if (a.chat) {
    const ChatTemplate& tpl = eng->chat();
    std::vector<ChatMessage> msgs;
    if (!a.system.empty()) msgs.push_back({"system", a.system});
    msgs.push_back({"user", text});
    text = tpl.render(msgs, true);
    go.stop_strings = tpl.stop_strings();
  }
  if (a.ignore_eos) {
    go.stop_at_eos = false;
    go.stop_strings.clear();
  }
  if (!a.force_tokens.empty()) {
    std::ifstream in(a.force_tokens);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
      FM_CHECK(j.at("tokens").is_array(), ErrorCode::kFormat, a.force_tokens, ": \"tokens\" is not an array");
      for (const nlohmann::json& t : j.at("tokens")) {
        // Only integers in int32's range (a float or a huge value would be cast unchecked).
        FM_CHECK(t.is_number_integer() && (t.is_number_unsigned() ? t.get<uint64_t>() <= INT32_MAX
                                                                   : t.get<int64_t>() >= INT32_MIN &&
                                                                         t.get<int64_t>() <= INT32_MAX),
                 ErrorCode::kFormat, a.force_tokens, ": token ", t.dump(), " is not a 32-bit integer");
        go.forced_tokens.push_back(static_cast<int32_t>(t.get<int64_t>()));
      }
    } catch (const nlohmann::json::exception& e) {
      FM_FAIL(ErrorCode::kFormat, a.force_tokens, ": not a run report with \"tokens\" (", e.what(), ")");
    }
    go.max_new_tokens = std::min<int>(go.max_new_tokens, static_cast<int>(go.forced_tokens.size()));
    go.stop_at_eos = false;
    go.stop_strings.clear();
  }
  // Special-token text (e.g. a hand-written ChatML prompt) is recognised, as llama.cpp does.
  std::vector<int32_t> prompt = eng->tokenizer().encode(text, true, true);
  if (a.prompt_tokens > 0 && static_cast<int64_t>(prompt.size()) > a.prompt_tokens) {
    // Middle truncation (as LongBench does): the start and the question at the end survive.
    const int64_t head = a.prompt_tokens / 2, tail = a.prompt_tokens - head;
    prompt.erase(prompt.begin() + head, prompt.end() - tail);
  }
  GenerateResult r = eng->generate(prompt, go, [](std::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  std::fputc('\n', stdout);
  std::fflush(stdout);

  const double pf = r.prefill_seconds > 0 ? static_cast<double>(r.n_prompt) / r.prefill_seconds : 0;
  const double dc = r.decode_seconds > 0 ? static_cast<double>(r.decode_steps) / r.decode_seconds : 0;
  const KvReport& kv = r.kv;
  std::fprintf(stderr,
               "\n[flashmem] prompt %lld tok, generated %zu tok (%s) | prefill %.1f tok/s, "
               "decode %.1f tok/s | %s\n",
               static_cast<long long>(r.n_prompt), r.tokens.size(), r.stop_reason.c_str(), pf, dc,
               backend_label(*eng).c_str());
  std::fprintf(stderr,
               "[flashmem] KV %s %s: device peak %s, mean %s; full-KV need %s (%zu B/token, %s, "
               "page %d tok); host mirror %s\n",
               kv.policy.c_str(), kv.budget.c_str(), mib(kv.peak.device()).c_str(),
               mib(static_cast<size_t>(kv.mean_device_bytes)).c_str(), mib(kv.final.full_kv).c_str(),
               r.kv_bytes_per_token, kv_type_name(eng->kv_type()), eo.page_tokens,
               mib(kv.final.mirror).c_str());
  // A budget below 100% that still holds every page this request will have (a short prompt:
  // the minimum of sink + tail + one cycle, or the rounding up) offloads nothing; say so.
  const int64_t final_tokens = std::min<int64_t>(eng->n_ctx(), r.n_prompt + std::max(go.max_new_tokens, 1));
  const int64_t all_pages = (final_tokens + eo.page_tokens - 1) / eo.page_tokens;
  const bool covers_all = !policy_traits(kv.policy).keeps_all && kv.budget_pages >= all_pages;
  if (covers_all)
    std::fprintf(stderr,
                 "[flashmem] note: --kv-budget %s rounds up to %lld pages per layer, all %lld pages this request "
                 "reaches, so nothing was offloaded (the budget bites on longer prompts)\n",
                 kv.budget.c_str(), static_cast<long long>(kv.budget_pages), static_cast<long long>(all_pages));
  if (a.kv_report) print_kv_report(stderr, kv);
  if (!a.report_json.empty()) {
    nlohmann::json j = {{"model", a.model},
                        {"prompt_tokens", r.n_prompt},
                        {"generated_tokens", r.tokens.size()},
                        {"stop_reason", r.stop_reason},
                        {"prefill_seconds", r.prefill_seconds},
                        {"decode_seconds", r.decode_seconds},
                        {"decode_steps", r.decode_steps},
                        {"prefill_tok_s", pf},
                        {"decode_tok_s", dc},
                        {"kv_type", kv_type_name(eng->kv_type())},
                        {"kv_bytes_per_token", r.kv_bytes_per_token},
                        {"kv", kv_report_json(kv)},
                        {"budget_covers_all_pages", covers_all},
                        {"tokens", r.tokens},
                        {"forced_tokens", go.forced_tokens.size()},
                        {"forced_agree", r.forced_agree},
                        {"text", r.text}};
    std::ofstream out(a.report_json);
    FM_CHECK(out.good(), ErrorCode::kIo, "cannot write ", a.report_json);
    out << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace flashmem::cli
