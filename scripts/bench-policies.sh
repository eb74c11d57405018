#!/usr/bin/env bash
# Residency policies at a fixed context on the default model: device KV (mean, peak), full-KV
# bytes, decode speed and greedy agreement with `full`, for each policy at each budget.
#   CTX=8192 GEN=128 BUDGETS="10% 25%" THREADS=2 scripts/bench-policies.sh [OUT_DIR]
# The prompt is public-domain-licensed text shipped with every Debian system (the Apache 2.0,
# MPL 2.0 and GPL 3 texts in /usr/share/common-licenses) with a question at the end, in the
# chat template, cut from the middle to CTX − GEN tokens. Generation ignores end of turn, so
# every run makes exactly GEN tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
CTX=${CTX:-8192}
GEN=${GEN:-128}
BUDGETS=${BUDGETS:-"10% 25%"}
POLICIES=${POLICIES:-"recency random quest oracle"}
THREADS=${THREADS:-2}
OUT=${1:-build/bench-policies}
MODEL=${MODEL:-$(scripts/fetch-model.sh)}
BIN=${BIN:-build/flashmem}
mkdir -p "$OUT"
PROMPT="$OUT/prompt.txt"
L=/usr/share/common-licenses
{ cat "$L/Apache-2.0" "$L/MPL-2.0" "$L/GPL-3"
  printf '\n\nWhich three licenses are quoted above? For each, name its version and one condition it sets on redistribution.'
} > "$PROMPT"
run() {  # name, extra flags
  local name=$1; shift
  "$BIN" run -m "$MODEL" -f "$PROMPT" --chat -c "$CTX" -n "$GEN" -t "$THREADS" --ignore-eos \
    --prompt-tokens $((CTX - GEN)) --report-json "$OUT/$name.json" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.log"
  echo "done $name" >&2
}
# Free-running greedy generation (SKIP_FREE=1 reuses the results of an earlier run), then
# teacher-forced on full's tokens: top-1 agreement step by step, without compounding.
if [ "${SKIP_FREE:-0}" != 1 ]; then
  run full --policy full
  run full-tf --policy full --force-tokens "$OUT/full.json"  # full's own speed, same mode as the rows below
  for b in $BUDGETS; do
    for p in $POLICIES; do run "$p-${b%\%}" --policy "$p" --kv-budget "$b"; done
  done
fi
if [ "${FORCED:-1}" = 1 ]; then
  for b in $BUDGETS; do
    for p in $POLICIES; do run "$p-${b%\%}-tf" --policy "$p" --kv-budget "$b" --force-tokens "$OUT/full.json"; done
  done
fi
python3 - "$OUT" "$BUDGETS" "$POLICIES" <<'PY'
import json, sys, subprocess
out, budgets, policies = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
full = json.load(open(f"{out}/full.json"))
ref = full["tokens"]
import os
def tf(name):
    f = f"{out}/{name}-tf.json"
    return json.load(open(f)) if os.path.exists(f) else None
full_speed = (tf("full") or full)["decode_tok_s"]
def row(name, j):
    kv = j["kv"]; t = j["tokens"]; f = tf(name)
    n = min(len(t), len(ref)); prefix = 0
    while prefix < n and t[prefix] == ref[prefix]: prefix += 1
    speed = (f or j)["decode_tok_s"]
    forced = f"{f['forced_agree']}/{f['forced_tokens']}" if f else "–"
    mib = lambda b: b / 2**20
    return (f"| {kv['policy']} | {kv['budget']} ({kv['budget_pages']}) | {mib(kv['device_bytes_mean']):.2f} | "
            f"{mib(kv['device_bytes_peak']):.2f} | {mib(kv['full_kv_bytes']):.2f} | "
            f"{100*kv['device_bytes_mean']/kv['full_kv_bytes']:.1f}% | {speed:.1f} | {speed/full_speed:.2f} | "
            f"{prefix}/{len(ref)} | {forced} | {j['prefill_tok_s']:.1f} | {kv['recall']['pages']} |")
print(f"prompt {full['prompt_tokens']} tokens, {len(ref)} generated")
print("| policy | budget (pages/layer) | device KV mean MiB | device KV peak MiB | full-KV MiB | device mean / full | decode tok/s | ×full | greedy prefix = full | teacher-forced top-1 = full | prefill tok/s | pages recalled |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
print(row("full", full))
for b in budgets:
    for p in policies:
        print(row(f"{p}-{b.rstrip('%')}", json.load(open(f"{out}/{p}-{b.rstrip('%')}.json"))))
PY
