#include "memory/tiered_kv.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "memory/observation.h"

namespace flashmem {

TieredKvStore::TieredKvStore(const KvCacheConfig& c, int64_t budget_pages, KvReserve& reserve,
                             RecallEngine& recall)
    : cfg_(c), budget_(budget_pages), reserve_(reserve), recall_(recall), be_(recall.backend()) {
  c.validate();
  FM_CHECK(&reserve.backend() == &recall.backend(), ErrorCode::kInvalidArgument,
           "the reserve and the recall engine must use the same backend");
  layout_ = attention_params(1, 1.0f);
  FM_CHECK(budget_pages >= 2, ErrorCode::kInvalidArgument,
           "a KV budget needs at least 2 pages per layer (the open page and one more), got ",
           budget_pages);
  FM_CHECK(reserve.page_bytes() == c.page_bytes(), ErrorCode::kInvalidArgument,
           "the reserve's slots (", reserve.page_bytes(), " B) do not match the page size (",
           c.page_bytes(), " B)");
  max_pages_ = (c.max_tokens + c.page_tokens - 1) / c.page_tokens;
  const double mirror_bytes =
      static_cast<double>(max_pages_) * c.n_layers * static_cast<double>(c.page_bytes());
  FM_CHECK(mirror_bytes < 0.5 * static_cast<double>(SIZE_MAX), ErrorCode::kOutOfMemory,
           "KV mirror too large");
  // Segments of about 8 MiB: few allocations, little memory ahead of the tokens.
  const int64_t row_bytes = int64_t{c.n_layers} * static_cast<int64_t>(c.page_bytes());
  seg_pages_ = std::clamp<int64_t>((int64_t{8} << 20) / row_bytes, 1, max_pages_);
  client_ = reserve.admit(budget_pages * c.n_layers);
  layers_.resize(c.n_layers);
}

TieredKvStore::TieredKvStore(const TieredKvStore& src, int64_t budget_pages, KvReserve& reserve,
                             RecallEngine& recall)
    : TieredKvStore(src.cfg_, budget_pages, reserve, recall) {
  const size_t pb = cfg_.page_bytes();
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const Layer& from = src.layers_[l];
    Layer& to = layers_[l];
    to.tokens = from.tokens;
    to.pages.assign(from.pages.size(), PageState{});
    const int32_t done = static_cast<int32_t>(completed_pages(l));
    if (done > 0) {
      src.sync_mirror();
      grow_mirror(done - 1);
      for (int32_t pg = 0; pg < done; pg += static_cast<int32_t>(seg_pages_)) {  // a segment's run
        const int64_t run = std::min<int64_t>(seg_pages_ - pg % seg_pages_, done - pg);
        std::memcpy(mirror_ptr(l, pg), src.mirror_ptr(l, pg), static_cast<size_t>(run) * pb);
      }
    }
    if (done < static_cast<int32_t>(to.pages.size())) {  // the open page moves with the request
      FM_CHECK(&src.be_ == &be_, ErrorCode::kInvalidArgument,
               "a fork must use the backend of the store it forks");
      const int64_t slot = take_slot();
      const PageCopy open_page{const_cast<TieredKvStore&>(src).reserve_.slot(from.pages[done].slot),
                               reserve_.slot(slot)};
      be_.copy_pages(CopyDir::kBackendToBackend, {&open_page, 1}, pb);
      to.pages[done] = PageState{slot, true, 0};
      ++open_slots_;
    }
  }
  mirror_pages_ = src.mirror_pages_;
  note_peak();
}

TieredKvStore::~TieredKvStore() {
  for (uint8_t* seg : mirror_) be_.free_host(seg);  // waits for copies in flight
  reserve_.release(client_);
}

uint8_t* TieredKvStore::mirror_ptr(int layer, int32_t page) const {
  const int64_t seg = page / seg_pages_;
  return mirror_[seg] + (static_cast<size_t>(layer) * seg_pages_ + page % seg_pages_) * cfg_.page_bytes();
}

