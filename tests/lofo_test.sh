#!/usr/bin/env bash
# scripts/lofo.sh end to end on a tiny dump of the default model: two text families of 1K-token
# documents (short decodes), one indexer per family left out and one on both, and the table.
# Checks: every checkpoint exists, each left-out family's row reports documents > 0 and an AUC
# in [0, 1] that came from its own run (the JSON's hold_out.family), and the table has a row per
# family plus the mean. Needs FLASHMEM_MODEL.  Usage: lofo_test.sh FLASHMEM_BIN REPO_ROOT
set -euo pipefail
BIN=$1 ROOT=$2
: "${FLASHMEM_MODEL:?FLASHMEM_MODEL=path of the default model}"
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
fail() { echo "lofo_test: FAIL: $*" >&2; exit 1; }
mkdir -p "$T/c/alpha" "$T/c/beta"
python3 - "$T/c" <<'PY'
import random, sys
root = sys.argv[1]
r = random.Random(7)
words = "river stone lamp field winter market silver ladder orchard candle harbor meadow".split()
for fam, n in (("alpha", 6), ("beta", 6)):
    for i in range(n):
        with open(f"{root}/{fam}/doc{i}.txt", "w") as f:
            for p in range(60 if fam == "alpha" else 600):
                if fam == "alpha":
                    f.write(" ".join(r.choice(words) for _ in range(40)).capitalize() + ".\n\n")
                else:
                    f.write(f"{p},{r.randint(0, 9999)},{r.choice(words)},{r.random():.4f}\n")
PY
"$BIN" dump -m "$FLASHMEM_MODEL" --out "$T/dump" --haystack "$T/c/alpha,$T/c/beta" --haystack-lengths 1k \
  --needle-samples 3 --text-docs 3 --layers 4,8 -n 16 --tau 8 --point-stride 4 --seed 3000 -t 2 > "$T/dump.log" 2>&1 ||
  { tail -5 "$T/dump.log"; fail "dump"; }
BIN="$BIN" THREADS=2 TRAIN_ARGS="--labels mass --layers 4,8 --epochs 2" \
  bash "$ROOT/scripts/lofo.sh" "$T/dump" "$T/out" > "$T/lofo.log" 2>&1 || { tail -20 "$T/lofo.log" "$T"/out/*.log; fail "lofo.sh"; }
for f in all without-alpha without-beta; do
  [ -s "$T/out/$f.safetensors" ] || fail "no checkpoint $f"
done
python3 - "$T/out" <<'PY'
import json, sys
out = sys.argv[1]
table = open(f"{out}/lofo.md").read()
for fam in ("alpha", "beta"):
    h = json.load(open(f"{out}/without-{fam}.json"))["hold_out"]
    assert h["family"] == fam, (fam, h["family"])
    assert h["documents"] > 0 and h["points"] > 0, h
    auc = [r["auc"] for r in h["scorers"] if r["name"] == "mean"][0]
    assert 0.0 <= auc <= 1.0, auc
    assert f"| {fam} | {h['documents']} |" in table, table
assert "mean over families" in table, table
print("lofo_test: ok")
PY
