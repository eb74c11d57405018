// flashmem/train/dump.h — `flashmem dump` files: what the Memory Indexer is trained from
// (DESIGN.md §4; the format is documented in docs/indexer.md).
//
// One file per document. It holds, for a run of the model with full attention:
//  * decision points: decode steps s (every `point_stride` steps, s = 0 right after prefill)
//    with the target layers' input hidden states (f16) of the token processed just before
//    step s and its position — what Level 1 scores from at step s;
//  * per decode step, the chunks the model's attention hit and how many (layer, head) pairs
//    hit them (CSR: step t owns [hit_ptr[t], hit_ptr[t+1]));
//  * (version 2) per decode step, every chunk's attention mass averaged over all (layer, head)
//    pairs (CSR like the hits; a step's masses sum to 1);
//  * the index keys of every chunk of every completed page, per pooling and target layer.
// File layout: 8-byte magic "FMDUMP\r\n", u32 version, u32 0, u64 header length, the header
// (JSON: scalars and the list of arrays with dtype and element count), the arrays in that
// order, and the FNV-1a 64 of every byte before it. Little-endian.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/backend.h"
#include "train/dataset.h"

namespace flashmem::train {

inline constexpr uint32_t kDumpVersion = 2;  // read_dump also reads version 1 (no mass arrays)

struct DumpDoc {
  // What and where from.
  std::string name;    // unique per corpus, e.g. "ruler/vt/4096/s3"
  std::string source;  // "ruler" or "prose"
  std::string split;   // "train", "val" or "test" (split_of(name))
  std::string model;   // model name
  // Shapes and settings.
  int d_model = 0, n_kv_heads = 0, head_dim = 0, page_tokens = 0, chunk_tokens = 0;
  int n_layers = 0, n_heads = 0, tau = 64;
  float top_p = 0.0f;
  RopeParams rope;
  std::vector<int> target_layers;
  std::vector<std::string> poolings;
  int64_t n_prompt = 0;
  int64_t n_steps = 0;  // decode steps with recorded attention
  // Decision points.
  std::vector<int32_t> point_step, point_pos;  // [S]
  std::vector<uint16_t> hidden;                // [S × n_targets × d_model] f16
  // Attention hits per decode step.
  std::vector<int32_t> hit_ptr;                // [n_steps + 1]
  std::vector<int32_t> hit_chunk, hit_count;   // [nnz]
  // Attention mass per decode step (version 2; empty in version-1 files).
  std::vector<int32_t> mass_ptr;               // [n_steps + 1]
  std::vector<int32_t> mass_chunk;             // [nnz]
  std::vector<float> mass_value;               // [nnz]
  // Index keys.
  int64_t n_chunks = 0;
  std::vector<std::vector<std::vector<uint8_t>>> keys;  // [pooling][target][n_chunks × key_dim]
  std::vector<std::vector<std::vector<float>>> scales;  // [pooling][target][n_chunks]

  int key_dim() const { return n_kv_heads * head_dim; }
  // Throws Error(kFormat) when shapes disagree or an index (chunk id, step, position) is out
  // of range; messages start with `where` (e.g. the file), or "dump <name>" when empty.
  void check(const std::string& where = {}) const;
};

// "train" for 80% of names, "val" and "test" for 10% each, by a hash of the name (so a
// document always lands in the same split, whatever else is dumped).
std::string split_of(const std::string& name);

// Throws Error(kIo) when the file cannot be written.
void write_dump(const std::string& path, const DumpDoc& d);
// Throws Error(kIo) when unreadable, Error(kFormat) for a bad magic, version, header, size or
// checksum.
DumpDoc read_dump(const std::string& path);
// The same from a file's bytes in memory; errors name it `path`.
DumpDoc parse_dump(const std::vector<uint8_t>& bytes, const std::string& path);

// What makes a chunk golden for a decision point at step s (candidates: chunks of the middle
// pages, the ones that exist at s).
//   hits: hit by ≥ min_hits (layer, head) pairs at some step of [s, s + τ); positives are
//         weighted by their largest hit count.
//   mass: the smallest set of candidates that, taken by decreasing attention mass summed over
//         [s, s + τ), holds mass_top_p of the candidates' mass (at least one chunk when any
//         has mass); positives weigh the same. Needs version-2 files.
enum class LabelKind { kHits, kMass };
// "hits" or "mass"; Error(kInvalidArgument) otherwise.
LabelKind parse_labels(const std::string& s);
const char* labels_name(LabelKind k);

struct LoadOptions {
  std::string pooling = "post_rope_mean";
  LabelKind labels = LabelKind::kHits;
  int min_hits = 1;             // a chunk is golden at a step when hit by ≥ min_hits heads
  float mass_top_p = 0.5f;      // labels by mass: the share of the candidates' mass
  int64_t sink_tokens = 64;     // the residency's sink and tail: their chunks are never scored
  int64_t tail_tokens = 64;
  std::vector<int> layers;      // target layers to keep (empty: all in the files)
  // Leave-one-family-out: documents of these families are skipped (families_out), or only
  // these are kept (families_only, when not empty). See doc_family.
  std::vector<std::string> families_out, families_only;
};

// The text family of a document: what follows "kind:" in its source ("needle:man" → "man",
// "text:csv" → "csv"), or the source itself ("ruler", "prose").
std::string doc_family(const DumpDoc& d);

// The dump files of one split as a training set (less the families o leaves out). Error(kFormat)
// when files disagree on shapes or lack the pooling/layers asked for.
IndexerDataset load_dataset(const std::vector<std::string>& paths, const LoadOptions& o);
// Adds one document (read from `path`) to `ds`, as load_dataset does for each file.
void add_to_dataset(IndexerDataset& ds, const DumpDoc& d, const LoadOptions& o, const std::string& path);

}  // namespace flashmem::train
