// flashmem serve — an OpenAI-compatible HTTP server whose capacity is the KV budget.
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "commands.h"
#include "core/error.h"
#include "engine/engine.h"
#include "memory/policy.h"
#ifdef FLASHMEM_HAVE_HTTP
#include "http/http_server.h"
#endif
#include "server/serving.h"

namespace flashmem::cli {

CLI::App* add_serve_command(CLI::App& app, ServeArgs& a) {
  CLI::App* c = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API");
  c->add_option("-m,--model", a.model, "GGUF model file")->required();
  c->add_option("--host", a.host, "Address to listen on")->capture_default_str();
  c->add_option("--port", a.port, "Port to listen on (0: any free port)")->check(CLI::Range(0, 65535))->capture_default_str();
  c->add_option("--api-key", a.api_key, "Require \"Authorization: Bearer KEY\" on /v1/* and /metrics");
  c->add_option("--max-requests", a.max_requests, "Requests decoding at once")->check(CLI::Range(1, 4096))->capture_default_str();
  c->add_option("--max-queue", a.max_queue, "Requests waiting beyond those (more get HTTP 429)")
      ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  c->add_option("--kv-memory", a.kv_memory_gb, "Cap in GB on the running requests' device KV reserves (0: none)")
      ->check(CLI::Range(0.0, 1e6))->capture_default_str();
  c->add_option("--host-memory", a.host_memory_gb, "Cap in GB on the running requests' host KV mirrors (0: none)")
      ->check(CLI::Range(0.0, 1e6))->capture_default_str();
  add_gpu_memory_option(c, a.gpu_memory_gb);
  c->add_option("-n,--n-predict", a.n_predict, "max_tokens of a request that gives none")
      ->check(CLI::Range(1, 1 << 24))->capture_default_str();
  c->add_option("--prefill-chunk", a.prefill_chunk, "Prompt tokens per prefill pass between decode steps")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))->capture_default_str();
  c->add_option("-c,--ctx", a.n_ctx, "Context length in tokens (0: the model's)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30))->capture_default_str();
  c->add_option("-t,--threads", a.threads, "CPU threads (0: all cores)")->check(CLI::Range(0, 1024))->capture_default_str();
  add_backend_option(c, a.backend, a.cpu_dot);
  c->add_option("--kv-type", a.kv_type, "KV cache precision")->check(CLI::IsMember({"f16", "f32", "q8"}))->capture_default_str();
  c->add_option("--page-tokens", a.page_tokens, "Tokens per KV page (default 64; with --policy lsa, the indexer's chunk size)")
      ->check(CLI::Range(1, 4096))
      ->default_str("auto");
  add_memory_options(c, a.memory);
  return c;
}

namespace {
volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }
}  // namespace

int serve_command(const ServeArgs& a) {
  ResidencyOptions memory = residency_options(a.memory);  // bad flags fail before loading
#ifndef FLASHMEM_HAVE_HTTP
  (void)memory;
  FM_FAIL(ErrorCode::kUnsupported, "this flashmem was built without cpp-httplib, so it cannot serve: install "
          "libcpp-httplib-dev (scripts/install-deps.sh) and rebuild");
#else
  EngineOptions eo = engine_options(a);
  eo.n_ctx = a.n_ctx;
  // Requests may ask for lsa themselves: load the shipped indexer when there is one.
  eo.indexer_path = a.memory.indexer;
  if (eo.indexer_path.empty()) {
    try {
      eo.indexer_path = indexer_path(a.memory, a.model, true);
    } catch (const Error&) {
      FM_CHECK(!policy_traits(memory.policy).needs_indexer, ErrorCode::kInvalidArgument, "policy ", memory.policy,
               " needs a Memory Indexer (--indexer FILE)");
    }
  }
  const auto settings = indexer_settings(eo.indexer_path);
  eo.page_tokens = page_tokens_for(a.page_tokens, settings, eo.indexer_path, policy_traits(memory.policy).needs_indexer);
  apply_lsa_metadata(settings, a.memory.lsa_given, eo.indexer_path, memory.lsa);
  eo.device_kv_bytes = static_cast<uint64_t>(a.kv_memory_gb * 1e9);  // the reserve never outgrows admission
  auto eng = Engine::load(eo);
  server::ServeOptions so;
  so.max_running = a.max_requests;
  so.max_queue = a.max_queue;
  so.device_kv_bytes = eng->device_kv_cap();  // --kv-memory, or what --gpu-memory leaves
  so.host_kv_bytes = static_cast<uint64_t>(a.host_memory_gb * 1e9);
  so.prefill_chunk = a.prefill_chunk;
  server::ServingLoop loop(*eng, so);
  server::HttpOptions ho;
  ho.host = a.host;
  ho.port = a.port;
  ho.api_key = a.api_key;
  ho.model_name = std::filesystem::path(a.model).stem().string();
  ho.default_max_tokens = a.n_predict;
  ho.memory = memory;
  server::HttpServer http(*eng, loop, ho);
  const int port = http.start();
  std::fprintf(stderr, "[flashmem] serving %s on http://%s:%d (policy %s, budget %s, %d requests at once, %s)\n",
               ho.model_name.c_str(), a.host.c_str(), port, memory.policy.c_str(), memory.budget.str().c_str(),
               a.max_requests, backend_label(*eng).c_str());
  std::fflush(stderr);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "[flashmem] stopping\n");
  http.stop();
  return 0;
#endif
}

}  // namespace flashmem::cli
