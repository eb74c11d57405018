// flashmem/http/http_server.h — `flashmem serve`'s HTTP layer: OpenAI-compatible endpoints over
// a ServingLoop, on cpp-httplib (Debian's libcpp-httplib-dev: maintained, packaged, a thread
// pool and chunked responses built in, which server-sent events need).
//
//   POST /v1/chat/completions, /v1/completions   (stream or not; see server/openai.h)
//   GET  /v1/models, /health, /metrics           (Prometheus text)
//
// Status codes: 400 for a bad body, a prompt longer than the context (with the arithmetic) or a
// request that can never fit the memory caps; 401 without the API key (when one is set); 413 for
// a body over 16 MiB; 429 with Retry-After when the queue is full; 500 if a request fails inside.
// A client that disconnects cancels its request, which frees its pages at the next step.
#pragma once

#include <memory>
#include <string>

#include "memory/residency.h"
#include "server/serving.h"

namespace flashmem::server {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                  // 0: any free port (start() says which)
  std::string api_key;              // non-empty: /v1/* and /metrics need "Authorization: Bearer KEY"
  std::string model_name;           // what /v1/models lists and responses carry
  int default_max_tokens = 512;     // when a request gives no max_tokens
  ResidencyOptions memory;          // the policy and budget a request gets unless it names its own
  int read_timeout_s = 30;          // a client slower than this to send its request is dropped
};

class HttpServer {
 public:
  HttpServer(Engine& eng, ServingLoop& loop, HttpOptions o);
  ~HttpServer();
  // Binds and serves on a thread of its own; returns the port. Error(kIo) if it cannot bind.
  int start();
  // Stops accepting and waits for the serving thread (requests in flight end with the loop).
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flashmem::server
