#!/usr/bin/env bash
# Drives `flashmem serve` with the official openai Python client (ctest runs it; label slow).
# Installs the client from PyPI into a virtual environment next to the build, once.
#   scripts/serve-client-test.sh BUILD/flashmem      (FLASHMEM_MODEL: the model file)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
venv="$(dirname "$bin")/pyenv-openai"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai>=1.40,<3" >&2
fi
exec "$venv/bin/python" "$here/tests/serve/openai_client_test.py" "$bin"
