// flashmem/engine/request.h — one generation, advanced a forward pass at a time.
//
//   Request r(eng, prompt, opts, on_text);   // checked; its device reserve allocated
//   while (auto in = r.next_input()) {       // a prefill chunk, or one token to decode
//     eng.model().forward_batch({&*in, 1});
//     r.consume();
//   }
//   const GenerateResult& g = r.result();
//
// A Scheduler (engine/scheduler.h) runs many requests at once, the decode tokens of one step in
// one forward pass. A request first prefills its prompt (exact attention streamed through its
// reserve, in chunks), then decodes: each step samples from the last logits, applies the stop
// rules, streams text, lets its residency policy choose (every τ steps), and asks for one
// token's forward pass. Each request has its own store, budget, policy and τ-cycle.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "engine/engine.h"

namespace flashmem {

using TextCallback = std::function<void(std::string_view)>;

class Request {
 public:
  // Prefills `prompt` itself, prefill_chunk tokens per forward pass (≤ 0: the whole prompt in
  // one), then decodes. The checks of Engine::generate; a policy that replays a recorded pass
  // (oracle) is refused here: Engine::decode runs it.
  Request(Engine& eng, const std::vector<int32_t>& prompt, const GenerateOptions& opts,
          TextCallback on_text = {}, int64_t prefill_chunk = 0);
  // Decodes a finished prefill in a fork of its store (p is left as it was and must outlive the
  // request); `replay` feeds the oracle, `record` receives a full-attention trace.
  Request(Engine& eng, const Prefilled& p, const GenerateOptions& opts, TextCallback on_text = {},
          const AttentionTrace* replay = nullptr, AttentionTrace* record = nullptr);
  ~Request();
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  // This request's share of the next forward pass, or nullopt once it has finished. A decode
  // step samples here (and may finish on a stop rule). An Error thrown here leaves the request
  // as it was; the caller may fail() it.
  std::optional<SequenceInput> next_input();
  // After the forward pass that next_input's share took part in.
  void consume();
  // Ends the request now: stop_reason "cancelled" (the client went away) or "error" with `why`;
  // its device pages are released at once.
  void cancel();
  void fail(const std::string& why);

  // Prompt tokens per prefill pass from now on (≤ 0: all that are left, in one).
  void set_prefill_chunk(int64_t n) { prefill_chunk_ = n; }

  bool finished() const { return phase_ == Phase::kDone; }
  bool prefilling() const { return phase_ == Phase::kPrefill; }
  // Complete once finished(); while running, the tokens and text so far.
  const GenerateResult& result() const { return r_; }
  // Device bytes of its KV reserve now (0 once finished).
  uint64_t reserve_bytes() const;

 private:
  enum class Phase { kPrefill, kDecode, kDone };
  void start_decode();
  // Samples the next token and applies the stop rules; false when the request ends.
  bool take_token();
  void widen(int64_t tokens_left);
  void finish(const std::string& reason);

  Engine& eng_;
  GenerateOptions opts_;
  TextCallback on_text_;
  RecallStats step_recall_;       // recalls before this decode step (KvReport::recall_steps)
  const RecallEngine* step_engine_ = nullptr;  // whose they were (a widen changes the engine)
  RecallStats prefill_recall_;  // the prefill's recalls (KvReport::decode_recall leaves them out)
  int64_t prefill_chunk_ = 0;
  Phase phase_ = Phase::kPrefill;
  int64_t in_flight_ = 0;  // tokens of the pass next_input gave, until consume()
  std::chrono::steady_clock::time_point pass_t0_;

  std::unique_ptr<Prefilled> own_;  // the prefill this request runs itself
  const Prefilled* p_ = nullptr;    // the prefill decoded (own_ or the caller's)
  bool fork_ = false;
  const AttentionTrace* replay_ = nullptr;
  AttentionTrace* record_ = nullptr;
  int64_t final_tokens_ = 0;
  int64_t budget_pages_ = 0;

  // The store decoded in: p_'s own (not forked) or a fork, then a full-budget one after lsa's
  // needle fallback.
  std::unique_ptr<RecallEngine> recall_;
  std::unique_ptr<TieredKvStore> kv_;
  TieredKvStore* kvp_ = nullptr;
  RecallEngine* recallp_ = nullptr;
  IndexerQuery query_;
  std::unique_ptr<QueryTap> tap_;
  std::unique_ptr<TraceRecorder> recorder_;
  std::unique_ptr<Residency> residency_;
  LsaPolicy* lsa_ = nullptr;
  // What the narrow store measured before a needle fallback (lsa).
  double narrow_sum_ = 0;
  int64_t narrow_samples_ = 0;
  KvFootprint narrow_peak_;
  RecallStats narrow_recall_;
  bool widened_ = false;

  std::optional<Sampler> sampler_;
  std::optional<StreamDecoder> dec_;
  size_t emitted_ = 0;
  int step_ = 0;  // tokens sampled
  int32_t token_ = 0;
  std::vector<float> logits_;
  std::chrono::steady_clock::time_point t0_;
  GenerateResult r_;
};

}  // namespace flashmem
