#!/usr/bin/env bash
# The RULER and needle tables on a GPU machine (docs/accuracy.md): every (length, task) pair runs
# as its own `flashmem eval --backend cuda` process, JOBS at a time (the GPU serves them all; each
# uses one CPU core for tokenising and sampling), then the per-pair results are concatenated into
# one results.jsonl. Samples depend only on (task, length, seed, index), so the split changes
# nothing but the wall time. Summarise (and plot) afterwards with
#   flashmem eval --summarize DIR
# With CORPUS=dir the suite is `needle` and the tasks are the text families, the folders of CORPUS
# (scripts/make-corpus.sh), each its own --haystack (FAMILIES="a b" picks some).
#
#   MODEL=model.gguf OUT=dir [LENGTHS="4k 8k"] [SAMPLES=20] [SEED=0] [JOBS=16] \
#     [POLICIES=full,recency,random,quest] [BUDGETS=10%] [BIN=build-gpu/flashmem] \
#     [EXTRA="--page-tokens 16 ..."] [CORPUS=dir [FAMILIES="man csv"]] scripts/gpu-ruler.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MODEL:?MODEL=path of the GGUF}" "${OUT:?OUT=results directory}"
BIN="${BIN:-build-gpu/flashmem}"
LENGTHS="${LENGTHS:-4k 8k}"
SAMPLES="${SAMPLES:-20}"
SEED="${SEED:-0}"
JOBS="${JOBS:-16}"
POLICIES="${POLICIES:-full,recency,random,quest}"
BUDGETS="${BUDGETS:-10%}"
TASKS="niah_single_1 niah_single_2 niah_single_3 niah_multikey_1 niah_multikey_2 niah_multikey_3
niah_multivalue niah_multiquery vt cwe fwe qa_1 qa_2"
if [ -n "${CORPUS:-}" ]; then
  TASKS="${FAMILIES:-$(cd "$CORPUS" && for d in */; do echo "${d%/}"; done)}"
fi
suite_args() {  # the eval arguments that name one task
  if [ -n "${CORPUS:-}" ]; then echo "--suite needle --haystack $CORPUS/$1"; else echo "--suite ruler --tasks $1"; fi
}
mkdir -p "$OUT/parts"
for len in $LENGTHS; do
  for task in $TASKS; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
    ( rc=0
      # shellcheck disable=SC2046
      "$BIN" eval -m "$MODEL" --backend cuda $(suite_args "$task") --lengths "$len" \
        --samples "$SAMPLES" --seed "$SEED" --policy "$POLICIES" --kv-budget "$BUDGETS" ${EXTRA:-} \
        --out "$OUT/parts/$len-$task" > "$OUT/parts/$len-$task.log" 2>&1 || rc=$?
      echo "$rc" > "$OUT/parts/$len-$task.rc" ) &
  done
done
wait
cat "$OUT"/parts/*/results.jsonl > "$OUT/results.jsonl"
echo "$(wc -l < "$OUT/results.jsonl") results in $OUT/results.jsonl"
fail=0
for f in "$OUT"/parts/*.rc; do
  if [ "$(cat "$f")" != 0 ]; then fail=1; echo "failed: ${f%.rc} (see its .log)"; tail -n 3 "${f%.rc}.log"; fi
done
exit $fail
