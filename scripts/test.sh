#!/usr/bin/env bash
# The test command: installs what is needed, fetches the default model and the Qwen2.5 model
# (tests compare both against fixtures made from them), builds with warnings as errors under CI,
# and runs every test.
#   scripts/test.sh                 # Release build in build/
#   BUILD_TYPE=Asan scripts/test.sh # AddressSanitizer + UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export FLASHMEM_MODEL="${FLASHMEM_MODEL:-$(scripts/fetch-model.sh | tail -n1)}"
export FLASHMEM_QWEN_MODEL="${FLASHMEM_QWEN_MODEL:-$(scripts/fetch-model.sh qwen2.5-coder-0.5b | tail -n1)}"
if [ "${BUILD_TYPE:-Release}" = "Asan" ]; then export BUILD_DIR="${BUILD_DIR:-build-asan}"; fi
BUILD_DIR=$(scripts/build.sh | tail -n1)
cd "$BUILD_DIR"
ctest --output-on-failure -j "${JOBS:-$(nproc)}" ${CTEST_ARGS:-}
