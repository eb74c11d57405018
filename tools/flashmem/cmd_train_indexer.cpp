// flashmem train-indexer — trains the Memory Indexer from `flashmem dump` files alone (no model
// weights), keeps the epoch with the best validation AUC, and reports held-out metrics.
//
//   flashmem train-indexer --data DUMPDIR --out indexer.safetensors [--layers 8,14,20]
//   flashmem train-indexer --data DUMPDIR --evaluate indexer.safetensors
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "eval/progress.h"
#include "train/dump.h"
#include "train/metrics.h"
#include "train/trainer.h"

namespace flashmem::cli {

CLI::App* add_train_indexer_command(CLI::App& app, TrainIndexerArgs& a) {
  CLI::App* c = app.add_subcommand("train-indexer", "Train the Memory Indexer from dump files (backbone-free)");
  c->add_option("--data", a.data, "Dump directory (train/ val/ test/ of .fmd files)")->check(CLI::ExistingDirectory);
  c->add_option("--select", a.select,
                "Write this checkpoint to --out, restricted to --layers if given, its metadata kept (no data needed)")
      ->check(CLI::ExistingFile);
  c->add_option("--set", a.set,
                "With --select: settle an lsa knob in the checkpoint, e.g. lsa.spread=1 (keys: lsa.threshold, "
                "lsa.spread, lsa.contrast, lsa.observe, lsa.observe_top_p, lsa.observe_spread); --policy lsa then "
                "uses it unless its flag is given");
  c->add_option("--out", a.out, "Checkpoint to write (.safetensors)");
  c->add_option("--evaluate", a.evaluate, "Score this checkpoint on the test split (no training)")->check(CLI::ExistingFile);
  c->add_option("--pooling", a.pooling, "Index-key pooling")->check(CLI::IsMember({"post_rope_mean", "pre_rope_mean"}));
  c->add_option("--layers", a.layers, "Target layers (default: all in the dump; with --evaluate: which of the checkpoint's)")->delimiter(',');
  c->add_option("--min-hits", a.min_hits, "Heads that must hit a chunk for it to be golden (default 30; with --evaluate the checkpoint's)")
      ->check(CLI::Range(1, 1 << 20));
  c->add_option("--labels", a.labels,
                "Golden chunks: hits (≥ --min-hits heads) or mass (top --mass-top-p of the attention mass; "
                "dump version 2); default hits, with --evaluate the checkpoint's")
      ->check(CLI::IsMember({"hits", "mass"}));
  c->add_option("--mass-top-p", a.mass_top_p, "Labels by mass: share of the window's candidate mass (default 0.5)")
      ->check(CLI::Range(0.001, 1.0));
  c->add_option("--heads", a.heads, "Indexer query heads")->check(CLI::Range(1, 1024));
  c->add_option("--rank", a.rank, "Query low-rank width (wq_a)")->check(CLI::Range(1, 1 << 16));
  c->add_option("--epochs", a.epochs, "Epochs")->check(CLI::Range(1, 100000));
  c->add_option("--batch", a.batch, "Decision points per step")->check(CLI::Range(1, 1 << 20));
  c->add_option("--lr", a.lr, "Peak learning rate (cosine to 0)")->check(CLI::Range(1e-7, 1.0));
  c->add_option("--weight-decay", a.weight_decay, "AdamW weight decay")->check(CLI::Range(0.0, 1.0));
  c->add_option("--neg-ratio", a.neg_ratio, "Negatives per positive")->check(CLI::Range(0, 1000));
  c->add_option("--gamma", a.gamma, "Focal loss gamma")->check(CLI::Range(0.0, 10.0));
  c->add_option("--seed", a.seed, "Seed (initialisation, shuffling, negatives)");
  c->add_option("-t,--threads", a.threads, "CPU threads (0: all cores)")->check(CLI::Range(0, 1024));
  c->add_option("--metrics-json", a.metrics_json, "Write the held-out metrics here as JSON");
  c->add_option("--hold-out", a.hold_out,
                "Leave one family out: train and validate without this text family's documents "
                "(dump --haystack), then score on all of them, every split");
  return c;
}

namespace {

std::vector<std::string> files_of(const std::string& dir) {
  std::vector<std::string> v;
  if (!std::filesystem::is_directory(dir)) return v;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().extension() == ".fmd") v.push_back(e.path().string());
  std::sort(v.begin(), v.end());
  return v;
}

nlohmann::json metrics_json(const train::IndexerMetrics& m) {
  nlohmann::json j;
  j["points"] = m.points;
  j["mean_candidates"] = m.candidates;
  j["positive_rate"] = m.positive_rate;
  for (const auto& r : m.rows)
    j["scorers"].push_back({{"name", r.name}, {"auc", r.auc}, {"recall_at_5pct", r.recall5},
                            {"recall_at_10pct", r.recall10}, {"recall_at_15pct", r.recall15},
                            {"precision_at_0.5", r.precision}, {"recall_at_0.5", r.recall}});
  return j;
}

}  // namespace