void TieredKvStore::grow_mirror(int32_t page) {
  const size_t seg_bytes = static_cast<size_t>(seg_pages_) * cfg_.n_layers * cfg_.page_bytes();
  while (static_cast<int64_t>(mirror_.size()) <= page / seg_pages_) {
    mirror_.reserve(static_cast<size_t>((max_pages_ + seg_pages_ - 1) / seg_pages_));
    mirror_.push_back(static_cast<uint8_t*>(be_.alloc_host(seg_bytes)));
  }
}

void TieredKvStore::flush_write_backs() const {
  if (pending_wb_.empty()) return;
  // In flight until sync_mirror(); issued before anything can reuse the slots (stream order).
  recall_.write_back(pending_wb_, cfg_.page_bytes());
  pending_wb_.clear();
  mirror_pending_ = true;
}

void TieredKvStore::sync_mirror() const {
  flush_write_backs();
  if (!mirror_pending_) return;
  be_.synchronize();
  mirror_pending_ = false;
}

const uint8_t* TieredKvStore::mirror_page(int layer, int32_t page) const {
  FM_CHECK(layer >= 0 && layer < cfg_.n_layers && page >= 0 && page < completed_pages(layer),
           ErrorCode::kOutOfRange, "page ", page, " of layer ", layer, " is not in the mirror");
  sync_mirror();
  return mirror_ptr(layer, page);
}

bool TieredKvStore::resident(int layer, int32_t page) const {
  const auto& ps = layers_[layer].pages;
  return page >= 0 && page < static_cast<int32_t>(ps.size()) && ps[page].slot >= 0;
}

int64_t TieredKvStore::resident_pages() const { return reserve_.held(client_); }

// A slot for a new resident page: a free one while under quota, otherwise the least recently
// used cached page of this request gives up its slot.
int64_t TieredKvStore::take_slot() {
  int64_t slot;
  if (reserve_.held(client_) < reserve_.quota(client_)) {
    slot = reserve_.acquire(client_);
  } else {
    FM_ICHECK(!lru_.empty(), "every reserve slot of the request is pinned (budget ", budget_,
              " pages per layer)");
    flush_write_backs();  // the victim may be a page whose copy to the mirror is not issued yet
    const auto [tick, layer, page] = *lru_.begin();
    lru_.erase(lru_.begin());
    PageState& victim = layers_[layer].pages[page];
    slot = victim.slot;
    victim.slot = -1;
  }
  return slot;
}

void TieredKvStore::pin(int layer, int32_t page) {
  PageState& s = layers_[layer].pages[page];
  if (!s.pinned && s.slot >= 0) lru_.erase(LruKey{s.tick, layer, page});
  s.pinned = true;
}

void TieredKvStore::unpin(int layer, int32_t page) {
  PageState& s = layers_[layer].pages[page];
  if (!s.pinned) return;
  s.pinned = false;
  s.tick = ++clock_;
  if (s.slot >= 0) lru_.insert(LruKey{s.tick, layer, page});
}

void TieredKvStore::touch(int layer, int32_t page) {
  PageState& s = layers_[layer].pages[page];
  if (s.pinned || s.slot < 0) return;
  lru_.erase(LruKey{s.tick, layer, page});
  s.tick = ++clock_;
  lru_.insert(LruKey{s.tick, layer, page});
}

void TieredKvStore::note_peak() {
  const KvFootprint f = footprint();
  if (f.device() > peak_.device()) peak_ = f;
}

void TieredKvStore::set_aux_bytes(uint64_t index_keys, uint64_t scratch) {
  aux_index_ = index_keys;
  aux_scratch_ = scratch;
  note_peak();
}

