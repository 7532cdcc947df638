#!/usr/bin/env bash
# Installs everything the tests need and runs them: Debian packages (when
# root and missing), the package with its test extras, lint, types, the C
# unit tests under ASan/UBSan (through pytest) and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(gcc make libssl-dev iproute2 haproxy nginx libnginx-mod-stream wrk)
missing=()
for d in "${debs[@]}"; do
    dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing Debian packages: ${missing[*]} (sudo apt-get install -y ${missing[*]})" >&2
        exit 1
    fi
fi

python3 -m pip install -q --upgrade pip
python3 -m pip install -q -e '.[test]'
# sovereign (the REST xDS interop peer) lives in its own venv: its pins clash with ours.
bash scripts/sovereign-env.sh >/dev/null
python3 -m ruff check zlbfast tests bench
python3 -m mypy
python3 -m pytest -q "$@"
