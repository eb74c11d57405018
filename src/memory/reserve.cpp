#include "memory/reserve.h"

#include <cstring>
#include <new>

#include "core/error.h"

namespace flashmem {

KvReserve::KvReserve(Backend& be, size_t page_bytes, int64_t n_slots)
    : be_(be), page_bytes_(page_bytes), capacity_(n_slots) {
  FM_CHECK(page_bytes > 0 && n_slots > 0, ErrorCode::kInvalidArgument,
           "the KV reserve needs a positive page size and slot count");
  const double bytes = static_cast<double>(page_bytes) * static_cast<double>(n_slots);
  FM_CHECK(bytes < 0.5 * static_cast<double>(SIZE_MAX), ErrorCode::kOutOfMemory, "KV reserve too large");
  try {
    arena_ = BackendBuffer(be, bytes_allocated());
  } catch (const Error& e) {
    FM_FAIL(ErrorCode::kOutOfMemory, "cannot allocate a KV reserve of ", bytes / (1 << 20),
            " MiB on the ", be.name(), " backend: ", e.what());
  }
  free_.reserve(n_slots);
  for (int64_t s = n_slots - 1; s >= 0; --s) free_.push_back(s);
  owner_.assign(n_slots, -1);
}

const KvReserve::Client& KvReserve::client(int64_t id) const {
  FM_ICHECK(id >= 0 && id < static_cast<int64_t>(clients_.size()) && clients_[id].live,
            "unknown reserve client ", id);
  return clients_[id];
}

int64_t KvReserve::held(int64_t c) const { return client(c).held; }
int64_t KvReserve::quota(int64_t c) const { return client(c).quota; }

int64_t KvReserve::admit(int64_t quota) {
  FM_CHECK(quota > 0, ErrorCode::kInvalidArgument, "a request needs at least one reserve slot");
  FM_CHECK(quota <= unreserved(), ErrorCode::kOutOfMemory, "the request needs ", quota,
           " KV page slots (", static_cast<double>(quota) * page_bytes_ / (1 << 20),
           " MiB) but the device reserve has only ", unreserved(), " of ", capacity_,
           " unreserved; lower the KV budget or wait for other requests to finish");
  clients_.push_back(Client{quota, 0, true});
  reserved_ += quota;
  return static_cast<int64_t>(clients_.size()) - 1;
}

void KvReserve::release(int64_t id) {
  Client& c = clients_.at(id);
  if (!c.live) return;
  for (int64_t s = 0; s < capacity_; ++s)
    if (owner_[s] == id) {
      be_.fill_zero(slot(s), page_bytes_);  // nothing of a finished request stays behind
      owner_[s] = -1;
      free_.push_back(s);
    }
  reserved_ -= c.quota;
  c = Client{};
}

int64_t KvReserve::acquire(int64_t id) {
  Client& c = clients_.at(id);
  FM_ICHECK(c.live && c.held < c.quota, "reserve client ", id, " is at its quota of ", c.quota);
  FM_ICHECK(!free_.empty(), "reserve exhausted below the admitted quotas");
  const int64_t s = free_.back();
  free_.pop_back();
  owner_[s] = id;
  ++c.held;
  return s;
}

void KvReserve::free(int64_t id, int64_t s) {
  FM_ICHECK(s >= 0 && s < capacity_ && owner_[s] == id, "slot ", s, " is not held by client ", id);
  owner_[s] = -1;
  free_.push_back(s);
  --clients_[id].held;
}

}  // namespace flashmem
