#!/usr/bin/env bash
# scripts/stage-model.sh: a file split into parts, staged over several "calls" in any order,
# reports what is missing, refuses to assemble early or from a corrupted part, and assembles
# the identical file.
set -euo pipefail
S="$1/scripts/stage-model.sh"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
head -c 3500000 /dev/urandom > "$t/model.gguf"
"$S" split "$t/model.gguf" "$t/parts" 1 2>/dev/null
[ "$(grep -c '^part' "$t/parts/manifest")" = 4 ] || { echo "FAIL: expected 4 parts"; exit 1; }
[ "$("$S" missing "$t/parts" "$t/remote" | wc -l)" = 4 ] || { echo "FAIL: a fresh stage lacks every part"; exit 1; }
mkdir "$t/c1" && cp "$t/parts/manifest" "$t/parts/part.003" "$t/parts/part.001" "$t/c1/"
"$S" put "$t/c1" "$t/remote" 2>/dev/null
[ "$("$S" missing "$t/c1" "$t/remote" | tr '\n' ' ')" = "part.000 part.002 " ] || { echo "FAIL: missing after call 1"; exit 1; }
if "$S" assemble "$t/remote" "$t/out.gguf" 2>/dev/null; then echo "FAIL: assembled with parts missing"; exit 1; fi
mkdir "$t/c2" && cp "$t/parts/manifest" "$t/parts/part.000" "$t/parts/part.002" "$t/c2/"
printf 'x' | dd of="$t/c2/part.002" bs=1 seek=10 conv=notrunc 2>/dev/null
if "$S" put "$t/c2" "$t/remote" 2>/dev/null; then echo "FAIL: a corrupted part was staged"; exit 1; fi
cp "$t/parts/part.002" "$t/c2/part.002"
"$S" put "$t/c2" "$t/remote" 2>/dev/null
out=$("$S" assemble "$t/remote" "$t/out.gguf")
cmp "$out" "$t/model.gguf" || { echo "FAIL: the assembled file differs"; exit 1; }
echo "stage-model: OK"