KvFootprint TieredKvStore::footprint() const {
  KvFootprint f;
  const uint64_t pb = cfg_.page_bytes();
  f.open = static_cast<uint64_t>(open_slots_) * pb;
  f.reserve = static_cast<uint64_t>(reserve_.held(client_) - open_slots_) * pb;
  f.index_keys = aux_index_;
  f.scratch = aux_scratch_;
  f.mirror = static_cast<uint64_t>(mirror_pages_) * pb;
  uint64_t full_pages = 0;
  for (const Layer& l : layers_) full_pages += l.pages.size();
  f.full_kv = full_pages * pb;
  return f;
}

void TieredKvStore::sample() {
  sample_sum_ += static_cast<double>(footprint().device());
  ++sample_count_;
}

double TieredKvStore::mean_device_bytes() const {
  return sample_count_ > 0 ? sample_sum_ / static_cast<double>(sample_count_)
                           : static_cast<double>(footprint().device());
}

// ---- writing ------------------------------------------------------------------------------

void TieredKvStore::complete_page(int layer, int32_t page) {
  grow_mirror(page);
  PageState& s = layers_[layer].pages[page];
  pending_wb_.push_back(PageCopy{reserve_.slot(s.slot), mirror_ptr(layer, page)});
  --open_slots_;
  ++mirror_pages_;
  if (decode_mode_) {
    // Filled during the cycle: stays selected (the selection left room for it).
    layers_[layer].selected.push_back(page);
  } else {
    unpin(layer, page);
  }
}

void TieredKvStore::open_page_if_needed(int layer) {
  Layer& L = layers_[layer];
  if (L.tokens % cfg_.page_tokens != 0) return;
  const int64_t slot = take_slot();
  L.pages.push_back(PageState{slot, true, 0});
  ++open_slots_;
  note_peak();
}

void TieredKvStore::announce_pages(int layer, int32_t first_done) {
  // The listener reads the pages' bytes on the host: one wait for all of them.
  const int32_t done = static_cast<int32_t>(completed_pages(layer));
  if (!listener_ || done <= first_done) return;
  sync_mirror();
  for (int32_t pg = first_done; pg < done; ++pg) listener_(layer, pg, mirror_ptr(layer, pg));
}

void TieredKvStore::append(int layer, int64_t n, const float* k, const float* v) {
  FM_ICHECK(layer >= 0 && layer < cfg_.n_layers, "layer ", layer, " out of range");
  Layer& L = layers_[layer];
  FM_CHECK(L.tokens + n <= cfg_.max_tokens, ErrorCode::kOutOfRange, "context full: ", L.tokens,
           " + ", n, " tokens exceed the KV capacity of ", cfg_.max_tokens);
  const int pt = cfg_.page_tokens;
  const int64_t row = int64_t{cfg_.n_kv_heads} * cfg_.head_dim;
  const int32_t first_done = static_cast<int32_t>(completed_pages(layer));
  for (int64_t t = 0; t < n;) {
    open_page_if_needed(layer);
    const int slot_in_page = static_cast<int>(L.tokens % pt);
    const int32_t page = static_cast<int32_t>(L.pages.size()) - 1;
    const int64_t take = std::min<int64_t>(n - t, pt - slot_in_page);
    uint8_t* base = reserve_.slot(L.pages[page].slot);
    be_.write_kv(layout_, base, base + cfg_.page_bytes() / 2, slot_in_page, take, k + t * row,
                 v + t * row);
    t += take;
    L.tokens += take;
    if (slot_in_page + take == pt) complete_page(layer, page);
  }
  flush_write_backs();
  announce_pages(layer, first_done);
}

bool TieredKvStore::begin_token(int layer, KvSlotRef& slot) {
  FM_ICHECK(layer >= 0 && layer < cfg_.n_layers, "layer ", layer, " out of range");
  Layer& L = layers_[layer];
  FM_CHECK(L.tokens + 1 <= cfg_.max_tokens, ErrorCode::kOutOfRange, "context full: ", L.tokens,
           " + 1 tokens exceed the KV capacity of ", cfg_.max_tokens);
  open_page_if_needed(layer);
  uint8_t* base = reserve_.slot(L.pages.back().slot);
  slot = KvSlotRef{base, base + cfg_.page_bytes() / 2, static_cast<int32_t>(L.tokens % cfg_.page_tokens)};
  return true;
}

