// flashmem serve on the default model: the serving loop (many client threads, one scheduler,
// admission by memory) and, where cpp-httplib is built in, the HTTP API a client sees.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "engine/engine.h"
#include "server/serving.h"
#include "test_util.h"
#ifdef FLASHMEM_HAVE_HTTP
#include <httplib.h>

#include "http/http_server.h"
#endif

namespace flashmem::server {
namespace {

using namespace std::chrono_literals;

Engine& engine() {
  static std::unique_ptr<Engine> e;
  if (!e) {
    EngineOptions o;
    o.model_path = test::require_default_model();
    o.n_ctx = 1024;
    o.page_tokens = 16;
    e = Engine::load(o);
  }
  return *e;
}

// A question after a few hundred tokens of text, so that budgets below 100% have pages to choose.
std::string user_content(const std::string& question) {
  std::string doc;
  for (int i = 0; i < 6; ++i)
    doc += "The harbour town kept its records in a stone house by the quay. Every ship that came in "
           "was written down with its cargo, its captain and the day it left again. Paragraph " +
           std::to_string(i) + ".\n";
  return doc + "\n" + question;
}

std::vector<int32_t> chat_prompt(const std::string& question) {
  const std::string text = engine().chat().render({{"user", user_content(question)}}, true);
  return engine().tokenizer().encode(text, true, true);
}

GenerateOptions greedy(int n, const char* policy = "full", const char* budget = "100%") {
  GenerateOptions go;
  go.max_new_tokens = n;
  go.memory.policy = policy;
  go.memory.budget = KvBudget::parse(budget);
  go.memory.sink_tokens = go.memory.tail_tokens = 16;
  go.memory.cycle = 8;
  go.stop_strings = engine().chat().stop_strings();
  return go;
}

const char* kQuestions[4] = {"Name three colours.", "What is the capital of France?", "Count from one to five.",
                             "Write a haiku about the sea."};

TEST(ServingLoop, ConcurrentRequestsGetWhatEachGetsAloneAndFreeTheirMemory) {
  std::vector<GenerateResult> want;
  std::vector<GenerateOptions> opts = {greedy(24), greedy(30, "recency", "60%"), greedy(16), greedy(28, "random", "70%")};
  for (int i = 0; i < 4; ++i) want.push_back(engine().generate(chat_prompt(kQuestions[i]), opts[i]));
  ServingLoop loop(engine(), ServeOptions{});
  std::vector<std::shared_ptr<Job>> jobs(4);
  std::vector<std::string> streamed(4);
  std::vector<std::thread> clients;
  for (int i = 0; i < 4; ++i)
    clients.emplace_back([&, i] {
      jobs[i] = loop.submit(chat_prompt(kQuestions[i]), opts[i]);
      std::string piece;
      while (jobs[i]->next_text(piece)) streamed[i] += piece;
    });
  for (auto& t : clients) t.join();
  for (int i = 0; i < 4; ++i) {
    const GenerateResult& g = jobs[i]->result();
    EXPECT_EQ(g.tokens, want[i].tokens) << kQuestions[i];
    EXPECT_EQ(g.text, want[i].text) << kQuestions[i];
    EXPECT_EQ(streamed[i], g.text) << kQuestions[i];
    EXPECT_EQ(g.stop_reason, want[i].stop_reason);
  }
  const ServeMetrics m = loop.metrics();
  EXPECT_EQ(m.completed, 4);
  EXPECT_EQ(m.running, 0);
  EXPECT_EQ(m.host_kv_bytes, 0u);
  EXPECT_EQ(m.device_kv_bytes, 0u);
  EXPECT_GT(m.decode_rows, m.decode_passes);  // they decoded together
  int64_t generated = 0;
  for (const auto& w : want) generated += static_cast<int64_t>(w.tokens.size());
  EXPECT_EQ(m.generated_tokens, generated);
}

TEST(ServingLoop, AdmitsByMemoryQueuesTheRestAndRefusesWhatCanNeverFit) {
  const auto prompt = chat_prompt(kQuestions[0]);
  const GenerateOptions go = greedy(40);
  ServeOptions so;
  {
    ServingLoop probe(engine(), so);
    const Admission a = probe.admission(prompt, go);
    EXPECT_GT(a.device_bytes, 0u);
    EXPECT_GE(a.host_bytes, a.device_bytes);  // 100%: the reserve holds every page
    so.device_kv_bytes = 2 * a.device_bytes + a.device_bytes / 2;  // two fit, not three
  }
  so.max_queue = 2;
  ServingLoop loop(engine(), so);
  std::vector<std::shared_ptr<Job>> jobs;
  for (int i = 0; i < 4; ++i) jobs.push_back(loop.submit(prompt, go));
  // Two run, two wait; a fifth is refused (busy), and one that needs more than the cap is refused
  // at once (out of memory) with the arithmetic.
  bool saw_queue = false;
  for (int i = 0; i < 200 && !saw_queue; ++i) {
    const ServeMetrics m = loop.metrics();
    EXPECT_LE(m.running, 2);
    EXPECT_LE(m.device_kv_bytes, so.device_kv_bytes);
    saw_queue = m.running == 2 && m.queued >= 1;
    if (!saw_queue) std::this_thread::sleep_for(5ms);
  }
  EXPECT_TRUE(saw_queue);
  try {
    loop.submit(prompt, go);
    ADD_FAILURE() << "a fifth request was queued past the bound";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kBusy);
  }
  GenerateOptions huge = greedy(900);
  try {
    loop.submit(prompt, huge);
    ADD_FAILURE() << "a request larger than the cap was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kOutOfMemory);
    EXPECT_NE(std::string(e.what()).find("MiB"), std::string::npos) << e.what();
  }
  for (auto& j : jobs) j->wait();
  for (auto& j : jobs) EXPECT_EQ(j->result().tokens, jobs[0]->result().tokens);
  const ServeMetrics m = loop.metrics();
  EXPECT_EQ(m.completed, 4);
  EXPECT_EQ(m.rejected, 1);
  EXPECT_EQ(m.running + m.queued, 0);
  // Bad requests are refused before they queue.
  EXPECT_THROW(loop.submit(std::vector<int32_t>(2000, 1), go), Error);  // longer than the context
  GenerateOptions oracle = greedy(8, "oracle", "50%");
  EXPECT_THROW(loop.submit(prompt, oracle), Error);
}

TEST(ServingLoop, ACancelledRequestEndsAtOnceAndTheOthersGoOn) {
  ServingLoop loop(engine(), ServeOptions{});
  const GenerateOptions go = greedy(200);
  GenerateOptions endless = go;
  endless.stop_at_eos = false;
  endless.stop_strings.clear();
  auto a = loop.submit(chat_prompt(kQuestions[1]), endless);
  auto b = loop.submit(chat_prompt(kQuestions[2]), greedy(20));
  std::string piece;
  ASSERT_TRUE(a->next_text(piece));
  a->cancel();
  a->wait();
  EXPECT_EQ(a->result().stop_reason, "cancelled");
  EXPECT_LT(a->result().tokens.size(), 200u);
  b->wait();
  EXPECT_EQ(b->result().tokens, engine().generate(chat_prompt(kQuestions[2]), greedy(20)).tokens);
  for (int i = 0; i < 100 && loop.metrics().running > 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(loop.metrics().cancelled, 1);
  EXPECT_EQ(loop.metrics().device_kv_bytes, 0u);
}

#ifdef FLASHMEM_HAVE_HTTP
TEST(HttpServer, ServesTheOpenAiApi) {
  ServingLoop loop(engine(), ServeOptions{.max_running = 4, .max_queue = 4});
  HttpOptions ho;
  ho.port = 0;
  ho.api_key = "k3y";
  ho.model_name = "smol";
  HttpServer http(engine(), loop, ho);
  const int port = http.start();
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(120, 0);
  const httplib::Headers auth = {{"Authorization", "Bearer k3y"}};
  const GenerateResult want = engine().generate(chat_prompt(kQuestions[1]), greedy(24));

  auto res = cli.Get("/health");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = cli.Get("/v1/models");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  res = cli.Get("/v1/models", auth);
  ASSERT_TRUE(res);
  EXPECT_EQ(nlohmann::json::parse(res->body)["data"][0]["id"], "smol");

  const std::string body = nlohmann::json{{"messages", {{{"role", "user"}, {"content", user_content(kQuestions[1])}}}},
                                          {"max_tokens", 24}, {"temperature", 0}}
                               .dump();
  res = cli.Post("/v1/chat/completions", body, "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  res = cli.Post("/v1/chat/completions", auth, body, "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const auto j = nlohmann::json::parse(res->body);
  EXPECT_EQ(j["choices"][0]["message"]["content"], want.text);
  EXPECT_EQ(j["usage"]["completion_tokens"], static_cast<int64_t>(want.tokens.size()));
  EXPECT_EQ(j["choices"][0]["finish_reason"], std::string(want.stop_reason == "length" ? "length" : "stop"));

  // Streamed: the deltas add up to the same text; the last chunk has the usage; then [DONE].
  auto sj = nlohmann::json::parse(body);
  sj["stream"] = true;
  std::string sse;
  res = cli.Post("/v1/chat/completions", auth, sj.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  sse = res->body;
  std::string text;
  bool usage = false, done = false;
  for (size_t at = 0; (at = sse.find("data: ", at)) != std::string::npos;) {
    const size_t end = sse.find("\n\n", at);
    const std::string data = sse.substr(at + 6, end - at - 6);
    at = end;
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    const auto ev = nlohmann::json::parse(data);
    if (ev["choices"][0]["delta"].contains("content")) text += ev["choices"][0]["delta"]["content"].get<std::string>();
    usage = usage || ev.contains("usage");
  }
  EXPECT_EQ(text, want.text);
  EXPECT_TRUE(usage);
  EXPECT_TRUE(done);

  // Errors are JSON with the right status, and the server goes on.
  res = cli.Post("/v1/chat/completions", auth, "{not json", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_TRUE(nlohmann::json::parse(res->body).contains("error"));
  res = cli.Post("/v1/completions", auth, nlohmann::json{{"prompt", std::string(6000, 'a') + " b"}}.dump(),
                 "application/x-www-form-urlencoded");  // as curl -d labels it
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_NE(res->body.find("context_length_exceeded"), std::string::npos) << res->body;
  res = cli.Post("/v1/completions", auth, R"({"prompt": "x", "kv_budget": "150%"})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  res = cli.Get("/v1/nothing", auth);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);

  // A client that leaves mid-stream cancels its request.
  auto leave = nlohmann::json::parse(body);
  leave["stream"] = true;
  leave["max_tokens"] = 400;
  leave["stop"] = "never-appears";
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.headers = auth;
  req.body = leave.dump();
  req.set_header("Content-Type", "application/json");
  int chunks = 0;
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
  {
    httplib::Client quitter("127.0.0.1", port);
    quitter.send(req);
  }  // its connection is closed here
  // The server notices at its next write (a heartbeat at most a second later), and the request
  // ends at the scheduler's next step, which a loaded machine may take a while to reach.
  for (int i = 0; i < 12000 && loop.metrics().cancelled < 1; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(loop.metrics().cancelled, 1);

  res = cli.Get("/metrics", auth);
  ASSERT_TRUE(res);
  EXPECT_NE(res->body.find("flashmem_requests_total{outcome=\"completed\"} 2"), std::string::npos) << res->body;
  EXPECT_NE(res->body.find("flashmem_device_kv_bytes"), std::string::npos);
  EXPECT_NE(res->body.find("flashmem_decode_tokens_per_second"), std::string::npos);
  http.stop();
}
#endif

}  // namespace
}  // namespace flashmem::server
