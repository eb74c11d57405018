#!/usr/bin/env bash
# CPU throughput of the default model: prefill at 1K and 8K tokens, decode at 1K and 8K of
# context, with flashmem's `bench` (random tokens, like llama-bench). When LLAMA_BENCH points to
# a llama-bench binary you built yourself, the reference engine runs on the same machine right
# after, with matching settings, so the two can be compared as a ratio.
#   scripts/bench-cpu.sh                       # flashmem only
#   LLAMA_BENCH=/path/to/llama-bench scripts/bench-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-$(nproc)}"
REPS="${REPS:-3}"
MODEL="${FLASHMEM_MODEL:-$(scripts/fetch-model.sh | tail -n1)}"
BUILD_DIR=$(scripts/build.sh | tail -n1)
echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') | $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p') | threads $THREADS"
echo "\$ flashmem bench -m MODEL -p 1024,8192 -d 1024,8000 -n 128 -r $REPS -t $THREADS"
"$BUILD_DIR/flashmem" bench -m "$MODEL" -p 1024,8192 -d 1024,8000 -n 128 -r "$REPS" -t "$THREADS"
if [ -n "${LLAMA_BENCH:-}" ]; then
  for args in "-p 1024 -n 0" "-p 8192 -n 0" "-p 0 -n 128 -d 1024" "-p 0 -n 128 -d 8000"; do
    echo "\$ llama-bench -m MODEL -t $THREADS -r $REPS $args"
    # shellcheck disable=SC2086
    "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -r "$REPS" $args | grep -E '^\| (model|llama)'
  done
fi
