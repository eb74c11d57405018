#!/usr/bin/env bash
# LSA at the scale it exists for (issue #22): an 8B shape with random weights at 128K and 1M
# tokens on one GPU, full attention against lsa, the rows of docs/benchmarks.md's 8B section.
# Runs on the GPU machine from a built tree (needs no model file: `--synthetic` builds it):
#
#   scripts/gpu-lsa-scale.sh BUILD/flashmem [TESTS]
#
# TESTS (default "cap40 whole one m1"), any of:
#   cap40  128K under --gpu-memory 40: the most requests each policy admits, decoded together
#   whole  128K on the whole GPU, each policy at its largest batch (host RAM the limit)
#   one    batch 1 at 128K: a decode step's time, full against lsa (its selection and recalls in)
#   m1     lsa at 1M tokens against its own 32K, q8 KV (the 1M-token mirror in q8: 66 GiB)
# Environment: SHAPE (default llama-3.1-8b:bf16), KV (f16 or q8; cap40, whole and one), CTX
# (default 131072), BACKEND (default cuda), FLAGS (more bench flags). Prompts' K/V but the last 128 tokens are random (--synthetic-context,
# labelled in each row): speed and memory only, never accuracy.
set -euo pipefail
die() { echo "gpu-lsa-scale: error: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ -x "$1" ] || die "usage: $0 BUILD/flashmem [TESTS]"
fm="$1"
tests="${2:-cap40 whole one m1}"
shape="${SHAPE:-llama-3.1-8b:bf16}"
base=(bench --synthetic "$shape" --backend "${BACKEND:-cuda}" --concurrency --synthetic-context --kv-type "${KV:-f16}")
read -r -a more <<< "${FLAGS:-}"
ctx=${CTX:-131072}
for t in $tests; do
  echo "=== $t ($(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  case "$t" in
    cap40|whole)
      cap=(); [ "$t" = cap40 ] && cap=(--gpu-memory 40)
      for pol in "full" "lsa --kv-budget 10%"; do
        read -r -a p <<< "$pol"
        "$fm" "${base[@]}" -d $((ctx - 128)) -n 128 --policy "${p[@]}" "${cap[@]}" "${more[@]}"
      done ;;
    one)
      for pol in "full" "lsa --kv-budget 10%"; do
        read -r -a p <<< "$pol"
        "$fm" "${base[@]}" -d $((ctx - 256)) -n 256 --policy "${p[@]}" --max-requests 1 "${more[@]}"
      done ;;
    m1)
      "$fm" bench --synthetic "$shape" --backend "${BACKEND:-cuda}" --concurrency --synthetic-context --kv-type q8 -c 1048576 \
        -d 32640,1048320 -n 256 --policy lsa --kv-budget 10% --max-requests 1 "${more[@]}" ;;
    *) die "unknown test $t (cap40, whole, one, m1)" ;;
  esac
done