int train_indexer_command(const TrainIndexerArgs& a) {
  namespace fs = std::filesystem;
  FM_CHECK(a.set.empty() || !a.select.empty(), ErrorCode::kInvalidArgument,
           "--set settles a knob of an existing checkpoint: give it with --select FILE --out FILE");
  if (!a.select.empty()) {
    FM_CHECK(!a.out.empty(), ErrorCode::kInvalidArgument, "--select needs --out FILE");
    auto md = indexer_metadata(a.select);
    const IndexerModel m = select_targets(*load_indexer(a.select), a.layers);
    std::string ls;
    for (int l : m.keys.layers) ls += (ls.empty() ? "" : ",") + std::to_string(l);
    if (!a.layers.empty()) md["train.selected_from"] = md.count("target_layers") ? md.at("target_layers") : "";
    const auto& keys = lsa_metadata_keys();
    for (const std::string& kv : a.set) {
      const size_t eq = kv.find('=');
      const std::string key = kv.substr(0, eq);
      FM_CHECK(eq != std::string::npos && std::find(keys.begin(), keys.end(), key) != keys.end(),
               ErrorCode::kInvalidArgument, "--set ", kv, ": expected lsa.KEY=VALUE with KEY one of threshold, "
               "spread, contrast, observe, observe_top_p, observe_spread");
      md[key] = kv.substr(eq + 1);
    }
    LsaOptions check;
    apply_lsa_metadata(md, {}, "--set", check);  // every settled value parses and is in range
    save_indexer(a.out, m, md);
    std::fprintf(stderr, "[flashmem] %s: target layers %s (%.2f MiB)\n", a.out.c_str(), ls.c_str(),
                 static_cast<double>(fs::file_size(a.out)) / (1 << 20));
    return 0;
  }
  FM_CHECK(!a.data.empty(), ErrorCode::kInvalidArgument, "train-indexer needs --data DIR (or --select FILE)");
  train::LoadOptions lo;
  lo.pooling = a.pooling;
  lo.min_hits = a.min_hits > 0 ? a.min_hits : 30;
  lo.labels = train::parse_labels(a.labels.empty() ? "hits" : a.labels);
  lo.mass_top_p = a.mass_top_p > 0.0f ? a.mass_top_p : 0.5f;
  lo.layers = a.layers;
  if (!a.hold_out.empty()) lo.families_out = {a.hold_out};
  const auto test_files = files_of((fs::path(a.data) / "test").string());
  FM_CHECK(!test_files.empty(), ErrorCode::kInvalidArgument, a.data, "/test holds no .fmd files");
  IndexerModel model;
  nlohmann::json report;
  if (!a.evaluate.empty()) {
    model = select_targets(*load_indexer(a.evaluate), a.layers);  // --layers: a subset of its scorers
    lo.pooling = model.keys.pooling;
    lo.layers = model.keys.layers;
    const auto md = indexer_metadata(a.evaluate);
    if (a.labels.empty() && md.count("train.labels")) lo.labels = train::parse_labels(md.at("train.labels"));
    if (a.mass_top_p == 0.0f && md.count("train.mass_top_p")) {
      try {
        lo.mass_top_p = std::stof(md.at("train.mass_top_p"));
      } catch (const std::logic_error&) {
        FM_FAIL(ErrorCode::kFormat, a.evaluate, ": bad train.mass_top_p '", md.at("train.mass_top_p"), "'");
      }
    }
    if (a.min_hits == 0 && md.count("train.min_hits")) {
      try {
        lo.min_hits = std::max(1, std::stoi(md.at("train.min_hits")));
      } catch (const std::logic_error&) {
        FM_FAIL(ErrorCode::kFormat, a.evaluate, ": bad train.min_hits '", md.at("train.min_hits"), "'");
      }
    }
  } else {
    FM_CHECK(!a.out.empty(), ErrorCode::kInvalidArgument, "train-indexer needs --out FILE (or --evaluate FILE)");
    const auto train_files = files_of((fs::path(a.data) / "train").string());
    FM_CHECK(!train_files.empty(), ErrorCode::kInvalidArgument, a.data, "/train holds no .fmd files");
    const train::IndexerDataset tr = train::load_dataset(train_files, lo);
    FM_CHECK(!tr.docs.empty(), ErrorCode::kInvalidArgument, a.data, "/train holds no documents outside the family '",
             a.hold_out, "'");
    const auto val_files = files_of((fs::path(a.data) / "val").string());
    train::IndexerDataset va;
    if (!val_files.empty()) va = train::load_dataset(val_files, lo);
    train::TrainOptions o;
    o.n_heads = a.heads;
    o.rank = a.rank;
    o.epochs = a.epochs;
    o.batch = a.batch;
    o.lr = a.lr;
    o.weight_decay = a.weight_decay;
    o.neg_ratio = a.neg_ratio;
    o.gamma = a.gamma;
    o.seed = a.seed;
    o.threads = a.threads;
    o.pooling = a.pooling;
    std::fprintf(stderr, "[flashmem] training on %zu documents (%zu validation), layers", tr.docs.size(), va.docs.size());
    for (int l : tr.target_layers) std::fprintf(stderr, " %d", l);
    if (lo.labels == train::LabelKind::kMass)
      std::fprintf(stderr, ", pooling %s, labels by mass (top %.2f)\n", a.pooling.c_str(), lo.mass_top_p);
    else
      std::fprintf(stderr, ", pooling %s, min hits %d\n", a.pooling.c_str(), lo.min_hits);
    std::unique_ptr<eval::Progress> bar;
    const train::TrainResult r = train::train_indexer(tr, val_files.empty() ? nullptr : &va, o, [&](const train::TrainProgress& p) {
      if (!bar) bar = std::make_unique<eval::Progress>(p.total_steps, "train-indexer");
      char s[96];
      std::snprintf(s, sizeof s, "epoch %d loss %.5f lr %.2e", p.epoch, p.loss, p.lr);
      bar->tick(1, s);
    });
    bar.reset();
    for (const auto& e : r.log) {
      std::fprintf(stderr, "[flashmem] epoch %d: train loss %.5f, validation AUC (mean ensemble) %.4f\n", e.epoch,
                   e.train_loss, e.val_auc);
      report["epochs"].push_back({{"epoch", e.epoch}, {"train_loss", e.train_loss}, {"val_auc", e.val_auc}});
    }
    model = r.model;
    auto md = r.metadata;
    md["train.min_hits"] = std::to_string(lo.min_hits);
    md["train.labels"] = train::labels_name(lo.labels);
    if (lo.labels == train::LabelKind::kMass) md["train.mass_top_p"] = std::to_string(lo.mass_top_p);
    md["train.data"] = fs::path(a.data).filename().string();
    save_indexer(a.out, model, md);
    std::fprintf(stderr, "[flashmem] best epoch %d; checkpoint %s (%.2f MiB)\n", r.best_epoch, a.out.c_str(),
                 static_cast<double>(fs::file_size(a.out)) / (1 << 20));
    report["best_epoch"] = r.best_epoch;
    if (!va.docs.empty()) {  // per scorer, to choose target layers without looking at the test split
      const train::IndexerMetrics mv = train::evaluate_indexer(model, va, a.threads);
      std::printf("Validation (%zu documents):\n%s", va.docs.size(), train::render_metrics(mv).c_str());
      report["validation"] = metrics_json(mv);
    }
    report["first_step_loss"] = r.step_losses.front();
    report["last_step_loss"] = r.step_losses.back();
  }
  if (!a.evaluate.empty()) {  // choose among scorers and ensembles on validation, not on test
    const auto val_files = files_of((fs::path(a.data) / "val").string());
    if (!val_files.empty()) {
      const train::IndexerMetrics mv = train::evaluate_indexer(model, train::load_dataset(val_files, lo), a.threads);
      std::printf("Validation (%zu documents):\n%s", val_files.size(), train::render_metrics(mv).c_str());
      report["validation"] = metrics_json(mv);
    }
  }
  const train::IndexerDataset te = train::load_dataset(test_files, lo);
  if (!te.docs.empty()) {
    const train::IndexerMetrics m = train::evaluate_indexer(model, te, a.threads);
    std::printf("Held-out (test split, %zu documents):\n%s", te.docs.size(), train::render_metrics(m).c_str());
    report["test"] = metrics_json(m);
  }
  report["test_documents"] = te.docs.size();
  if (!a.hold_out.empty()) {  // the family left out, every split: none of it was trained on
    train::LoadOptions lf = lo;
    lf.families_out.clear();
    lf.families_only = {a.hold_out};
    std::vector<std::string> all;
    for (const char* split : {"train", "val", "test"})
      for (auto& f : files_of((fs::path(a.data) / split).string())) all.push_back(std::move(f));
    const train::IndexerDataset hf = train::load_dataset(all, lf);
    FM_CHECK(!hf.docs.empty(), ErrorCode::kInvalidArgument, a.data, " holds no documents of the family '", a.hold_out,
             "' (--hold-out)");
    const train::IndexerMetrics mh = train::evaluate_indexer(model, hf, a.threads);
    std::printf("Held-out family %s (%zu documents, never trained on):\n%s", a.hold_out.c_str(), hf.docs.size(),
                train::render_metrics(mh).c_str());
    report["hold_out"] = metrics_json(mh);
    report["hold_out"]["family"] = a.hold_out;
    report["hold_out"]["documents"] = hf.docs.size();
  }
  if (!a.metrics_json.empty()) {
    std::ofstream out(a.metrics_json);
    FM_CHECK(out.good(), ErrorCode::kIo, "cannot write ", a.metrics_json);
    out << report.dump(2) << "\n";
  }
  return 0;
}

}  // namespace flashmem::cli
