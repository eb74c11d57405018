#!/usr/bin/env bash
# Leave one family out (#21): trains the Memory Indexer on every text family of a dump but one,
# scores it on all of the one left out (none of it trained on), for each family in turn, and once
# on everything; then writes OUT/lofo.md, the per-family table (the mean ensemble's AUC and
# recalls, held-out family against the all-family indexer's own test split).
#
#   scripts/lofo.sh DUMP OUT [FAMILY ...]        # default: the families found in DUMP
#   BIN=build/flashmem TRAIN_ARGS="--labels mass --layers 4,8,20" THREADS=0 scripts/lofo.sh ...
#
# DUMP is a `flashmem dump --haystack DIR,...` directory (train/ val/ test/); its documents' sources
# are needle:<family> and text:<family> (and ruler, prose: never held out).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DUMP OUT [FAMILY ...]" >&2; exit 2; }
cd "$(dirname "$0")/.."
DUMP=$1 OUT=$2; shift 2
BIN=${BIN:-build/flashmem}
TRAIN_ARGS=${TRAIN_ARGS:---labels mass --layers 4,8,20}
THREADS=${THREADS:-0}
mkdir -p "$OUT"
FAMILIES=("$@")
if [ ${#FAMILIES[@]} -eq 0 ]; then
  # Document file names start with their source's kind and family (dump's file_name).
  mapfile -t FAMILIES < <(ls "$DUMP"/train "$DUMP"/val "$DUMP"/test 2>/dev/null |
    sed -n 's/^\(needle\|text\)_\([a-z0-9-]*\)_.*/\2/p' | sort -u)
fi
[ ${#FAMILIES[@]} -gt 0 ] || { echo "lofo: no needle/text families in $DUMP" >&2; exit 1; }
echo "lofo: families ${FAMILIES[*]}" >&2
# shellcheck disable=SC2086
"$BIN" train-indexer --data "$DUMP" --out "$OUT/all.safetensors" $TRAIN_ARGS -t "$THREADS" \
  --metrics-json "$OUT/all.json" > "$OUT/all.log" 2>&1
for f in "${FAMILIES[@]}"; do
  # shellcheck disable=SC2086
  "$BIN" train-indexer --data "$DUMP" --hold-out "$f" --out "$OUT/without-$f.safetensors" $TRAIN_ARGS -t "$THREADS" \
    --metrics-json "$OUT/without-$f.json" > "$OUT/without-$f.log" 2>&1
  echo "lofo: $f done" >&2
done
python3 - "$OUT" "${FAMILIES[@]}" <<'PY'
import json, sys
out, fams = sys.argv[1], sys.argv[2:]
def mean_row(m):
    rows = [r for r in m["scorers"] if r["name"] == "mean"] or m["scorers"][-1:]
    return rows[0]
allm = json.load(open(f"{out}/all.json"))
lines = ["| family left out | documents | points | golden share | AUC | recall@5% | recall@10% | recall@15% |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
aucs, r10s = [], []
for f in fams:
    h = json.load(open(f"{out}/without-{f}.json"))["hold_out"]
    r = mean_row(h)
    aucs.append(r["auc"]); r10s.append(r["recall_at_10pct"])
    lines.append(f"| {f} | {h['documents']} | {h['points']} | {h['positive_rate']:.3f} | {r['auc']:.3f} | "
                 f"{r['recall_at_5pct']:.3f} | {r['recall_at_10pct']:.3f} | {r['recall_at_15pct']:.3f} |")
lines.append(f"| **mean over families** | | | | **{sum(aucs)/len(aucs):.3f}** | | **{sum(r10s)/len(r10s):.3f}** | |")
if "test" in allm:
    r = mean_row(allm["test"])
    lines.append(f"| (all families, test split) | {allm['test_documents']} | {allm['test']['points']} | "
                 f"{allm['test']['positive_rate']:.3f} | {r['auc']:.3f} | {r['recall_at_5pct']:.3f} | "
                 f"{r['recall_at_10pct']:.3f} | {r['recall_at_15pct']:.3f} |")
open(f"{out}/lofo.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
