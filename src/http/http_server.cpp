#include "http/http_server.h"

#include <httplib.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

#include "core/error.h"
#include "memory/policy.h"
#include "server/openai.h"

namespace flashmem::server {

namespace {

using namespace std::chrono_literals;

constexpr auto kHeartbeat = 1000ms;  // how often a waiting response checks that its client is there
constexpr auto kSyncWait = 2000ms;   // a non-streamed response waits this long before it commits to 200

void reply_error(httplib::Response& res, int status, const std::string& message, const std::string& type,
                 const std::string& code = {}) {
  res.status = status;
  res.set_content(error_body(message, type, {}, code), "application/json");
}

// An engine error → its HTTP status, OpenAI error type and code.
void reply_error(httplib::Response& res, const Error& e) {
  switch (e.code()) {
    case ErrorCode::kBusy:
      res.set_header("Retry-After", "1");
      return reply_error(res, 429, e.what(), "rate_limit_error", "server_busy");
    case ErrorCode::kOutOfRange:
      return reply_error(res, 400, e.what(), "invalid_request_error", "context_length_exceeded");
    case ErrorCode::kOutOfMemory:
      return reply_error(res, 400, e.what(), "invalid_request_error", "kv_memory_exceeded");
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kUnsupported:
    case ErrorCode::kFormat:
      return reply_error(res, 400, e.what(), "invalid_request_error");
    default:
      return reply_error(res, 500, e.what(), "server_error");
  }
}

bool same_secret(const std::string& a, const std::string& b) {
  // Constant time in the contents (the length is not secret).
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
  return d == 0;
}

std::string metric(const char* name, const char* type, const char* help, double v, const char* labels = "") {
  char buf[512];
  std::snprintf(buf, sizeof buf, "# HELP %s %s\n# TYPE %s %s\n%s%s %.17g\n", name, help, name, type, name, labels, v);
  return buf;
}

}  // namespace

struct HttpServer::Impl {
  Engine& eng;
  ServingLoop& loop;
  HttpOptions o;
  httplib::Server svr;
  std::thread th;
  int port = 0;
  std::atomic<int64_t> next_id{1};
  std::mt19937_64 seeds{std::random_device{}()};
  std::mutex seeds_m;

  Impl(Engine& e, ServingLoop& l, HttpOptions opts) : eng(e), loop(l), o(std::move(opts)) {}

  uint64_t fresh_seed() {
    std::lock_guard<std::mutex> lk(seeds_m);
    return seeds();
  }

