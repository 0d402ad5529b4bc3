#!/usr/bin/env bash
# Install everything bftfs needs on a fresh Debian-like machine, idempotently:
#   - Debian packages: fuse3 (fusermount3), libfuse3-dev, pkg-config, gcc, the C library's
#     and Python's headers and patch (to build pyfuse3 with the lock patch), and libisal2
#     (ISA-L: the erasure code's vector kernels, bftfs/erasure_kernel.py), meson and
#     ninja-build (libfuse 3.17 for FUSE passthrough, scripts/libfuse.sh), when missing;
#     with --tests also git, which the mount tests run in the mount, and iproute2 (ip and
#     tc: the network-namespace tests, t4_machines.py, t4_buffers_lossy.py and t5_wan.py);
#   - python3-venv when the interpreter cannot make a virtualenv;
#   - a virtualenv in .venv with pyfuse3 built with bftfs's lock patch
#     (scripts/pyfuse3-locks.sh: the wheel cached per user, so a second clone installs it in
#     seconds) and bftfs installed in editable mode with its fuse and test extras,
#     byte-compiled.  Any failing step stops the script with its whole output (nothing is
#     masked; a successful step's known warnings are not shown).
# Called by `make up` / `make test` (benchmark tools: scripts/setup-bench.sh); safe to run
# again (a stamp file skips the pip step when pyproject.toml has not changed).
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(fuse3 libfuse3-dev pkg-config gcc libc6-dev patch libisal2 meson ninja-build)
if [ "${1:-}" = "--tests" ]; then
    pkgs+=(git iproute2)
fi
PY="${PYTHON:-python3}"
if ! "$PY" -c "import os, sysconfig; assert os.path.exists(sysconfig.get_paths()['include'] + '/Python.h')" 2>/dev/null; then
    pkgs+=(python3-dev)
fi
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

# Run pip quietly: its output is kept, and shown whole if it fails (nothing is masked); on
# success only what is worth reading, without pip's "WARNING: Location" lines and
# setuptools' ten-line block about editable installs (harmless: bftfs runs `python -P`).
quiet_pip() {
    local log rc=0
    log=$(mktemp)
    .venv/bin/pip "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        cat "$log" >&2
        rm -f "$log"
        return "$rc"
    fi
    awk '
        /^WARNING: Location/ { next }
        /BuildBackendWarning: Editable installation/ { skip = 1; bangs = 0; next }
        skip == 1 { if ($0 ~ /^[[:space:]]*!![[:space:]]*$/ && ++bangs == 2) skip = 2; next }
        skip == 2 { skip = 0; if ($0 ~ /WheelFile\(wheel_path/) next }
        { print }' "$log"
    rm -f "$log"
}

if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/pyfuse3-locks.patch -nt "$stamp" ] \
    || [ scripts/libfuse.sh -nt "$stamp" ]; then
    quiet_pip install -q --upgrade pip
    # The patched pyfuse3 first (from the per-user wheel cache, else built and cached), so
    # that the next line finds pyfuse3==3.5.0 installed and does not build the released one.
    scripts/pyfuse3-locks.sh
    echo "setup: installing bftfs and its fuse and test extras into .venv"
    quiet_pip install -q -e '.[fuse,test]'
    .venv/bin/python -c "import bftfs, trio, lmdb, zfec, nacl, msgpack, pyfuse3; assert pyfuse3.LOCKS_PATCH >= 6"
    touch "$stamp"
fi
# Byte-compile the package (quietly, only what changed). An editable install does not, and
# with PYTHONDONTWRITEBYTECODE set (as on some CI machines) every node, mount and command
# would compile bftfs from source at each start: 0.35 CPU-s of a node's 0.8 s start.
.venv/bin/python -m compileall -q bftfs >/dev/null
