#!/usr/bin/env bash
# Build pyfuse3 with bftfs's lock patch and install it into .venv (called by setup.sh).
# Released pyfuse3 has no getlk/setlk/flock handlers, so without them the kernel keeps
# fcntl and flock locks per mount.  scripts/pyfuse3-locks.patch adds them (and passes the
# lock owner of a close to the file system); this script downloads the released source of
# the pinned version from PyPI, applies the patch and builds it with Cython (pyfuse3's own
# build requirement) and the C compiler.  Idempotent: a stamp holding the patch's checksum
# skips the work when that exact build is installed.  docs/architecture.md says why a patch.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=3.5.0   # keep equal to the pin in pyproject.toml's fuse extra
PATCH=scripts/pyfuse3-locks.patch
stamp=.venv/.pyfuse3-locks
want="$VERSION $(sha256sum "$PATCH" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && .venv/bin/python -c "import pyfuse3; assert pyfuse3.LOCKS_PATCH >= 2" 2>/dev/null; then
    exit 0
fi
echo "setup: building pyfuse3 $VERSION with the lock patch"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/pip download -q --no-deps --no-binary pyfuse3 "pyfuse3==$VERSION" -d "$work" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
tar xzf "$work/pyfuse3-$VERSION.tar.gz" -C "$work"
patch -d "$work/pyfuse3-$VERSION" -p1 --forward --quiet < "$PATCH"
.venv/bin/pip install -q --force-reinstall --no-deps "$work/pyfuse3-$VERSION" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -c "import pyfuse3; assert pyfuse3.LOCKS_PATCH >= 2"
echo "$want" > "$stamp"
