// flashmem/memory/tiered_kv.h — the LSA KV store: a bounded device reserve in front of a host
// mirror (DESIGN.md §3–§4).
//
// Per request and layer, KV lives in pages of page_tokens tokens:
//  * the open (partial) page sits in a reserve slot and takes the new tokens;
//  * when it fills, it is written through to the host mirror, which holds every completed
//    page; its slot keeps it resident;
//  * a page table maps resident pages to reserve slots. Resident pages are either *selected*
//    (pinned: attention reads them this cycle) or *cached* (kept only to save a recall;
//    evicted least-recently-used first, and only ever among this request's own pages).
//
// Two modes:
//  * prefill (streaming): attention reads every page of the layer. Pages already resident are
//    read in place; the others stream through the reserve in windows of at most budget − 1
//    pages, and the partial results are merged (log-sum-exp), so a prompt of any length
//    prefills while the device never holds more than the request's budget;
//  * decode: after select(), attention reads only the selected pages plus the pages filled
//    since (the open page included). Nothing the policy selected is ever skipped: select()
//    recalls every missing page (one batched gather) before it returns.
//
// The request's quota in the reserve is budget_pages × n_layers slots, taken at construction
// (admission): a request that does not fit is refused with Error(kOutOfMemory).
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <span>
#include <tuple>
#include <vector>

#include "memory/kv_store.h"
#include "memory/recall.h"
#include "memory/reserve.h"

namespace flashmem {

class TieredKvStore;
class PromptObserver;

// Exact bytes by category, for one request (DESIGN.md §4: footprint is measured).
struct KvFootprint {
  uint64_t reserve = 0;     // reserve slots holding completed pages of this request
  uint64_t open = 0;        // reserve slots holding open (partial) pages
  uint64_t index_keys = 0;  // selection metadata kept on the device (page bounds, index keys)
  uint64_t scratch = 0;     // selector scratch on the device
  uint64_t mirror = 0;      // host mirror: completed pages (not device memory)
  uint64_t full_kv = 0;     // what the full-KV path holds for the same tokens
  uint64_t device() const { return reserve + open + index_keys + scratch; }
};

// Called around every decode-mode attention: query-aware policies (quest) change the layer's
// selection in before_attend (q is a host copy); recorders of what attention used (the oracle's
// trace, the dump's labels) read it in after_attend, where q and the pages are in the memory of
// `be`, the backend attention ran on (so they compute with its ops, e.g. chunk_mass).
class AttendHook {
 public:
  virtual ~AttendHook() = default;
  virtual void before_attend(TieredKvStore& /*s*/, int /*layer*/, const AttentionParams& /*p*/,
                             const float* /*q*/, const int32_t* /*pos*/, int64_t /*m*/) {}
  // pages[i] is page number ids[i] of the layer (the open page included); pos is host memory.
  virtual void after_attend(Backend& /*be*/, int /*layer*/, const AttentionParams& /*p*/,
                            const float* /*q*/, const int32_t* /*pos*/, int64_t /*m*/,
                            std::span<const KvPageRef> /*pages*/,
                            std::span<const int32_t> /*ids*/) {}
};

class TieredKvStore final : public KvStore {
 public:
  // budget_pages: device pages per layer (open page included), ≥ 2. The reserve and the recall
  // engine share the backend the model computes on. Throws
  // Error(kInvalidArgument) for a bad configuration and Error(kOutOfMemory) when the reserve
  // cannot admit budget_pages × n_layers slots or the mirror cannot be allocated.
  TieredKvStore(const KvCacheConfig& c, int64_t budget_pages, KvReserve& reserve,
                RecallEngine& recall);
  // A fork of `src` (same tokens) admitted into its own reserve with its own budget: the mirror
  // is copied, the open pages take slots here, every completed page starts non-resident. Lets
  // one prefill serve several policies (the eval harness); decoding then goes through the
  // fork's budget only.
  TieredKvStore(const TieredKvStore& src, int64_t budget_pages, KvReserve& reserve,
                RecallEngine& recall);
  ~TieredKvStore() override;
  TieredKvStore(const TieredKvStore&) = delete;
  TieredKvStore& operator=(const TieredKvStore&) = delete;

  const KvCacheConfig& config() const override { return cfg_; }
  void append(int layer, int64_t n, const float* k, const float* v) override;
  void attend(Backend& be, int layer, const AttentionParams& p, const float* q,
              const int32_t* pos, int64_t m, float* out) override;
  int64_t n_tokens(int layer) const override { return layers_[layer].tokens; }
  using KvStore::n_tokens;
  // The batched decode path (KvStore): in decode mode, the selected pages and the open one; in
  // streaming mode only when every page is resident (else attend streams them).
  bool begin_token(int layer, KvSlotRef& slot) override;
  void commit_token(int layer) override;
  bool decode_pages(Backend& be, int layer, const AttentionParams& p, const float* q, int32_t pos,
                    std::vector<KvPageRef>& pages) override;
  void after_decode_attend(Backend& be, int layer, const AttentionParams& p, const float* q, int32_t pos) override;

  int64_t budget_pages() const { return budget_; }
  int64_t completed_pages(int layer) const { return layers_[layer].tokens / cfg_.page_tokens; }
  bool decode_mode() const { return decode_mode_; }

  // Back to streaming mode (before more prompt tokens): the selection becomes cached pages.
  void begin_prefill();
  // How many completed pages a layer may keep selected when the next `steps` tokens will be
  // appended before the next selection (they fill the open page and new ones).
  int64_t selection_capacity(int layer, int64_t steps) const;
  // Decode mode: each layer's selection becomes per_layer[layer] (completed page numbers,
  // distinct, at most budget − 1 each). Missing pages are recalled in one batch. Throws
  // Error(kInvalidArgument) for a page out of range, a duplicate, or too many pages.
  void select(std::span<const std::vector<int32_t>> per_layer);
  // The same for one layer (per-step policies).
  void select_layer(int layer, std::span<const int32_t> pages);
  std::span<const int32_t> selected(int layer) const { return layers_[layer].selected; }

