#!/usr/bin/env bash
# Memory Indexer training data on a GPU machine: `flashmem dump --backend cuda` in SHARDS
# processes (each takes every SHARDS-th document; the GPU serves them all, each process computes
# its attention labels on one CPU core), then one tarball of the dump directory, split into
# 15 MB parts (PACK/dump.tgz.part-*) when PACK is set (to bring the dump back; training can also
# run on the GPU machine itself).
#
#   MODEL=model.gguf DUMP=dir [PACK=dir] [PROSE=kjv.txt] [SHARDS=16] [BIN=build-gpu/flashmem] \
#     [ARGS="--ruler-lengths 2k,4k,8k --ruler-samples 3 ..."] scripts/gpu-dump.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MODEL:?MODEL=path of the GGUF}" "${DUMP:?DUMP=output directory}"
BIN="${BIN:-build-gpu/flashmem}"
SHARDS="${SHARDS:-16}"
ARGS="${ARGS:---ruler-lengths 2k,4k,8k --ruler-samples 3 --prose-lengths 2k,4k,8k --prose-docs 30 --layers 8,14,20}"
PROSE_ARGS=()
[ -n "${PROSE:-}" ] && PROSE_ARGS=(--prose "$PROSE")
mkdir -p "$DUMP"
for i in $(seq 0 $((SHARDS - 1))); do
  # shellcheck disable=SC2086
  ( rc=0; "$BIN" dump -m "$MODEL" --backend cuda --out "$DUMP" --shard "$i/$SHARDS" "${PROSE_ARGS[@]}" $ARGS \
      > "$DUMP/shard-$i.log" 2>&1 || rc=$?; echo "$rc" > "$DUMP/shard-$i.rc" ) &
done
wait
fail=0
for f in "$DUMP"/shard-*.rc; do
  if [ "$(cat "$f")" != 0 ]; then fail=1; echo "failed: ${f%.rc}"; tail -n 3 "${f%.rc}.log"; fi
done
echo "$(find "$DUMP" -name '*.fmd' | wc -l) documents, $(du -sh "$DUMP" | cut -f1)"
if [ -n "${PACK:-}" ]; then
  mkdir -p "$PACK"
  tar -C "$DUMP" -czf - train val test | split -b 15M - "$PACK/dump.tgz.part-"
  ls -la "$PACK"
fi
exit $fail
