#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what is needed, fetch the embedded default
# model (SmolLM2-135M-Instruct), build, and answer a chat prompt with a KV report.
#   scripts/run-default.sh ["your question"] [extra flashmem run flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
MODEL=$(scripts/fetch-model.sh | tail -n1)
BUILD_DIR=$(scripts/build.sh | tail -n1)
PROMPT="${1:-What are the three primary colors? Answer in one sentence.}"
shift || true
exec "$BUILD_DIR/flashmem" run -m "$MODEL" --chat -p "$PROMPT" -n 128 "$@"
