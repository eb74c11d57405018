#!/usr/bin/env bash
# Rebuilds the needle suite's text corpus into OUT_DIR, reproducibly and offline except for
# Debian packages: OUT_DIR/<family>/ for the training families, OUT_DIR/heldout/licenses for the
# held-out one, and OUT_DIR/MANIFEST.tsv (family, file, bytes, sha256) to compare rebuilds.
# Families and rules: docs/indexer.md ("Corpus") and scripts/make-corpus.py.
#   scripts/make-corpus.sh ~/corpus                 # every family, 4 MiB each at most
#   scripts/make-corpus.sh ~/corpus --max-bytes 1048576 --only man,csv
# Keep OUT_DIR outside the repository (corpus/ inside it is git-ignored).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [--max-bytes N] [--only FAMILY,...]" >&2; exit 2; }
cd "$(dirname "$0")/.."
PKGS=(python3 man-db manpages manpages-dev groff-base bsdextrautils bible-kjv fortunes-min fortune-mod
      wordnet-base wamerican libc6-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "make-corpus: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
    { $SUDO apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
fi
# Debian's docker images drop manual pages and /usr/share/doc through dpkg path excludes; say so
# instead of building a thin family.
if [ -e /etc/dpkg/dpkg.cfg.d/excludes ] && grep -q '^path-exclude=/usr/share/man' /etc/dpkg/dpkg.cfg.d/excludes; then
  echo "make-corpus: warning: /etc/dpkg/dpkg.cfg.d/excludes drops manual pages; remove it and reinstall manpages" >&2
fi
export LC_ALL=C.UTF-8 PYTHONHASHSEED=0
start=$(date +%s)
python3 scripts/make-corpus.py "$@"
echo "make-corpus: done in $(( $(date +%s) - start ))s" >&2
