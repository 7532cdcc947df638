#!/usr/bin/env bash
# Creates, once, the virtual environment that runs the sovereign control plane (tests/xds/test_sovereign.py)
# and prints the absolute path of its `sovereign` entry point on stdout (pip's output goes to stderr).
#
# sovereign pins its own fastapi, pydantic, starlette and uvicorn versions, which must not meet zlbfast's test
# environment, so it gets a virtual environment of its own:
#   ${ZLBFAST_SOVEREIGN_VENV:-.venv-sovereign}   (relative paths are relative to the repository root)
# Running it again is cheap: a marker file names the installed version, and a lock serialises concurrent runs.
set -euo pipefail

SOVEREIGN_VERSION=0.32.12  # verified with tests/xds/test_sovereign.py (REST-JSON v3 discovery)

cd "$(dirname "$0")/.."
venv="${ZLBFAST_SOVEREIGN_VENV:-.venv-sovereign}"
mkdir -p "$venv"
exec 9>"$venv/.create.lock"
flock 9
if [ ! -e "$venv/.sovereign-$SOVEREIGN_VERSION" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "sovereign==$SOVEREIGN_VERSION" >&2
    touch "$venv/.sovereign-$SOVEREIGN_VERSION"
fi
echo "$(cd "$venv" && pwd)/bin/sovereign"
