// flashmem CLI subcommands: each has an args struct, a CLI11 registration and an entry point.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "memory/lsa.h"

namespace flashmem {
class Engine;
struct KvReport;
struct ResidencyOptions;
}  // namespace flashmem

namespace flashmem::cli {

// KV residency flags shared by run, eval and serve.
struct MemoryArgs {
  std::string policy = "full";
  std::string kv_budget = "100%";
  int cycle = 64;
  int64_t sink = 64;
  int64_t tail = 64;
  uint64_t seed = 0;
  std::string indexer;        // Memory Indexer checkpoint (lsa); empty: the one shipped for the model
  float lsa_threshold = 0.5f;
  float lsa_widen_kept = 0.5f;
  bool lsa_no_widen = false;
  int lsa_spread = 1;
  int lsa_contrast = 16;
  int lsa_observe = LsaOptions{}.observe;
  float lsa_observe_top_p = LsaOptions{}.observe_top_p;
  int lsa_observe_spread = LsaOptions{}.observe_spread;
  float lsa_widen_absent = LsaOptions{}.widen_absent;
  // Which of the knobs a checkpoint may settle were given on the command line (threshold,
  // spread, contrast, observe, observe_top_p, observe_spread): those keep the flag's value.
  std::set<std::string> lsa_given;
};
void add_memory_options(CLI::App* c, MemoryArgs& a);
// The lsa flags alone (--indexer, --lsa-*); add_memory_options includes them.
void add_lsa_options(CLI::App* c, MemoryArgs& a);
// Parsed and validated; Error(kInvalidArgument) with a clear message otherwise.
ResidencyOptions residency_options(const MemoryArgs& a);
// The lsa knobs a Memory Indexer checkpoint settles: metadata "lsa.threshold", "lsa.spread",
// "lsa.contrast", "lsa.observe", "lsa.observe_top_p", "lsa.observe_spread" (written by
// train-indexer --set), each taken unless its flag was given; so `--policy lsa` needs no tuning
// flags for a checkpoint whose settings were measured. Error(kInvalidArgument) naming `where`
// for a value that is not a number or out of range.
const std::vector<std::string>& lsa_metadata_keys();
void apply_lsa_metadata(const std::map<std::string, std::string>& md, const std::set<std::string>& given,
                        const std::string& where, LsaOptions& o);
// The indexer checkpoint to load for these flags: --indexer, or the one shipped in the source
// tree's indexers/ for the model file's name when a policy list includes lsa; "" when none is
// needed. Error(kInvalidArgument) when lsa is asked for and no checkpoint is found.
std::string indexer_path(const MemoryArgs& a, const std::string& model_path, bool lsa_wanted);
// The metadata of the indexer checkpoint a command loads (empty when indexer_file is ""): read
// once, for page_tokens_for and apply_lsa_metadata.
std::map<std::string, std::string> indexer_settings(const std::string& indexer_file);
// Tokens per KV page when --page-tokens is not given (0): with lsa, the indexer's chunk size
// (md: its metadata; the configuration lsa was measured at, docs/accuracy.md: pages and chunks
// align), otherwise EngineOptions' default. Error(kInvalidArgument) naming `where` for an indexer
// without a valid chunk size.
int page_tokens_for(int given, const std::map<std::string, std::string>& md, const std::string& where,
                    bool lsa_wanted);
// Human-readable footprint table (run --kv-report).
void print_kv_report(std::FILE* out, const KvReport& r);
// The same, machine-readable (bytes, by category, final and peak).
nlohmann::json kv_report_json(const KvReport& r);

// --gpu-memory GB: the cap on everything the engine allocates on its backend (run, serve, bench).
void add_gpu_memory_option(CLI::App* c, double& gb);
// --backend cpu|cuda and --cpu-dot q8|f32, shared by run, eval, dump and bench.
void add_backend_option(CLI::App* c, std::string& backend, std::string& cpu_dot);
// What computes: "cpu, 16 threads" or "cuda, NVIDIA H100 80GB HBM3".
std::string backend_label(Engine& e);

// The engine options every command that loads a model shares (run, serve, eval, bench): the
// model, the backend and the KV layout; the caller adds the context and the indexer.
template <typename Args>
EngineOptions engine_options(const Args& a) {
  EngineOptions eo;
  eo.model_path = a.model;
  if constexpr (requires { a.synthetic; }) eo.synthetic = a.synthetic;
  if constexpr (requires { a.gpu_memory_gb; }) eo.gpu_memory_bytes = static_cast<uint64_t>(a.gpu_memory_gb * 1e9);
  eo.n_threads = a.threads;
  eo.backend = a.backend;
  eo.cpu_dot = parse_cpu_dot(a.cpu_dot);
  eo.kv_type = parse_kv_type(a.kv_type);
  if (a.page_tokens > 0) eo.page_tokens = a.page_tokens;  // else EngineOptions' default; lsa: page_tokens_for
  return eo;
}

struct RunArgs {
  std::string model;
  std::string prompt;
  std::string prompt_file;
  std::string system;
  int n_predict = 256;
  int64_t n_ctx = 0;
  bool chat = false;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  std::string backend = "cpu";
  std::string cpu_dot = "q8";
  int threads = 0;
  std::string kv_type = "f16";
  int page_tokens = 0;  // 0: page_tokens_for
  std::string report_json;
  MemoryArgs memory;
  bool kv_report = false;
  int64_t prompt_tokens = 0;
  std::string force_tokens;
  bool ignore_eos = false;
  double host_memory_gb = 0;  // cap on the request's host KV mirror (0: what the OS has available)
  double gpu_memory_gb = 0;   // cap on the engine's backend memory (0: none)
};

struct EvalArgs {
  std::string model;
  std::string suite = "ruler";
  std::vector<std::string> lengths{"4k"};
  bool lengths_given = false;  // --lengths was on the command line (needle requires it)
  std::vector<std::string> tasks{"all"};
  std::vector<std::string> haystacks;  // needle: one directory per text family
  int samples = 20;
  uint64_t seed = 0;
  std::vector<std::string> policies{"full"};
  std::vector<std::string> budgets{"10%"};
  MemoryArgs memory;
  std::string data;
  int64_t max_length = 0;
  std::string out;
  std::string backend = "cpu";
  std::string cpu_dot = "q8";
  int threads = 0;
  int page_tokens = 0;  // 0: page_tokens_for
  std::string kv_type = "f16";
  std::vector<std::string> compare;
  std::string summarize;
  std::string plot;
  std::string lsa_trace;  // JSONL of lsa's selections next to the answers (eval/selection_trace.h)
};

struct InfoArgs {
  std::string model;
  bool tensors = true;
};

struct BenchArgs {
  std::string model;
  std::string synthetic;  // NAME[:TYPE], instead of --model
  double gpu_memory_gb = 0;  // cap on the engine's backend memory (0: none)
  // --concurrency: the most requests of each depth that fit, decoded together
  bool concurrency = false;
  MemoryArgs memory;          // their policy and budget
  double host_memory_gb = 0;  // cap on all their host mirrors (0: what the OS has available)
  int max_requests = 256;
  int64_t n_ctx = 0;  // 0: the model's training context (a synthetic model is built with a longer one)
  bool synthetic_context = false;  // --concurrency: random KV for all but the prompt's last 128 tokens
  std::vector<int64_t> prefill{1024};
  std::vector<int64_t> depth{0};
  std::vector<int> batch{1};
  int n_gen = 64;
  int reps = 3;
  bool no_warmup = false;  // every test first runs once unmeasured, as llama-bench does
  std::string backend = "cpu";
  std::string cpu_dot = "q8";
  int threads = 0;
  std::string kv_type = "f16";
  int page_tokens = 64;
  std::string prefill_budget = "100%";
};

struct DumpArgs {
  std::string model;
  std::string out;
  std::vector<std::string> ruler_lengths{"4k"};
  std::vector<std::string> tasks{"all"};
  int ruler_samples = 0;
  uint64_t seed = 1000;  // not the eval's seed 0: dumped prompts never equal evaluated ones
  std::string prose;     // plain-text file for natural-text documents
  std::vector<std::string> prose_lengths{"4k"};
  int prose_docs = 0;
  std::vector<std::string> haystacks;  // text families (dirs) for needle and text documents
  std::vector<std::string> haystack_lengths{"4k"};
  int needle_samples = 0;  // needle prompts per family and length (answered by the model)
  int text_docs = 0;       // teacher-forced continuations per family and length
  std::vector<int> layers;
  std::vector<std::string> poolings{"post_rope_mean", "pre_rope_mean"};
  int chunk_tokens = 16;
  float top_p = 0.5f;
  int tau = 64;
  int point_stride = 8;
  int n_predict = 64;
  std::string shard = "0/1";
  std::string backend = "cpu";
  std::string cpu_dot = "q8";
  int threads = 0;
};

struct ServeArgs {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;
  int max_requests = 16;
  int max_queue = 64;
  double kv_memory_gb = 0;    // cap on the running requests' device KV reserves (0: none)
  double host_memory_gb = 0;  // cap on their host mirrors (0: none)
  double gpu_memory_gb = 0;   // cap on the engine's backend memory (0: none)
  int n_predict = 512;        // max_tokens when a request gives none
  int64_t prefill_chunk = 512;
  int64_t n_ctx = 0;
  std::string backend = "cpu";
  std::string cpu_dot = "q8";
  int threads = 0;
  std::string kv_type = "f16";
  int page_tokens = 0;  // 0: page_tokens_for
  MemoryArgs memory;
};

// "4k" → 4096, "4096" → 4096; Error(kInvalidArgument) otherwise.
int64_t parse_length(const std::string& s);

struct TrainIndexerArgs {
  std::string data;     // dump directory with train/ val/ test/
  std::string out;      // checkpoint (.safetensors)
  std::string evaluate; // score this checkpoint on the test split instead of training
  std::string select;   // write this checkpoint restricted to `layers` to `out` (no data)
  std::vector<std::string> set;  // with select: lsa.KEY=VALUE settings for the lsa policy
  std::string pooling = "post_rope_mean";
  std::vector<int> layers;
  int min_hits = 0;     // 0: 30 when training, the checkpoint's own with --evaluate
  std::string labels;   // "hits" or "mass"; empty: hits when training, the checkpoint's with --evaluate
  float mass_top_p = 0.0f;  // 0: 0.5 when training, the checkpoint's with --evaluate
  int heads = 12;
  int rank = 128;
  int epochs = 20;
  int batch = 16;
  float lr = 2e-3f;
  float weight_decay = 0.01f;
  int neg_ratio = 3;
  float gamma = 2.0f;
  uint64_t seed = 0;
  int threads = 0;
  std::string metrics_json;
  std::string hold_out;  // leave-one-family-out: train without this family, score on all of it
};

CLI::App* add_train_indexer_command(CLI::App& app, TrainIndexerArgs& a);
int train_indexer_command(const TrainIndexerArgs& a);
CLI::App* add_dump_command(CLI::App& app, DumpArgs& a);
int dump_command(const DumpArgs& a);
CLI::App* add_bench_command(CLI::App& app, BenchArgs& a);
int bench_command(const BenchArgs& a);
CLI::App* add_run_command(CLI::App& app, RunArgs& a);
CLI::App* add_info_command(CLI::App& app, InfoArgs& a);
int run_command(const RunArgs& a);
CLI::App* add_eval_command(CLI::App& app, EvalArgs& a);
int eval_command(const EvalArgs& a);
int info_command(const InfoArgs& a);
CLI::App* add_serve_command(CLI::App& app, ServeArgs& a);
int serve_command(const ServeArgs& a);

}  // namespace flashmem::cli
