// flashmem — command-line entry point: run · eval · info · bench · dump · train-indexer · serve.
//
// Exit codes: 0 success, 1 a runtime error (bad model file, prompt too long, ...), 2 bad usage.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"flashmem — long-context LLM inference with Lookahead Sparse Attention"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "flashmem 0.1.0");
  app.option_defaults()->always_capture_default();  // --help shows every default
  flashmem::cli::RunArgs run_args;
  flashmem::cli::InfoArgs info_args;
  flashmem::cli::BenchArgs bench_args;
  flashmem::cli::EvalArgs eval_args;
  flashmem::cli::DumpArgs dump_args;
  flashmem::cli::TrainIndexerArgs train_args;
  flashmem::cli::ServeArgs serve_args;
  CLI::App* run = flashmem::cli::add_run_command(app, run_args);
  CLI::App* info = flashmem::cli::add_info_command(app, info_args);
  CLI::App* bench = flashmem::cli::add_bench_command(app, bench_args);
  CLI::App* eval = flashmem::cli::add_eval_command(app, eval_args);
  CLI::App* dump = flashmem::cli::add_dump_command(app, dump_args);
  CLI::App* train = flashmem::cli::add_train_indexer_command(app, train_args);
  CLI::App* serve = flashmem::cli::add_serve_command(app, serve_args);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // CLI11 checks required options before unknown ones; an unknown flag or command is the
    // more useful thing to report, so look for leftovers first.
    std::string extras;
    for (const CLI::App* a : {&app, run, info, bench, eval, dump, train, serve})
      for (const auto& x : a->remaining()) extras += (extras.empty() ? "" : " ") + x;
    if (!extras.empty())
      std::fprintf(stderr, "flashmem: unknown command or argument: %s\n", extras.c_str());
    else
      std::fprintf(stderr, "flashmem: %s\n", e.what());
    std::fprintf(stderr, "Run 'flashmem --help' or 'flashmem <command> --help' for usage.\n");
    return 2;
  }
  try {
    if (run->parsed()) return flashmem::cli::run_command(run_args);
    if (info->parsed()) return flashmem::cli::info_command(info_args);
    if (bench->parsed()) return flashmem::cli::bench_command(bench_args);
    if (eval->parsed()) return flashmem::cli::eval_command(eval_args);
    if (dump->parsed()) return flashmem::cli::dump_command(dump_args);
    if (train->parsed()) return flashmem::cli::train_indexer_command(train_args);
    if (serve->parsed()) return flashmem::cli::serve_command(serve_args);
  } catch (const flashmem::Error& e) {
    std::fprintf(stderr, "flashmem: error (%s): %s\n", flashmem::error_code_name(e.code()), e.what());
    return e.code() == flashmem::ErrorCode::kInvalidArgument ? 2 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashmem: error: %s\n", e.what());
    return 1;
  }
  return 2;
}
