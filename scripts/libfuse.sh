#!/usr/bin/env bash
# Build libfuse 3.17 into a private prefix for the patched pyfuse3 (called by
# scripts/pyfuse3-locks.sh); prints the prefix on stdout, or exits non-zero (and says why on
# stderr) when it cannot, and the caller then builds against Debian's libfuse.
#
# Why: FUSE passthrough (bftfs/fuse/passthrough.py: the kernel reads a verified file from a
# local cache file without asking the daemon) needs libfuse >= 3.17 to say FUSE_PASSTHROUGH
# at FUSE_INIT and to put a backing id in an open reply; Debian bookworm has 3.14.  The
# source is Debian trixie's fuse3 (a Debian package: the machine's own Debian mirror, as
# apt is configured, and the tarball's checksum pinned below), built with meson and ninja
# (Debian packages too, installed by setup.sh) without its utilities (fusermount3 stays
# Debian's).  Under a minute of compiling, once per machine: the prefix is in
# ${XDG_CACHE_HOME:-$HOME/.cache}/bftfs/libfuse-$VERSION, shared by every clone, and the
# pyfuse3 wheel links to it by its rpath.  BFTFS_LIBFUSE=system skips all of this.
set -euo pipefail

VERSION=3.17.2
TARBALL=fuse3_$VERSION.orig.tar.gz
SHA256=3d932431ad94e86179e5265cddde1d67aa3bb2fb09a5bd35c641f86f2b5ed06f
prefix="${XDG_CACHE_HOME:-$HOME/.cache}/bftfs/libfuse-$VERSION"

if [ "${BFTFS_LIBFUSE:-}" = "system" ]; then
    echo "libfuse: BFTFS_LIBFUSE=system: not building libfuse $VERSION" >&2
    exit 1
fi
if [ -f "$prefix/lib/pkgconfig/fuse3.pc" ] && [ -e "$prefix/lib/libfuse3.so.4" ]; then
    echo "$prefix"
    exit 0
fi
for tool in meson ninja; do
    command -v "$tool" >/dev/null || { echo "libfuse: $tool is missing" >&2; exit 1; }
done

# The Debian archive apt uses here (the first one listed that is not the security archive).
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null | awk '
        /^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break } }
        /^URIs:/ { for (i = 2; i <= NF; i++) print $i }' \
    | grep -E '/debian/?$' | grep -v security | head -n 1 || true)
if [ -z "$mirror" ]; then
    echo "libfuse: no Debian archive found in apt's sources" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
url="${mirror%/}/pool/main/f/fuse3/$TARBALL"
echo "setup: building libfuse $VERSION for FUSE passthrough (once per machine, into $prefix)" >&2
if ! python3 - "$url" "$work/$TARBALL" <<'EOF' >&2; then
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=120) as r, open(sys.argv[2], "wb") as out:
    out.write(r.read())
EOF
    echo "libfuse: downloading $TARBALL failed" >&2
    exit 1
fi
if ! echo "$SHA256  $work/$TARBALL" | sha256sum -c --quiet - >&2; then
    echo "libfuse: $TARBALL does not have the pinned checksum" >&2
    exit 1
fi
tar xzf "$work/$TARBALL" -C "$work"
src="$work/fuse-$VERSION"
stage="$work/prefix"
mkdir -p "$(dirname "$prefix")"
# Built for its final place (pkg-config's paths and the rpath name it), installed into a
# temporary directory beside it and renamed into place: another clone's setup may be
# building it at the same time.
tmp=$(mktemp -d "$(dirname "$prefix")/.libfuse.XXXXXX")
if ! { meson setup "$src/build" "$src" --prefix="$prefix" --libdir=lib --buildtype=release \
        -Dexamples=false -Dutils=false -Dtests=false \
        && ninja -C "$src/build" \
        && DESTDIR="$stage" ninja -C "$src/build" install; } > "$work/build.log" 2>&1; then
    echo "libfuse: building libfuse $VERSION failed; its output:" >&2
    cat "$work/build.log" >&2
    rm -rf "$tmp"
    exit 1
fi
cp -a "$stage$prefix/." "$tmp/"
mv -T "$tmp" "$prefix" 2>/dev/null || rm -rf "$tmp"
echo "$prefix"
