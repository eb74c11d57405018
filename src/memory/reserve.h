// flashmem/memory/reserve.h — the device reserve: a fixed arena of KV page slots shared by
// the requests of one engine.
//
// Admission gives each request a quota of slots; quotas never add up to more than the arena,
// and a request never holds more slots than its quota. So a request below its quota always
// finds a free slot, and no request ever has to evict a page another request holds: pages a
// live request uses are safe by construction, and eviction (LRU) happens only among a
// request's own cached pages (see TieredKvStore).
//
// The arena is one backend allocation of exactly capacity × page_bytes (device memory on CUDA,
// a separate host allocation on the CPU backend), so every byte the reserve saves is real.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ops/backend.h"

namespace flashmem {

class KvReserve {
 public:
  // Throws Error(kInvalidArgument) for zero sizes and Error(kOutOfMemory) when the arena
  // cannot be allocated.
  KvReserve(Backend& be, size_t page_bytes, int64_t n_slots);
  KvReserve(const KvReserve&) = delete;
  KvReserve& operator=(const KvReserve&) = delete;

  int64_t capacity() const { return capacity_; }
  size_t page_bytes() const { return page_bytes_; }
  size_t bytes_allocated() const { return static_cast<size_t>(capacity_) * page_bytes_; }
  // Backend memory: readable by the caller only when backend().host_memory().
  const uint8_t* arena() const { return arena_.as<uint8_t>(); }
  Backend& backend() const { return be_; }

  // Admits a client that may hold up to `quota` slots. Throws Error(kOutOfMemory) naming the
  // shortfall when the unreserved capacity is smaller; nothing changes then.
  int64_t admit(int64_t quota);
  // Returns every slot of the client (scrubbed) and its quota.
  void release(int64_t client);

  // A free slot for the client; Error(kInternal) if it already holds its quota.
  int64_t acquire(int64_t client);
  // Gives a slot back (it must belong to the client).
  void free(int64_t client, int64_t slot);

  uint8_t* slot(int64_t s) { return arena_.as<uint8_t>() + static_cast<size_t>(s) * page_bytes_; }
  int64_t owner(int64_t s) const { return owner_[s]; }  // −1 when free
  int64_t held(int64_t client) const;
  int64_t quota(int64_t client) const;
  int64_t unreserved() const { return capacity_ - reserved_; }
  int64_t slots_free() const { return static_cast<int64_t>(free_.size()); }

 private:
  struct Client {
    int64_t quota = 0;
    int64_t held = 0;
    bool live = false;
  };
  const Client& client(int64_t id) const;

  Backend& be_;
  size_t page_bytes_;
  int64_t capacity_;
  BackendBuffer arena_;
  std::vector<int64_t> free_;
  std::vector<int64_t> owner_;
  std::vector<Client> clients_;
  int64_t reserved_ = 0;
};

}  // namespace flashmem