void TieredKvStore::commit_token(int layer) {
  Layer& L = layers_[layer];
  const int32_t first_done = static_cast<int32_t>(completed_pages(layer));
  ++L.tokens;
  if (L.tokens % cfg_.page_tokens == 0) complete_page(layer, static_cast<int32_t>(L.pages.size()) - 1);
  flush_write_backs();
  announce_pages(layer, first_done);
}

// ---- selection ----------------------------------------------------------------------------

void TieredKvStore::begin_prefill() {
  for (int l = 0; l < cfg_.n_layers; ++l) {
    for (int32_t pg : layers_[l].selected) unpin(l, pg);
    layers_[l].selected.clear();
  }
  decode_mode_ = false;
}

int64_t TieredKvStore::selection_capacity(int layer, int64_t steps) const {
  const int64_t open = layers_[layer].tokens % cfg_.page_tokens;
  const int64_t growth = (open + std::max<int64_t>(steps, 0) + cfg_.page_tokens - 1) / cfg_.page_tokens;
  return std::max<int64_t>(0, budget_ - growth);
}

void TieredKvStore::apply_selection(int layer, std::span<const int32_t> pages,
                                    std::vector<PageCopy>& copies) {
  Layer& L = layers_[layer];
  const int64_t done = completed_pages(layer);
  std::vector<int32_t> want(pages.begin(), pages.end());
  std::sort(want.begin(), want.end());
  for (size_t i = 0; i < want.size(); ++i) {
    FM_CHECK(want[i] >= 0 && want[i] < done, ErrorCode::kInvalidArgument, "layer ", layer,
             ": page ", want[i], " is not a completed page (", done, " so far)");
    FM_CHECK(i == 0 || want[i] != want[i - 1], ErrorCode::kInvalidArgument, "layer ", layer,
             ": page ", want[i], " selected twice");
  }
  const int64_t open = L.tokens % cfg_.page_tokens ? 1 : 0;
  FM_CHECK(static_cast<int64_t>(want.size()) + open <= budget_, ErrorCode::kInvalidArgument,
           "layer ", layer, ": ", want.size(), " pages selected, the budget holds ", budget_ - open);
  // Unpin what leaves the selection first (it stays cached), then pin what stays, and only
  // then take slots for the missing pages, so a kept page is never the one evicted.
  for (int32_t pg : L.selected)
    if (!std::binary_search(want.begin(), want.end(), pg)) unpin(layer, pg);
  std::vector<int32_t> missing;
  for (int32_t pg : want) {
    if (L.pages[pg].slot >= 0) pin(layer, pg);
    else missing.push_back(pg);
  }
  for (int32_t pg : missing) {
    const int64_t slot = take_slot();
    L.pages[pg].slot = slot;
    L.pages[pg].pinned = true;
    copies.push_back(PageCopy{mirror_ptr(layer, pg), reserve_.slot(slot)});
  }
  L.selected = std::move(want);
}

void TieredKvStore::select(std::span<const std::vector<int32_t>> per_layer) {
  FM_CHECK(static_cast<int>(per_layer.size()) == cfg_.n_layers, ErrorCode::kInvalidArgument,
           "a selection needs one page list per layer");
  if (!decode_mode_) {
    begin_prefill();  // clears leftovers
    decode_mode_ = true;
  }
  std::vector<PageCopy> copies;
  for (int l = 0; l < cfg_.n_layers; ++l) apply_selection(l, per_layer[l], copies);
  recall_.gather(copies, cfg_.page_bytes());
  note_peak();
}

void TieredKvStore::select_layer(int layer, std::span<const int32_t> pages) {
  FM_CHECK(decode_mode_, ErrorCode::kInvalidArgument, "select_layer needs decode mode (select first)");
  std::vector<PageCopy> copies;
  apply_selection(layer, pages, copies);
  recall_.gather(copies, cfg_.page_bytes());
  note_peak();
}

