"""Andrew on a cluster of three groups of six (issue 66's bar: "a cluster of 3 groups made
by bftfs init and bftfs up on one machine, mounted, Andrew and a cross-group rename
correct"), through the real CLI, 18 real node processes and a real FUSE mount.

``bftfs up --groups 3`` makes, starts and mounts the cluster; the project's Andrew phases
(``benchmarks/andrew.py``'s ``run_andrew``: mkdir, copy, stat, read checked by CRC,
compile) run on a C tree this test writes (seeded: a library of four C files, a program,
data files from empty to several blocks); the program built on the mount reads the data
files and its output is checked.  Then a directory of that tree moves to a directory on
another group (``os.rename``: a cross-group transaction, docs/layout.md), and its files
read back whole from this mount, from a second mount, and through the program again."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from t4_groups import bftfs

from bftfs import local
from bftfs.fsobjects.limits import ROOT
from bftfs.layout.groups import load_layout
from bftfs.layout.spread import dir_group
from bftfs.testing.mounts import fuse_available

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import andrew  # noqa: E402
import common  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]

HEADER = """\
#include <stddef.h>
unsigned long fnv1a(const unsigned char *p, size_t n, unsigned long h);
unsigned long fnv_file(const char *path, long *size);
long table_sum(int n);
int classify(long x);
"""

SOURCES = {
    "lib/hash.c": """\
#include "prog.h"
unsigned long fnv1a(const unsigned char *p, size_t n, unsigned long h) {
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h = (h * 1099511628211UL) & 0xffffffffUL; }
    return h;
}
""",
    "lib/file.c": """\
#include <stdio.h>
#include "prog.h"
unsigned long fnv_file(const char *path, long *size) {
    unsigned char buf[4096]; size_t got; unsigned long h = 2166136261UL;
    FILE *f = fopen(path, "rb");
    *size = -1;
    if (!f) return 0;
    *size = 0;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) { h = fnv1a(buf, got, h); *size += (long)got; }
    fclose(f);
    return h;
}
""",
    "lib/table.c": """\
#include "prog.h"
long table_sum(int n) { long s = 0; for (int i = 1; i <= n; i++) s += (long)i * i; return s; }
""",
    "lib/class.c": """\
#include "prog.h"
int classify(long x) { return x == 0 ? 0 : x < 8192 ? 1 : 2; }
""",
    "app/main.c": """\
#include <stdio.h>
#include "prog.h"
int main(int argc, char **argv) {
    printf("table %ld\\n", table_sum(100));
    for (int i = 1; i < argc; i++) {
        long size; unsigned long h = fnv_file(argv[i], &size);
        if (size < 0) { printf("%s missing\\n", argv[i]); return 1; }
        printf("%s %ld %08lx %d\\n", argv[i], size, h, classify(size));
    }
    return 0;
}
""",
}

# Compile every C file into build/ and link prog, one cc per file as Andrew's make phase.
BUILD = (
    "mkdir -p build && for f in lib/*.c app/*.c; do "
    'o=build/$(basename "${f%.c}").o; cc -O1 -Iinclude -c "$f" -o "$o" || exit 1; done && '
    "cc -o build/prog build/*.o && test -s build/prog"
)


def _c_tree(root: Path) -> dict[str, bytes]:
    """The tree Andrew copies (seeded): the C sources, a header, notes, and data files from
    empty to several blocks over two directories; returns the data files."""
    rng = random.Random(6603)
    (root / "include").mkdir(parents=True)
    (root / "include/prog.h").write_text(HEADER)
    for rel, text in SOURCES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "docs").mkdir()
    for i in range(6):
        (root / f"docs/note{i}.txt").write_text(f"note {i}\n" * rng.randrange(1, 400))
    data = {}
    for i, size in enumerate([0, 700, 8193, 30_000, 70_000, 200_000, 5000, 150_000]):
        rel = f"data/{'raw/' if i % 2 else ''}d{i}.bin"
        data[rel] = rng.randbytes(size)
    for rel, blob in data.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return data


def _fnv(blob: bytes) -> int:
    h = 2166136261
    for c in blob:
        h = ((h ^ c) * 1099511628211) & 0xFFFFFFFF
    return h


def _program_says(prog: Path, base: Path, data: dict[str, bytes]) -> None:
    """The program built on the mount reads every data file under ``base`` and prints
    what Python computes from the source bytes."""
    rels = sorted(data)
    out = subprocess.run(
        [str(prog), *rels], cwd=base, capture_output=True, text=True, check=True, timeout=120
    ).stdout.splitlines()
    kind = {r: 0 if not data[r] else 1 if len(data[r]) < 8192 else 2 for r in rels}
    want = [f"table {sum(i * i for i in range(1, 101))}"] + [
        f"{r} {len(data[r])} {_fnv(data[r]):08x} {kind[r]}" for r in rels
    ]
    assert out == want


def _crcs_equal(root: Path, data: dict[str, bytes]) -> None:
    for rel, blob in data.items():
        assert zlib.crc32((root / rel).read_bytes()) == zlib.crc32(blob), rel


def test_andrew_and_a_cross_group_directory_rename_on_three_groups(tmp_path: Path) -> None:
    home, mnt, src = tmp_path / "c", tmp_path / "mnt", tmp_path / "src"
    data = _c_tree(src)
    tree = andrew.scan_tree(src)
    up = ["up", "--dir", str(home), "--groups", "3", "--mount", str(mnt), "--clients", "1"]
    try:
        out = bftfs(*up, "--map-size", "64M", "--timeout", "120").stdout
        assert "3 groups of 6 nodes over 18 nodes" in out and f"mounted {mnt}" in out
        site = common.Site(common.bftfs_spec(1, 1), mnt)
        times = andrew.run_andrew(tree, site, BUILD, timeout=200.0)
        print("andrew on 3 groups:", {k: round(v, 2) for k, v in times.items()})
        work = mnt / "andrew"
        _program_says(work / "build/prog", work, data)

        layout = load_layout(local.load_cluster(home))
        assert layout is not None
        here = layout.group_of_object(os.stat(work).st_ino)
        name = next(f"y{i}" for i in range(99)
                    if dir_group(layout, ROOT, f"y{i}".encode()) != here)  # fmt: skip
        (mnt / name).mkdir()
        there = layout.group_of_object(os.stat(mnt / name).st_ino)
        assert there != here  # the rename's two parents are on two groups
        os.rename(work / "data", mnt / name / "data")  # a cross-group rename: no EXDEV
        assert not (work / "data").exists()
        assert sorted(os.listdir(mnt / name / "data")) == sorted({r.split("/")[1] for r in data})
        _crcs_equal(mnt / name, data)
        _program_says(work / "build/prog", mnt / name, data)
        os.sync()

        mnt2 = tmp_path / "mnt2"
        mnt2.mkdir()
        bftfs("mount", "--dir", str(home), str(mnt2))
        try:  # nothing cached there: the moved tree as the nodes hold it
            assert not (mnt2 / "andrew/data").exists()
            _crcs_equal(mnt2 / name, data)
            for rel in tree.files:
                if not rel.startswith("data/"):
                    got = (mnt2 / "andrew" / rel).read_bytes()
                    assert zlib.crc32(got) == tree.crcs[rel], rel
            _program_says(mnt2 / "andrew/build/prog", mnt2 / name, data)
        finally:
            bftfs("umount", str(mnt2), "--dir", str(home), check=False)
        status = bftfs("status", "--dir", str(home))
        assert "18/18 nodes up in 3 groups" in status.stdout
    finally:
        bftfs("down", "--dir", str(home), "--force", check=False)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
