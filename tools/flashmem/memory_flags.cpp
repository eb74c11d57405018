// The KV residency flags (--policy, --kv-budget, --cycle, --sink, --tail) and the footprint
// report, shared by the commands that generate.
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <set>
#include <utility>

#include "commands.h"
#include "core/error.h"
#include "engine/engine.h"
#include "indexer/indexer_model.h"
#include "memory/residency.h"
#include "memory/policy.h"

namespace flashmem::cli {

void add_memory_options(CLI::App* c, MemoryArgs& a) {
  c->add_option("--policy", a.policy, "KV residency policy")
      ->check(CLI::IsMember(policy_names()));
  c->add_option("--kv-budget", a.kv_budget,
                "Device KV budget: percent of the request's full KV (10%) or pages per layer (32pages)");
  c->add_option("--cycle", a.cycle, "Decode steps between residency selections (tau)")
      ->check(CLI::Range(1, 1 << 20));
  c->add_option("--sink", a.sink, "First tokens that always stay resident")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  c->add_option("--tail", a.tail, "Newest tokens that always stay resident")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  c->add_option("--policy-seed", a.seed, "Seed of the random policy");
  add_lsa_options(c, a);
}

void add_lsa_options(CLI::App* c, MemoryArgs& a) {
  c->add_option("--indexer", a.indexer, "Memory Indexer checkpoint for --policy lsa (default: the shipped one)")
      ->check(CLI::ExistingFile);
  c->add_option("--lsa-threshold", a.lsa_threshold, "lsa: chunk score threshold theta")->check(CLI::Range(0.001, 0.999));
  c->add_option("--lsa-widen-kept", a.lsa_widen_kept,
                "lsa: kept fraction of the middle chunks above which the request widens to full KV")
      ->check(CLI::Range(0.001, 1.0));
  c->add_flag("--lsa-no-widen", a.lsa_no_widen, "lsa: never widen (no needle fallback)");
  c->add_option("--lsa-spread", a.lsa_spread, "lsa: neighbouring chunks a chosen chunk pulls in (0: off; default 1)")
      ->check(CLI::Range(0, 64));
  c->add_option("--lsa-contrast", a.lsa_contrast,
                "lsa: rank by a chunk's rise above the lower quartile of the scores within N chunks either side (0: off; default 16)")
      ->check(CLI::Range(0, 4096));
  c->add_option("--lsa-observe", a.lsa_observe,
                "lsa: the prompt's last N tokens whose prefill attention is a prior next to the indexer (0: off)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  c->add_option("--lsa-observe-top-p", a.lsa_observe_top_p,
                "lsa: the pages holding this share of the observed attention over the middle come first")
      ->check(CLI::Range(0.001, 1.0))
      ->capture_default_str();
  c->add_option("--lsa-observe-spread", a.lsa_observe_spread,
                "lsa: pages either side of an observed page that rank next to it, at 0.9^d of its mass (0: off)")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();
  // The knobs a checkpoint may settle (apply_lsa_metadata): remember which the user gave.
  for (const auto& [flag, key] : std::initializer_list<std::pair<const char*, const char*>>{
           {"--lsa-threshold", "threshold"}, {"--lsa-spread", "spread"}, {"--lsa-contrast", "contrast"},
           {"--lsa-observe", "observe"}, {"--lsa-observe-top-p", "observe_top_p"},
           {"--lsa-observe-spread", "observe_spread"}}) {
    const std::string k = key;
    c->get_option(flag)->each([&a, k](const std::string&) { a.lsa_given.insert(k); });
  }
  c->add_option("--lsa-widen-absent", a.lsa_widen_absent,
                "lsa: widen to full KV when the chosen pages miss more than this share of the observed attention (1: never)")
      ->check(CLI::Range(0.001, 1.0))
      ->capture_default_str();
}

std::string indexer_path(const MemoryArgs& a, const std::string& model_path, bool lsa_wanted) {
  if (!a.indexer.empty()) return a.indexer;
  if (!lsa_wanted) return "";
  namespace fs = std::filesystem;
  // The file name without .gguf and its weight type: SmolLM2-135M-Instruct.Q4_1 and
  // Qwen2.5-Coder-0.5B-Instruct.Q4_K_M name SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct.
  std::string stem = fs::path(model_path).stem().string();
  if (const size_t dot = stem.rfind('.'); dot != std::string::npos) {
    std::string type = stem.substr(dot + 1);
    for (char& c : type) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    const bool quant = type.starts_with("Q") || type.starts_with("IQ") || type == "F16" || type == "F32" ||
                       type == "BF16";
    if (quant) stem.resize(dot);
  }
  for (const fs::path& dir : {fs::path(FLASHMEM_SOURCE_DIR) / "indexers", fs::path("indexers")}) {
    const fs::path f = dir / (stem + ".safetensors");
    if (fs::exists(f)) return f.string();
  }
  FM_FAIL(ErrorCode::kInvalidArgument, "policy lsa needs a Memory Indexer: no --indexer given and none shipped for '",
          stem, "' in indexers/ (train one with flashmem dump + flashmem train-indexer)");
}

std::map<std::string, std::string> indexer_settings(const std::string& indexer_file) {
  if (indexer_file.empty()) return {};
  return indexer_metadata(indexer_file);
}

int page_tokens_for(int given, const std::map<std::string, std::string>& md, const std::string& where,
                    bool lsa_wanted) {
  if (given > 0) return given;
  if (lsa_wanted && !md.empty()) {
    const auto it = md.find("chunk_tokens");
    FM_CHECK(it != md.end(), ErrorCode::kInvalidArgument, "the indexer ", where,
             " names no chunk_tokens in its metadata");
    int chunk = 0;
    try {
      chunk = std::stoi(it->second);
    } catch (const std::exception&) {
    }
    FM_CHECK(chunk >= 1 && chunk <= 4096, ErrorCode::kInvalidArgument, "the indexer ", where,
             " has chunk_tokens '", it->second, "'");
    return chunk;
  }
  return EngineOptions{}.page_tokens;
}

const std::vector<std::string>& lsa_metadata_keys() {
  static const std::vector<std::string> keys{"lsa.threshold", "lsa.spread",         "lsa.contrast",
                                             "lsa.observe",   "lsa.observe_top_p",  "lsa.observe_spread"};
  return keys;
}

void apply_lsa_metadata(const std::map<std::string, std::string>& md, const std::set<std::string>& given,
                        const std::string& where, LsaOptions& o) {
  for (const std::string& key : lsa_metadata_keys()) {
    const auto it = md.find(key);
    const std::string name = key.substr(4);
    if (it == md.end() || given.count(name)) continue;
    const std::string& v = it->second;
    size_t used = 0;
    try {
      if (name == "threshold") o.threshold = std::stof(v, &used);
      else if (name == "spread") o.spread = std::stoi(v, &used);
      else if (name == "contrast") o.contrast = std::stoi(v, &used);
      else if (name == "observe") o.observe = std::stoi(v, &used);
      else if (name == "observe_top_p") o.observe_top_p = std::stof(v, &used);
      else o.observe_spread = std::stoi(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    FM_CHECK(!v.empty() && used == v.size(), ErrorCode::kInvalidArgument, where, ": metadata ", key, " = '", v,
             "' is not a number");
  }
  try {
    o.validate();
  } catch (const Error& e) {
    FM_FAIL(ErrorCode::kInvalidArgument, where, ": ", e.what());
  }
}

ResidencyOptions residency_options(const MemoryArgs& a) {
  ResidencyOptions o;
  o.policy = a.policy;
  o.budget = KvBudget::parse(a.kv_budget);
  o.cycle = a.cycle;
  o.sink_tokens = a.sink;
  o.tail_tokens = a.tail;
  o.seed = a.seed;
  o.lsa.threshold = a.lsa_threshold;
  o.lsa.widen_kept = a.lsa_widen_kept;
  o.lsa.widen = !a.lsa_no_widen;
  o.lsa.spread = a.lsa_spread;
  o.lsa.contrast = a.lsa_contrast;
  o.lsa.observe = a.lsa_observe;
  o.lsa.observe_top_p = a.lsa_observe_top_p;
  o.lsa.observe_spread = a.lsa_observe_spread;
  o.lsa.widen_absent = a.lsa_widen_absent;
  o.validate();
  return o;
}

namespace {
double mib(uint64_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); }
double pct(uint64_t a, uint64_t b) { return b ? 100.0 * static_cast<double>(a) / static_cast<double>(b) : 0.0; }
}  // namespace

void print_kv_report(std::FILE* out, const KvReport& r) {
  std::fprintf(out, "[flashmem] KV report: policy %s, budget %s = %lld pages/layer, %lld cycles\n",
               r.policy.c_str(), r.budget.c_str(), static_cast<long long>(r.budget_pages),
               static_cast<long long>(r.cycles));
  std::fprintf(out, "  %-24s %12s %12s\n", "device bytes", "final MiB", "peak MiB");
  auto row = [&](const char* name, uint64_t f, uint64_t p) {
    std::fprintf(out, "  %-24s %12.3f %12.3f\n", name, mib(f), mib(p));
  };
  row("reserve (full pages)", r.final.reserve, r.peak.reserve);
  row("open pages", r.final.open, r.peak.open);
  row("index keys", r.final.index_keys, r.peak.index_keys);
  row("selector scratch", r.final.scratch, r.peak.scratch);
  row("device total", r.final.device(), r.peak.device());
  std::fprintf(out, "  device mean over decode %.3f MiB; reserve allocated %.3f MiB\n",
               r.mean_device_bytes / (1024.0 * 1024.0), mib(r.reserve_bytes));
  std::fprintf(out, "  full-KV path would hold %.3f MiB: device peak %.1f%%, mean %.1f%% of it\n",
               mib(r.final.full_kv), pct(r.peak.device(), r.final.full_kv),
               r.final.full_kv ? 100.0 * r.mean_device_bytes / static_cast<double>(r.final.full_kv) : 0.0);
  std::fprintf(out, "  host mirror %.3f MiB; recalled %lld pages (%.3f MiB) in %lld batches, %.3f s\n",
               mib(r.final.mirror), static_cast<long long>(r.recall.pages), mib(r.recall.bytes),
               static_cast<long long>(r.recall.batches), r.recall.seconds);
  std::fprintf(out, "  decode steps that waited for a recall: %lld, %.3f s in all\n",
               static_cast<long long>(r.recall_steps), r.recall_wait_seconds);
  if (policy_traits(r.policy).needs_indexer) {
    std::fprintf(out, "  lsa: %.1f%% of the middle chunks above the threshold", 100.0 * r.lsa_kept_fraction);
    if (r.lsa_absent_mass >= 0)
      std::fprintf(out, "; the chosen pages miss %.1f%% of the prompt's observed attention", 100.0 * r.lsa_absent_mass);
    if (r.widened_at_step >= 0)
      std::fprintf(out, "; widened to full KV at step %lld (%s)", static_cast<long long>(r.widened_at_step),
                   r.widen_reason.c_str());
    std::fprintf(out, "\n");
  }
}

nlohmann::json kv_report_json(const KvReport& r) {
  auto fp = [](const KvFootprint& f) {
    return nlohmann::json{{"reserve", f.reserve},       {"open", f.open},
                          {"index_keys", f.index_keys}, {"scratch", f.scratch},
                          {"device", f.device()},       {"mirror", f.mirror},
                          {"full_kv", f.full_kv}};
  };
  return {{"policy", r.policy},
          {"budget", r.budget},
          {"budget_pages", r.budget_pages},
          {"reserve_bytes", r.reserve_bytes},
          {"final", fp(r.final)},
          {"peak", fp(r.peak)},
          {"device_bytes_mean", r.mean_device_bytes},
          {"device_bytes_peak", r.peak.device()},
          {"full_kv_bytes", r.final.full_kv},
          {"cycles", r.cycles},
          {"recall", {{"batches", r.recall.batches}, {"pages", r.recall.pages},
                      {"bytes", r.recall.bytes}, {"written_pages", r.recall.written},
                      {"seconds", r.recall.seconds}}},
          {"recall_steps", r.recall_steps},
          {"recall_wait_seconds", r.recall_wait_seconds},
          {"oracle_pass_seconds", r.oracle_pass_seconds},
          {"lsa_kept_fraction", r.lsa_kept_fraction},
          {"lsa_absent_mass", r.lsa_absent_mass},
          {"widened_at_step", r.widened_at_step},
          {"widen_reason", r.widen_reason}};
}

}  // namespace flashmem::cli
