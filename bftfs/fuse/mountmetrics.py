"""The mount's Prometheus metrics (``-o metrics_port=``) and the held-back work its status
file shows: read in the trio loop at each scrape or status write (``fuse/mount.py``)."""

from __future__ import annotations

from typing import Any

from bftfs.fs.session import Session
from bftfs.fuse.operations import Operations
from bftfs.fuse.options import MountOptions
from bftfs.metrics import Family, metric_word


def held_back(session: Session) -> dict[str, Any]:
    """What directory write-back holds back of creates now (``Outbox.held_back``): how
    many, their bytes, and the age of the oldest in seconds (0: none); and ``changes``,
    every change held back (``Outbox.unsent``: creates, removals, renames, mkdirs, times,
    files with writes not sent), 0 once the servers have everything (what a benchmark
    waits for before it stops the clock, ``benchmarks/postmark.py``)."""
    fs = session.fs
    held = fs.outbox.held_back()
    age = 0.0 if held.oldest_ns is None else max(0.0, (fs.meta.now() - held.oldest_ns) / 1e9)
    return {
        "creates": held.count,
        "bytes": held.bytes,
        "oldest_seconds": round(age, 3),
        "changes": fs.outbox.unsent(),
    }


def _held_back_families(session: Session) -> list[Family]:
    """``bftfs_mount_heldback_*``: the write-back backlog a crash of the mount would lose."""
    held = held_back(session)
    return [
        Family(
            "bftfs_mount_heldback_creates",
            "Creates whose close returned before the servers took them (directory write-back)",
            "gauge",
        ).add(held["creates"]),
        Family(
            "bftfs_mount_heldback_bytes", "Bytes of the files of the held-back creates", "gauge"
        ).add(held["bytes"]),
        Family(
            "bftfs_mount_heldback_oldest_seconds",
            "Age of the oldest held-back create (0: none)",
            "gauge",
        ).add(held["oldest_seconds"]),
        Family(
            "bftfs_mount_heldback_changes",
            "Every change held back: creates, removals, renames, mkdirs, times, unsent writes",
            "gauge",
        ).add(held["changes"]),
    ]


def _qu_client_families(session: Session, taken: str) -> list[Family]:
    """The Q/U client's own counters as families, but the one named ``taken``: the Q/U
    operations, which the by-method family carries (their sum), and one name must not be
    two families (Prometheus refuses it)."""
    out = []
    for name, value in sorted(vars(session.qu.statistics()).items()):
        family = f"bftfs_mount_qu_{metric_word(name)}_total"
        if isinstance(value, int) and family != taken:
            out.append(Family(family, f"Q/U client: {name}", "counter").add(value))
    return out


def _callback_families(ops: Operations) -> list[Family]:
    """Requests our pyfuse3 answers in their C callback, before the handlers (patches 5, 7)."""
    return [
        Family(
            "bftfs_mount_absent_xattr_answers_total",
            "getxattr and listxattr requests answered 'none' before the handlers",
            "counter",
        ).add(ops.attrs.absent.answered()),
        Family(
            "bftfs_mount_fast_dir_answers_total",
            "opendir, readdir and releasedir requests answered without the event loop",
            "counter",
        ).add(ops.dirs.answered()),
    ]


def mount_metrics(session: Session, ops: Operations, options: MountOptions) -> list[Family]:
    """The mount's Prometheus metrics (called in the trio loop at each scrape), named by
    the Prometheus guide: base units in the name, ``_total`` on counters, one meaning per
    family (docs/guide.md, "Health and metrics")."""
    record = ops.record
    requests = Family(
        "bftfs_mount_request_duration_seconds",
        "Seconds the mount took to answer a kernel request, by operation",
        "histogram",
        ("op",),
    )
    for name, histogram in sorted(record.durations.items()):
        requests.add(histogram, name)
    eio = Family("bftfs_mount_eio_total", "EIO answers by operation", "counter", ("op",))
    for name, n in sorted(record.eio.items()):
        eio.add(n, name)
    volume = [
        Family(
            "bftfs_mount_read_bytes_total", "Bytes the kernel's reads were answered", "counter"
        ).add(record.read_bytes),
        Family(
            "bftfs_mount_written_bytes_total", "Bytes the kernel's writes handed over", "counter"
        ).add(record.written_bytes),
        *_callback_families(ops),
    ]
    faults = Family(
        "bftfs_mount_node_faults_total",
        "Faults this mount's clients detected, by node and kind",
        "counter",
        ("node", "kind"),
    )
    for node, kinds in sorted(session.faults().items()):
        for kind, n in sorted(kinds.items()):
            faults.add(n, node, kind)
    fs = session.fs
    methods = Family(
        "bftfs_mount_qu_operations_total", "Q/U operations by method", "counter", ("method",)
    )
    method_seconds = Family(
        "bftfs_mount_qu_operation_seconds_total",
        "Seconds spent in Q/U operations, by method",
        "counter",
        ("method",),
    )
    for name, n in sorted(fs.methods.items()):
        methods.add(n, name)
        method_seconds.add(fs.method_seconds[name], name)
    counters = [
        Family(
            f"bftfs_mount_pasis_{metric_word(name)}_total", f"PASIS client: {name}", "counter"
        ).add(n)
        for name, n in sorted(session.rw.statistics().counters.items())
    ]
    counters += _qu_client_families(session, taken=methods.name)
    leases = fs.meta.leases
    held = Family("bftfs_mount_leases_held", "Objects this mount holds a lease on", "gauge").add(
        0 if leases is None else len(leases.held)
    )
    waiting = Family(
        "bftfs_mount_unavailable", "1 while a hard mount waits for its cluster", "gauge"
    ).add(1 if record.unavailable_since is not None else 0)
    backlog = _held_back_families(session)
    return [
        requests,
        eio,
        *volume,
        faults,
        methods,
        method_seconds,
        *counters,
        held,
        *backlog,
        waiting,
    ]
