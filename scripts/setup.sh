#!/usr/bin/env bash
# Install everything bftfs needs on a fresh Debian-like machine, idempotently:
#   - Debian packages: fuse3 (fusermount3), libfuse3-dev and pkg-config (to build pyfuse3),
#     when missing; with --tests also the programs the mount tests run in the mount
#     (gcc with the C library headers, git);
#   - a virtualenv in .venv with bftfs installed in editable mode with its test extras, its
#     protocol core compiled with mypyc (setup.py; BFTFS_PURE=1: plain Python).
# Called by `make up` / `make test` (benchmark tools: scripts/setup-bench.sh); safe to run
# again (a stamp file skips the pip step unless pyproject.toml, setup.py, a compiled module
# or BFTFS_PURE changed).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
# gcc and the C library headers: the protocol core is compiled with mypyc (setup.py).
pkgs=(fuse3 libfuse3-dev pkg-config gcc libc6-dev)
if [ "${1:-}" = "--tests" ]; then
    pkgs+=(git)
fi
# Python's own headers, when this Python is Debian's and they are missing.
if [ ! -f "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then
    pkgs+=(python3-dev)
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
# The install compiles the modules setup.py lists (unless BFTFS_PURE=1), and a compiled
# module shadows its source: install again when the build settings or one of them changed.
mode=compiled
[ "${BFTFS_PURE:-}" = "1" ] && mode=pure
install=0
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$mode" ]; then
    install=1
else
    for f in pyproject.toml setup.py $(sed -n 's/^    "\(bftfs\/.*\.py\)",$/\1/p' setup.py); do
        [ "$f" -nt "$stamp" ] && install=1
    done
fi
if [ "$install" = 1 ]; then
    find bftfs -name '*.so' -delete
    rm -f bftfs_core__mypyc*.so
    echo "setup: installing bftfs ($mode) and its test extras into .venv"
    .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    if ! out=$(.venv/bin/pip install -q -e '.[test]' 2>&1); then
        echo "$out" >&2
        echo "setup: installing bftfs failed (above)" >&2
        exit 1
    fi
    echo "$out" | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import bftfs, trio, lmdb, zfec, nacl, msgpack"
    if [ "$mode" = compiled ] && ! .venv/bin/python -c "
import bftfs.qu.timestamp as m, sys
sys.exit(not m.__file__.endswith('.so'))"; then
        echo "setup: the mypyc build left no compiled modules (BFTFS_PURE=1 skips it)" >&2
        exit 1
    fi
    echo "$mode" > "$stamp"
fi