  void completions(const std::string& body, httplib::Response& res, ApiKind kind) {
    ApiRequest q;
    std::shared_ptr<Job> job;
    try {
      // A full queue refuses at once, before a long prompt is tokenized for nothing.
      if (loop.saturated()) loop.reject_busy();
      q = parse_api_request(body, kind);
      GenerateOptions go;
      go.memory = o.memory;
      if (q.policy) {
        go.memory.policy = *q.policy;
        if (policy_traits(*q.policy).keeps_all) go.memory.budget = KvBudget{};
      }
      if (q.kv_budget) go.memory.budget = KvBudget::parse(*q.kv_budget);
      go.sampling = q.sampling;
      if (!q.seeded) go.sampling.seed = fresh_seed();
      go.max_new_tokens = q.max_tokens.value_or(o.default_max_tokens);
      go.stop_strings = q.stop;
      std::string text = q.prompt;
      if (kind == ApiKind::kChat) {
        const ChatTemplate& tpl = eng.chat();
        text = tpl.render(q.messages, true);
        for (const auto& s : tpl.stop_strings()) go.stop_strings.push_back(s);
      }
      job = loop.submit(eng.tokenizer().encode(text, true, true), go);
    } catch (const Error& e) {
      return reply_error(res, e);
    }
    const std::string id = (kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++);
    const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::system_clock::now().time_since_epoch()).count();
    const std::string model = o.model_name;
    if (q.stream) {
      auto first = std::make_shared<bool>(true);
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [job, kind, id, created, model, first](size_t, httplib::DataSink& sink) {
            auto write = [&](const std::string& s) {
              if (sink.write(s.data(), s.size())) return true;
              job->cancel();  // the client is gone
              return false;
            };
            if (*first) {
              *first = false;
              if (kind == ApiKind::kChat) return write(stream_event(kind, id, created, model, "", {}, std::nullopt, true));
            }
            std::string piece;
            switch (job->next_text_for(piece, kHeartbeat)) {
              case Job::Next::kTimeout:
                return write(": keep-alive\n\n");  // an SSE comment: shows a vanished client
              case Job::Next::kText:
                return write(stream_event(kind, id, created, model, piece));
              case Job::Next::kDone:
                break;
            }
            const GenerateResult& g = job->result();
            if (g.stop_reason == "error") {
              if (!write("data: " + error_body(g.error, "server_error") + "\n\n")) return false;
            } else if (g.stop_reason != "cancelled") {
              const Usage u{g.n_prompt, static_cast<int64_t>(g.tokens.size())};
              if (!write(stream_event(kind, id, created, model, "", finish_reason(g.stop_reason), u))) return false;
            }
            if (!write("data: [DONE]\n\n")) return false;
            sink.done();
            return true;
          },
          [job](bool success) {
            if (!success) job->cancel();
          });
      return;
    }
    auto final_body = [job, kind, id, created, model]() {
      const GenerateResult& g = job->result();
      return completion_body(kind, id, created, model, g.text, finish_reason(g.stop_reason),
                             Usage{g.n_prompt, static_cast<int64_t>(g.tokens.size())});
    };
    if (job->wait_for(kSyncWait)) {
      const GenerateResult& g = job->result();
      if (g.stop_reason == "error") return reply_error(res, 500, g.error, "server_error");
      res.set_content(final_body(), "application/json");
      return;
    }
    // A long request: the status is committed now, and a space (JSON allows leading white space)
    // every second finds out whether the client is still there.
    res.set_chunked_content_provider(
        "application/json",
        [job, final_body](size_t, httplib::DataSink& sink) {
          if (!job->wait_for(kHeartbeat)) {
            if (sink.write(" ", 1)) return true;
            job->cancel();
            return false;
          }
          const GenerateResult& g = job->result();
          const std::string out = g.stop_reason == "error" ? error_body(g.error, "server_error") : final_body();
          if (!sink.write(out.data(), out.size())) return false;
          sink.done();
          return true;
        },
        [job](bool success) {
          if (!success) job->cancel();
        });
  }

  std::string metrics_text() const {
    const ServeMetrics m = loop.metrics();
    std::string t;
    t += metric("flashmem_requests_running", "gauge", "Requests prefilling or decoding now.", double(m.running));
    t += metric("flashmem_requests_queued", "gauge", "Requests waiting for memory or a slot.", double(m.queued));
    t += "# HELP flashmem_requests_total Requests by outcome.\n# TYPE flashmem_requests_total counter\n";
    for (const auto& [k, v] : {std::pair<const char*, int64_t>{"completed", m.completed}, {"cancelled", m.cancelled},
                               {"failed", m.failed}, {"rejected", m.rejected}})
      t += "flashmem_requests_total{outcome=\"" + std::string(k) + "\"} " + std::to_string(v) + "\n";
    t += metric("flashmem_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", double(m.prompt_tokens));
    t += metric("flashmem_generated_tokens_total", "counter", "Tokens generated by finished requests.",
                double(m.generated_tokens));
    t += metric("flashmem_decode_tokens_per_second", "gauge", "Tokens decoded per second of decode passes, all requests.",
                m.decode_seconds > 0 ? double(m.decode_rows) / m.decode_seconds : 0.0);
    t += metric("flashmem_decode_batch_mean", "gauge", "Mean requests per decode pass.",
                m.decode_passes > 0 ? double(m.decode_rows) / double(m.decode_passes) : 0.0);
    t += metric("flashmem_device_kv_bytes", "gauge", "KV reserve bytes of the running requests, as allocated.",
                double(m.device_kv_bytes));
    t += metric("flashmem_host_mirror_bytes", "gauge", "Host mirror bytes admitted for the running requests.",
                double(m.host_kv_bytes));
    t += metric("flashmem_pages_recalled_total", "counter", "KV pages copied host to device by finished requests.",
                double(m.pages_recalled));
    t += metric("flashmem_widenings_total", "counter", "lsa needle fallbacks (off in serve).", double(m.widenings));
    t += metric("flashmem_rejections_total", "counter", "Requests refused with 429 (queue full).", double(m.rejected));
    return t;
  }

  void routes() {
    svr.set_payload_max_length(kMaxBodyBytes);
    svr.set_read_timeout(o.read_timeout_s, 0);
    const size_t threads = static_cast<size_t>(
        std::clamp(loop.options().max_running + loop.options().max_queue + 8, 8, 512));
    svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (o.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
      if (same_secret(req.get_header_value("Authorization"), "Bearer " + o.api_key))
        return httplib::Server::HandlerResponse::Unhandled;
      reply_error(res, 401, "a valid API key is required (Authorization: Bearer KEY)", "invalid_request_error",
                  "invalid_api_key");
      return httplib::Server::HandlerResponse::Handled;
    });
    svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      const std::string msg = res.status == 404   ? "no such endpoint: " + req.method + " " + req.path
                              : res.status == 413 ? "the body is larger than 16 MiB"
                                                  : "the request could not be served";
      res.set_content(error_body(msg, "invalid_request_error"), "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }));
    svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string msg = "internal error";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        msg = e.what();
      } catch (...) {
      }
      reply_error(res, 500, msg, "server_error");
    });
    // The body is read here whatever its Content-Type says (curl -d sends JSON labelled as a
    // form, which httplib would otherwise parse as one and refuse past 8 KiB).
    for (const auto& [path, kind] : {std::pair{"/v1/chat/completions", ApiKind::kChat},
                                     std::pair{"/v1/completions", ApiKind::kCompletion}})
      svr.Post(path, [this, kind = kind](const httplib::Request&, httplib::Response& r, const httplib::ContentReader& read) {
        std::string body;
        read([&](const char* data, size_t n) {
          body.append(data, n);
          return body.size() <= kMaxBodyBytes;
        });
        completions(body, r, kind);
      });
    svr.Get("/v1/models", [this](const httplib::Request&, httplib::Response& r) {
      const nlohmann::json j = {{"object", "list"},
                                {"data", {{{"id", o.model_name}, {"object", "model"}, {"owned_by", "flashmem"},
                                           {"created", 0}, {"context_length", eng.n_ctx()}}}}};
      r.set_content(j.dump(), "application/json");
    });
    svr.Get("/health", [](const httplib::Request&, httplib::Response& r) {
      r.set_content("{\"status\":\"ok\"}", "application/json");
    });
    svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
      r.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
  }
};

HttpServer::HttpServer(Engine& eng, ServingLoop& loop, HttpOptions o)
    : impl_(std::make_unique<Impl>(eng, loop, std::move(o))) {
  impl_->routes();
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::start() {
  Impl& s = *impl_;
  if (s.o.port == 0) {
    s.port = s.svr.bind_to_any_port(s.o.host);
  } else {
    s.port = s.svr.bind_to_port(s.o.host, s.o.port) ? s.o.port : -1;
  }
  FM_CHECK(s.port > 0, ErrorCode::kIo, "cannot listen on ", s.o.host, ":", s.o.port,
           " (in use, or not an address of this machine)");
  s.th = std::thread([&s] { s.svr.listen_after_bind(); });
  while (!s.svr.is_running()) std::this_thread::sleep_for(1ms);
  return s.port;
}

void HttpServer::stop() {
  if (!impl_ || !impl_->th.joinable()) return;
  impl_->svr.stop();
  impl_->th.join();
}

}  // namespace flashmem::server
