#!/usr/bin/env bash
# Installs the Debian 12 packages flashmem builds and tests with. Idempotent; a no-op when all
# are present. Needs root (or sudo) only when something is missing.
set -euo pipefail
PKGS=(build-essential cmake g++ git python3 python3-pip unzip
      libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev libopenblas-dev
      libcpp-httplib-dev pkg-config wamerican gnuplot-nox)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
