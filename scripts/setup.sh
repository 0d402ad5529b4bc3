#!/usr/bin/env bash
# Install everything bftfs needs on a fresh Debian-like machine, idempotently:
#   - Debian packages: fuse3 (fusermount3), libfuse3-dev and pkg-config (to build pyfuse3),
#     when missing; with --tests also the programs the mount tests run in the mount
#     (gcc with the C library headers, git);
#   - python3-venv when the interpreter cannot make a virtualenv;
#   - a virtualenv in .venv with bftfs installed in editable mode with its fuse and test
#     extras.  Any failing step stops the script with its error (nothing is masked).
# Called by `make up` / `make test` (benchmark tools: scripts/setup-bench.sh); safe to run
# again (a stamp file skips the pip step when pyproject.toml has not changed).
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(fuse3 libfuse3-dev pkg-config)
if [ "${1:-}" = "--tests" ]; then
    pkgs+=(gcc libc6-dev git)
fi
PY="${PYTHON:-python3}"
if ! "$PY" -c "import venv, ensurepip" 2>/dev/null; then
    pkgs+=(python3-venv)
fi
need=()
for pkg in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating virtualenv .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.bftfs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing bftfs and its fuse and test extras into .venv"
    # (pip's exit status is the pipeline's: pipefail; the filter only drops a known warning)
    .venv/bin/pip install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
    .venv/bin/pip install -q -e '.[fuse,test]' 2>&1 | { grep -v "^WARNING: Location" || true; }
    .venv/bin/python -c "import bftfs, trio, lmdb, zfec, nacl, msgpack, pyfuse3"
    touch "$stamp"
fi