// ---- attention ----------------------------------------------------------------------------

KvPageRef TieredKvStore::page_view(int layer, int32_t pg) {
  const Layer& L = layers_[layer];
  FM_ICHECK(L.pages[pg].slot >= 0, "page ", pg, " of layer ", layer, " is not resident");
  uint8_t* base = reserve_.slot(L.pages[pg].slot);
  const int32_t pos0 = pg * cfg_.page_tokens;
  const int32_t n = static_cast<int32_t>(std::min<int64_t>(cfg_.page_tokens, L.tokens - pos0));
  return KvPageRef{base, base + cfg_.page_bytes() / 2, pos0, n};
}

void TieredKvStore::add_hook(AttendHook* h) {
  if (h && std::find(hooks_.begin(), hooks_.end(), h) == hooks_.end()) hooks_.push_back(h);
}

void TieredKvStore::remove_hook(AttendHook* h) { std::erase(hooks_, h); }

void TieredKvStore::attend(Backend& be, int layer, const AttentionParams& p, const float* q,
                           const int32_t* pos, int64_t m, float* out) {
  FM_ICHECK(layer >= 0 && layer < cfg_.n_layers, "layer ", layer, " out of range");
  if (!decode_mode_) return attend_streaming(be, layer, p, q, pos, m, out);
  decode_views(be, layer, p, q, pos, m);
  be.attention(p, q, pos, m, views_, out);
  for (AttendHook* h : hooks_) h->after_attend(be, layer, p, q, pos, m, views_, view_ids_);
}

void TieredKvStore::decode_views(Backend& be, int layer, const AttentionParams& p, const float* q,
                                 const int32_t* pos, int64_t m) {
  // before_attend runs on the host: on a device backend it gets a host copy of the queries.
  const float* hq = q;
  if (!hooks_.empty() && !be.host_memory()) {
    host_q_.resize(static_cast<size_t>(m) * p.n_heads * p.head_dim);
    be.download(host_q_.data(), q, host_q_.size() * sizeof(float));
    hq = host_q_.data();
  }
  for (AttendHook* h : hooks_) h->before_attend(*this, layer, p, hq, pos, m);
  Layer& L = layers_[layer];
  views_.clear();
  view_ids_.clear();
  const int32_t done = static_cast<int32_t>(completed_pages(layer));
  auto add = [&](int32_t pg) {
    FM_ICHECK(L.pages[pg].pinned, "selected page ", pg, " of layer ", layer, " is not resident");
    views_.push_back(page_view(layer, pg));
    view_ids_.push_back(pg);
  };
  // Ascending: apply_selection sorts, and a page filled since is newer than every selected one.
  for (int32_t pg : L.selected) add(pg);
  if (done < static_cast<int32_t>(L.pages.size())) add(done);  // the open page
}

bool TieredKvStore::decode_pages(Backend& be, int layer, const AttentionParams& p, const float* q, int32_t pos,
                                 std::vector<KvPageRef>& pages) {
  FM_ICHECK(layer >= 0 && layer < cfg_.n_layers, "layer ", layer, " out of range");
  if (decode_mode_) {
    decode_views(be, layer, p, q, &pos, 1);
  } else {
    // Streaming: one list only when every page is resident (the one call attend makes then).
    const Layer& L = layers_[layer];
    for (const PageState& ps : L.pages)
      if (ps.slot < 0) return false;
    views_.clear();
    for (int32_t pg = 0; pg < static_cast<int32_t>(L.pages.size()); ++pg) views_.push_back(page_view(layer, pg));
  }
  pages.insert(pages.end(), views_.begin(), views_.end());
  return true;
}

