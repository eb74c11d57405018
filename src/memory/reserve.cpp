#include "memory/reserve.h"

#include <cstring>
#include <new>
#include <vector>

#include "core/error.h"

namespace flashmem {

KvReserve::KvReserve(Backend& be, size_t page_bytes) : be_(be), page_bytes_(page_bytes) {
  FM_CHECK(page_bytes > 0, ErrorCode::kInvalidArgument, "the KV reserve needs a positive page size");
}

KvReserve::KvReserve(Backend& be, size_t page_bytes, int64_t n_slots) : KvReserve(be, page_bytes) {
  FM_CHECK(n_slots > 0, ErrorCode::kInvalidArgument, "the KV reserve needs a positive slot count");
  max_slots_ = n_slots;
  add_region(n_slots, -1);
}

std::unique_ptr<KvReserve> KvReserve::growable(Backend& be, size_t page_bytes, int64_t max_slots) {
  FM_CHECK(max_slots >= 0, ErrorCode::kInvalidArgument, "the KV reserve's cap must be ≥ 0 slots");
  std::unique_ptr<KvReserve> r(new KvReserve(be, page_bytes));
  r->growable_ = true;
  r->max_slots_ = max_slots;
  return r;
}

void KvReserve::add_region(int64_t n, int64_t client) {
  const double bytes = static_cast<double>(page_bytes_) * static_cast<double>(n);
  FM_CHECK(bytes < 0.5 * static_cast<double>(SIZE_MAX), ErrorCode::kOutOfMemory, "KV reserve too large");
  Region r;
  r.n = n;
  r.client = client;
  try {
    r.buf = BackendBuffer(be_, static_cast<size_t>(n) * page_bytes_);
  } catch (const Error& e) {
    FM_FAIL(ErrorCode::kOutOfMemory, "cannot allocate a KV reserve of ", bytes / (1 << 20), " MiB on the ", be_.name(),
            " backend (", static_cast<double>(bytes_allocated()) / (1 << 20), " MiB held already): ", e.what());
  }
  be_.fill_zero(r.buf.get(), static_cast<size_t>(n) * page_bytes_);  // nothing of earlier memory shows
  // Slot ids: the first gap between regions that fits, else after the last, so ids stay
  // bounded by what is allocated (plus gaps) however many requests come and go.
  r.first = slot_ids();
  size_t pos = regions_.size();
  for (size_t i = 0, at = 0; i < regions_.size(); at = static_cast<size_t>(regions_[i].first + regions_[i].n), ++i)
    if (regions_[i].first - static_cast<int64_t>(at) >= n) {
      r.first = static_cast<int64_t>(at);
      pos = i;
      break;
    }
  if (r.first + n > slot_ids()) {
    owner_.resize(static_cast<size_t>(r.first + n), kNoSlot);
    slot_ptr_.resize(static_cast<size_t>(r.first + n), nullptr);
  }
  r.free.reserve(static_cast<size_t>(n));
  for (int64_t k = n - 1; k >= 0; --k) {
    owner_[r.first + k] = -1;
    slot_ptr_[r.first + k] = r.buf.as<uint8_t>() + static_cast<size_t>(k) * page_bytes_;
    r.free.push_back(r.first + k);
  }
  capacity_ += n;
  regions_.insert(regions_.begin() + static_cast<std::ptrdiff_t>(pos), std::move(r));
}

const KvReserve::Client& KvReserve::client(int64_t id) const {
  FM_ICHECK(id >= 0 && id < static_cast<int64_t>(clients_.size()) && clients_[id].live,
            "unknown reserve client ", id);
  return clients_[id];
}

KvReserve::Region& KvReserve::region_of(int64_t client) {
  if (!growable_) return regions_.front();
  for (Region& r : regions_)
    if (r.client == client) return r;
  FM_FAIL(ErrorCode::kInternal, "reserve client ", client, " has no region");
}

int64_t KvReserve::held(int64_t c) const { return client(c).held; }
int64_t KvReserve::quota(int64_t c) const { return client(c).quota; }

int64_t KvReserve::unreserved() const {
  if (growable_ && max_slots_ == 0) return INT64_MAX;
  return max_slots_ - reserved_;
}

int64_t KvReserve::admit(int64_t quota) {
  FM_CHECK(quota > 0, ErrorCode::kInvalidArgument, "a request needs at least one reserve slot");
  const auto mib = [&](int64_t slots) { return static_cast<double>(slots) * page_bytes_ / (1 << 20); };
  FM_CHECK(quota <= unreserved(), ErrorCode::kOutOfMemory, "the request needs ", quota, " KV page slots (",
           mib(quota), " MiB) but the device reserve", growable_ ? "'s cap" : "", " of ", max_slots_, " slots (",
           mib(max_slots_), " MiB) has only ", unreserved(),
           " unreserved; lower the KV budget or wait for other requests to finish");
  int64_t id = static_cast<int64_t>(clients_.size());
  for (size_t i = 0; i < clients_.size(); ++i)  // a finished client's id is reused
    if (!clients_[i].live) {
      id = static_cast<int64_t>(i);
      break;
    }
  if (growable_) add_region(quota, id);  // throws before anything changed
  if (id == static_cast<int64_t>(clients_.size())) clients_.emplace_back();
  clients_[id] = Client{quota, 0, true};
  reserved_ += quota;
  return id;
}

void KvReserve::release(int64_t id) {
  Client& c = clients_.at(id);
  if (!c.live) return;
  Region& r = region_of(id);
  for (int64_t s = r.first; s < r.first + r.n; ++s)
    if (owner_[s] == id) {
      be_.fill_zero(slot(s), page_bytes_);  // nothing of a finished request stays behind
      owner_[s] = -1;
      r.free.push_back(s);
    }
  reserved_ -= c.quota;
  c = Client{};
  if (!growable_) return;
  // The region goes back to the backend; its ids become a gap.
  for (int64_t s = r.first; s < r.first + r.n; ++s) {
    owner_[s] = kNoSlot;
    slot_ptr_[s] = nullptr;
  }
  capacity_ -= r.n;
  regions_.erase(regions_.begin() + (&r - regions_.data()));
  while (!owner_.empty() && owner_.back() == kNoSlot) {
    owner_.pop_back();
    slot_ptr_.pop_back();
  }
}

int64_t KvReserve::acquire(int64_t id) {
  Client& c = clients_.at(id);
  FM_ICHECK(c.live && c.held < c.quota, "reserve client ", id, " is at its quota of ", c.quota);
  Region& r = region_of(id);
  FM_ICHECK(!r.free.empty(), "reserve exhausted below the admitted quotas");
  const int64_t s = r.free.back();
  r.free.pop_back();
  owner_[s] = id;
  ++c.held;
  return s;
}

void KvReserve::free(int64_t id, int64_t s) {
  FM_ICHECK(s >= 0 && s < slot_ids() && owner_[s] == id, "slot ", s, " is not held by client ", id);
  owner_[s] = -1;
  region_of(id).free.push_back(s);
  --clients_[id].held;
}

}  // namespace flashmem
