#!/usr/bin/env bash
# Install pyfuse3 built with bftfs's lock patch into .venv (called by setup.sh, before
# bftfs's own dependencies, so that pip finds pyfuse3==3.5.0 installed and never builds
# the released one).  Released pyfuse3 has no getlk/setlk/flock handlers, so without them
# the kernel keeps fcntl and flock locks per mount.  scripts/pyfuse3-locks.patch adds them
# (and passes the lock owner of a close to the file system); this script downloads the
# released source of the pinned version from PyPI, applies the patch and builds a wheel with
# Cython (pyfuse3's own build requirement) and the C compiler: minutes on a busy machine.
#
# The wheel is cached in ${XDG_CACHE_HOME:-$HOME/.cache}/bftfs/wheels, under a key hashing
# the patch, the pyfuse3 version, the Python ABI and platform and the libfuse3 version, so
# another clone on the same machine installs it in seconds (BFTFS_NO_WHEEL_CACHE=1 builds
# anyway).  Idempotent: a stamp holding the key skips the work when that build is installed.
# docs/architecture.md says why a patch.  Since patch 4 (FUSE passthrough) it is built against
# libfuse 3.17 from scripts/libfuse.sh when that can be built, else against Debian's.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=3.5.0   # keep equal to the pin in pyproject.toml's fuse extra
PATCH=scripts/pyfuse3-locks.patch
PY=.venv/bin/python
# libfuse 3.17 in a private prefix (scripts/libfuse.sh) for FUSE passthrough; if it cannot
# be had, Debian's libfuse (3.14) and a pyfuse3 without passthrough (pyfuse3.PASSTHROUGH
# False: `passthrough = on` then says so and serves reads through the daemon).
if libfuse=$(scripts/libfuse.sh); then
    export PKG_CONFIG_PATH="$libfuse/lib/pkgconfig"
    export LDFLAGS="${LDFLAGS:-} -Wl,-rpath,$libfuse/lib"
else
    echo "setup: WARNING: no libfuse 3.17 (above: why); building pyfuse3 against Debian's" \
        "libfuse $(pkg-config --modversion fuse3 2>/dev/null || echo '?'): FUSE passthrough" \
        "is off on this machine (everything else works)" >&2
fi
abi=$("$PY" -c "import sys, sysconfig; print(sysconfig.get_config_var('SOABI') or sys.version, sysconfig.get_platform())")
fuse="$(pkg-config --modversion fuse3 2>/dev/null || echo unknown) ${libfuse:-system}"
key=$( { echo "pyfuse3 $VERSION"; echo "$abi"; echo "libfuse3 $fuse"; cat "$PATCH"; } \
    | sha256sum | cut -c1-16)
stamp=.venv/.pyfuse3-locks
want="$VERSION $key"

# Installed already?  The patched module says LOCKS_PATCH; before bftfs's dependencies are
# in (pyfuse3 imports trio) the stamp alone answers.
installed() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] || return 1
    "$PY" - <<'EOF' 2>/dev/null
import sys
try:
    import pyfuse3
except ModuleNotFoundError as e:
    sys.exit(0 if e.name != "pyfuse3" else 1)  # a dependency not installed yet
sys.exit(0 if getattr(pyfuse3, "LOCKS_PATCH", 0) >= 7 else 1)
EOF
}
if installed; then
    exit 0
fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/bftfs/wheels/pyfuse3-$VERSION-$key"
wheel=""
if [ -z "${BFTFS_NO_WHEEL_CACHE:-}" ]; then
    wheel=$(ls "$cache"/pyfuse3-*.whl 2>/dev/null | head -n 1 || true)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -n "$wheel" ]; then
    echo "setup: installing the patched pyfuse3 $VERSION from the cache ($cache)"
else
    echo "setup: building pyfuse3 $VERSION with the lock patch (compiling C: a few minutes," \
        "once per machine; the wheel is cached in $cache)"
    .venv/bin/pip download -q --no-deps --no-binary pyfuse3 "pyfuse3==$VERSION" -d "$work" 2>&1 \
        | { grep -v "^WARNING: Location" || true; }
    tar xzf "$work/pyfuse3-$VERSION.tar.gz" -C "$work"
    patch -d "$work/pyfuse3-$VERSION" -p1 --forward --quiet < "$PATCH"
    # The build runs in the background with a line of progress; its whole output is shown
    # if it fails (nothing is masked), and dropped if it succeeds.
    .venv/bin/pip wheel -q --no-deps --no-cache-dir -w "$work/wheel" "$work/pyfuse3-$VERSION" \
        > "$work/build.log" 2>&1 &
    build=$!
    start=$SECONDS
    next=30
    while kill -0 "$build" 2>/dev/null; do
        sleep 1   # a progress display's tick, not a synchronisation: wait below collects it
        elapsed=$((SECONDS - start))
        if [ -t 1 ]; then
            printf '\rsetup: compiling pyfuse3... %d s' "$elapsed"
        elif [ "$elapsed" -ge "$next" ]; then
            echo "setup: compiling pyfuse3... ${elapsed} s"
            next=$((next + 30))
        fi
    done
    [ -t 1 ] && printf '\n'
    if ! wait "$build"; then
        echo "setup: building pyfuse3 failed; pip's output:" >&2
        cat "$work/build.log" >&2
        exit 1
    fi
    echo "setup: compiled pyfuse3 in $((SECONDS - start)) s"
    wheel=$(ls "$work"/wheel/pyfuse3-*.whl | head -n 1)
    # Into the cache atomically (another clone's setup may be filling it at the same time).
    if mkdir -p "$(dirname "$cache")" 2>/dev/null; then
        tmp=$(mktemp -d "$(dirname "$cache")/.tmp.XXXXXX")
        cp "$wheel" "$tmp/"
        mv -T "$tmp" "$cache" 2>/dev/null || rm -rf "$tmp"
    fi
fi
.venv/bin/pip install -q --force-reinstall --no-deps "$wheel" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
echo "$want" > "$stamp"
