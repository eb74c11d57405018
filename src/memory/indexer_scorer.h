// flashmem/memory/indexer_scorer.h — lsa's scorer over a trained Memory Indexer
// (indexer/indexer_model.h): the query is encoded on the host (two small matrix-vector products
// per target layer), the chunk logits come from the backend's index_scores op, on the device
// where the index keys live.
#pragma once

#include <memory>

#include "memory/lsa.h"
#include "indexer/indexer_model.h"

namespace flashmem {

IndexKeyConfig keys_config_of(const IndexerModel& m);
std::shared_ptr<LsaScorer> make_indexer_scorer(std::shared_ptr<const IndexerModel> m, Backend& be);

}  // namespace flashmem