void TieredKvStore::after_decode_attend(Backend& be, int layer, const AttentionParams& p, const float* q,
                                        int32_t pos) {
  if (decode_mode_) {
    for (AttendHook* h : hooks_) h->after_attend(be, layer, p, q, &pos, 1, views_, view_ids_);
    return;
  }
  if (observer_) {
    observer_->on_part(be, layer, p, q, &pos, 1, views_, nullptr);
    observer_->end_layer(layer);
  }
  for (int32_t pg = 0; pg < static_cast<int32_t>(layers_[layer].pages.size()); ++pg) touch(layer, pg);
}

void TieredKvStore::attend_streaming(Backend& be, int layer, const AttentionParams& p,
                                     const float* q, const int32_t* pos, int64_t m, float* out) {
  Layer& L = layers_[layer];
  const int32_t n_pages = static_cast<int32_t>(L.pages.size());
  auto view_of = [&](int32_t pg) { return page_view(layer, pg); };
  // Pass 1: every page already resident, in place, in position order. When all are, this is
  // the one call the full-KV path makes (bit-identical at a 100% budget).
  views_.clear();
  std::vector<int32_t> missing;
  for (int32_t pg = 0; pg < n_pages; ++pg) {
    if (L.pages[pg].slot >= 0) views_.push_back(view_of(pg));
    else missing.push_back(pg);
  }
  if (missing.empty()) {
    be.attention(p, q, pos, m, views_, out);
    if (observer_) {
      observer_->on_part(be, layer, p, q, pos, m, views_, nullptr);
      observer_->end_layer(layer);
    }
    for (int32_t pg = 0; pg < n_pages; ++pg) touch(layer, pg);  // just used: refresh LRU
    return;
  }
  const int64_t rows = m * p.n_heads;
  // Scratch on the store's own backend (`be` must be the same one; it may not outlive us).
  if (lse_.bytes() < rows * sizeof(float)) {
    lse_ = BackendBuffer(be_, rows * sizeof(float));
    lse2_ = BackendBuffer(be_, rows * sizeof(float));
    out2_ = BackendBuffer(be_, rows * p.head_dim * sizeof(float));
  }
  // (out, lse) hold the partial result once `have` is set; each later part is merged into it.
  bool have = false;
  if (!views_.empty()) {
    be.attention(p, q, pos, m, views_, out, lse_.as<float>());
    if (observer_) observer_->on_part(be, layer, p, q, pos, m, views_, lse_.as<float>());
    have = true;
  }
  // Pass 2: the rest through the reserve, a window at a time. The window is bounded by the
  // budget (the open page stays pinned), so the device never holds more than the budget.
  const int64_t window = std::max<int64_t>(1, budget_ - 1);
  for (size_t w0 = 0; w0 < missing.size(); w0 += static_cast<size_t>(window)) {
    const size_t w1 = std::min(missing.size(), w0 + static_cast<size_t>(window));
    std::vector<PageCopy> copies;
    for (size_t i = w0; i < w1; ++i) {
      const int32_t pg = missing[i];
      const int64_t slot = take_slot();
      L.pages[pg].slot = slot;
      L.pages[pg].pinned = true;
      copies.push_back(PageCopy{mirror_ptr(layer, pg), reserve_.slot(slot)});
    }
    recall_.gather(copies, cfg_.page_bytes());
    note_peak();
    views_.clear();
    for (size_t i = w0; i < w1; ++i) views_.push_back(view_of(missing[i]));
    if (!have) {
      be.attention(p, q, pos, m, views_, out, lse_.as<float>());
      if (observer_) observer_->on_part(be, layer, p, q, pos, m, views_, lse_.as<float>());
      have = true;
    } else {
      be.attention(p, q, pos, m, views_, out2_.as<float>(), lse2_.as<float>());
      if (observer_) observer_->on_part(be, layer, p, q, pos, m, views_, lse2_.as<float>());
      be.merge_attention(rows, p.head_dim, out, lse_.as<float>(), out2_.as<float>(),
                         lse2_.as<float>());
    }
    for (size_t i = w0; i < w1; ++i) unpin(layer, missing[i]);
  }
  if (observer_) observer_->end_layer(layer);
}

}  // namespace flashmem
