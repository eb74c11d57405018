#!/usr/bin/env bash
# Configures and builds flashmem. BUILD_DIR (default build), BUILD_TYPE (default Release;
# Asan for AddressSanitizer+UBSan), CMAKE_ARGS for extra options. Prints the build dir.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
BUILD_TYPE="${BUILD_TYPE:-Release}"
JOBS="${JOBS:-$(nproc)}"
WERROR=OFF
[ "${CI:-}" = "true" ] && WERROR=ON
CUDA=OFF
command -v nvcc >/dev/null 2>&1 && CUDA=ON
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DFLASHMEM_WERROR="$WERROR" \
  -DFLASHMEM_CUDA="$CUDA" ${CMAKE_ARGS:-} >&2
cmake --build "$BUILD_DIR" -j "$JOBS" >&2
echo "$BUILD_DIR"
