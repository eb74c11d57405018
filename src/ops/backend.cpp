#include "ops/backend.h"

namespace flashmem {

const char* kv_type_name(KvType t) { return t == KvType::kF16 ? "f16" : "f32"; }
size_t kv_type_bytes(KvType t) { return t == KvType::kF16 ? 2 : 4; }

}  // namespace flashmem