  bool resident(int layer, int32_t page) const;
  int64_t resident_pages() const;  // over all layers, open pages included
  const uint8_t* mirror_page(int layer, int32_t page) const;
  const KvReserve& reserve() const { return reserve_; }
  // This store's admitted share of the reserve (its quota), in bytes.
  uint64_t reserve_quota_bytes() const {
    return static_cast<uint64_t>(reserve_.quota(client_)) * reserve_.page_bytes();
  }
  const RecallEngine& recall() const { return recall_; }

  // Observers of every decode-mode attention, called in the order they were added (each at most
  // once; removing one that was never added does nothing).
  void add_hook(AttendHook* h);
  void remove_hook(AttendHook* h);
  // Sees every part of the streamed prefill attention (memory/observation.h); nullptr: none.
  void set_prompt_observer(PromptObserver* o) { observer_ = o; }
  // Called with each page's bytes when it completes (policies build page metadata from it).
  void set_page_listener(std::function<void(int layer, int32_t page, const uint8_t* data)> f) {
    listener_ = std::move(f);
  }
  // Selection metadata and scratch the policy keeps on the device, for the footprint.
  void set_aux_bytes(uint64_t index_keys, uint64_t scratch);

  KvFootprint footprint() const;
  KvFootprint peak() const { return peak_; }  // at the moment device() was largest
  // Adds the current device bytes to the running mean (the engine samples once per step).
  void sample();
  double mean_device_bytes() const;
  int64_t samples() const { return sample_count_; }

 private:
  struct PageState {
    int64_t slot = -1;   // reserve slot, −1 when only in the mirror
    bool pinned = false; // selected or open: never evicted
    uint64_t tick = 0;   // last unpin time, for LRU
  };
  struct Layer {
    std::vector<PageState> pages;   // by page number; the last may be open
    int64_t tokens = 0;
    std::vector<int32_t> selected;  // pinned completed pages in decode mode, ascending
  };
  using LruKey = std::tuple<uint64_t, int, int32_t>;

  uint8_t* mirror_ptr(int layer, int32_t page) const;
  // Allocates the mirror segments up to the one holding `page`.
  void grow_mirror(int32_t page);
  // Waits for write-backs still in flight before the host reads the mirror.
  void sync_mirror() const;
  // Issues the write-backs of the pages completed since the last call, as one batch.
  void flush_write_backs() const;
  int64_t take_slot();
  void pin(int layer, int32_t page);
  void unpin(int layer, int32_t page);
  void touch(int layer, int32_t page);
  // The attention view of a resident page (its slot, position and token count).
  KvPageRef page_view(int layer, int32_t page);
  void complete_page(int layer, int32_t page);
  // A new open page for `layer` when its token count is a page boundary.
  void open_page_if_needed(int layer);
  // Hands the pages completed since first_done to the listener.
  void announce_pages(int layer, int32_t first_done);
  // The views attention reads in decode mode (selected pages, then the open one), after the
  // before_attend hooks; into views_ / view_ids_.
  void decode_views(Backend& be, int layer, const AttentionParams& p, const float* q, const int32_t* pos,
                    int64_t m);
  void apply_selection(int layer, std::span<const int32_t> pages, std::vector<PageCopy>& copies);
  void attend_streaming(Backend& be, int layer, const AttentionParams& p, const float* q,
                        const int32_t* pos, int64_t m, float* out);
  void note_peak();

  KvCacheConfig cfg_;
  int64_t budget_;
  KvReserve& reserve_;
  RecallEngine& recall_;
  Backend& be_;
  AttentionParams layout_;  // the page layout, for write_kv
  int64_t client_ = -1;
  int64_t max_pages_;  // per layer
  // The host mirror, in segments of seg_pages_ pages of every layer (page p of layer l is in
  // segment p / seg_pages_), taken from the backend's alloc_host as pages complete: host memory
  // follows the tokens held, and copies to and from it run without staging (page-locked on
  // CUDA), so write-backs and recalls do not wait (mirror_pending_ says one may be in flight).
  std::vector<uint8_t*> mirror_;
  int64_t seg_pages_ = 1;
  mutable bool mirror_pending_ = false;
  // Completed pages' copies to the mirror not yet issued: a prefill chunk's pages go out as one
  // batch at the end of append() (one launch a layer, not one a page), and before anything that
  // could overwrite their slots (take_slot's eviction) or read the mirror (sync_mirror).
  mutable std::vector<PageCopy> pending_wb_;
  std::vector<Layer> layers_;
  std::set<LruKey> lru_;  // cached (resident, unpinned) pages, oldest first
  uint64_t clock_ = 0;
  int64_t open_slots_ = 0;
  int64_t mirror_pages_ = 0;
  bool decode_mode_ = false;
  std::vector<AttendHook*> hooks_;
  PromptObserver* observer_ = nullptr;
  std::function<void(int, int32_t, const uint8_t*)> listener_;
  uint64_t aux_index_ = 0, aux_scratch_ = 0;
  KvFootprint peak_;
  double sample_sum_ = 0.0;
  int64_t sample_count_ = 0;
  // Scratch for attention.
  std::vector<KvPageRef> views_;
  std::vector<int32_t> view_ids_;
  BackendBuffer out2_, lse_, lse2_;
  // Host copies for hooks on a device backend.
  std::vector<float> host_q_;
};

}  // namespace flashmem
