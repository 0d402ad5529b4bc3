"""What a FaB checkpoint costs as the state grows: CPU and bytes written to the store.

A FaB node checkpoints every 16 slots (``fab/checkpoints.py``): it computes the digest of
its state, and at each stable checkpoint writes that state to its store
(``fab/durable.py``).  This measures both for a state of ``N`` objects of ``--size`` bytes
(``kv`` objects of ``bftfs.testing.testobjects``) after ``k`` of them changed:

- *before*: the format before chunks, the whole state in one canonical blob and its
  digest (``Execution.snapshot`` and ``digest_of``, the code checkpoints ran), written
  whole (``[seq, blob]`` under ``s``);
- *after*: ``Execution.image`` (re-encodes the buckets of changed objects and the head,
  then the manifest's digest) and the pieces ``Durable`` writes (those the store lacks,
  plus the manifest).

CPU is ``time.process_time`` of one checkpoint, the median of ``--repeat`` runs, each
after ``k`` fresh changes.  Pure, in one process: no network, no LMDB (bytes are counted).

Usage::

    .venv/bin/python benchmarks/fab_state.py --objects 1000 10000 50000 --changed 1 100
"""

from __future__ import annotations

import argparse
import statistics
import time

from bftfs.fab import durable
from bftfs.fab.execution import Execution, digest_of, operation, request_value
from bftfs.fab.replica import Replica
from bftfs.fab.statetransfer import StateTransfer
from bftfs.qu.canon import canonical
from bftfs.quorums.fab import FabQuorums
from bftfs.testing.testobjects import registry

CLIENT = 1000


def _put(ex: Execution, oid: int, value: bytes) -> None:
    op = operation(CLIENT, ex.executed + 1, "kv.put", [oid], ["k", value])
    ex.apply(ex.executed + 1, request_value(op, []))


def measure(objects: int, changed: int, size: int, repeat: int) -> dict[str, float]:
    """Median CPU seconds and bytes written of one checkpoint, before and after."""
    ex = Execution(registry())
    for oid in range(1, objects + 1):
        _put(ex, oid, bytes([oid % 251]) * size)
    r = Replica(0, FabQuorums.standard(1), lambda p: b"k" * 32, registry())
    r.execution = ex
    r.transfer = StateTransfer(0, 6, r.checkpoints, ex, lambda to, m: None)
    changes = durable.Durable(r)
    r.checkpoints.stable = ex.executed
    r.transfer.keep(ex.executed, ex.image())
    changes.changes()  # the first write: everything
    before_cpu, after_cpu, before_bytes, after_bytes = [], [], [], []
    for k in range(repeat):
        for j in range(changed):
            _put(ex, 1 + (k * 7919 + j * 104729) % objects, (b"changed %d " % k).ljust(size, b"."))
        t = time.process_time()
        blob = ex.snapshot()
        digest_of(blob)
        before_cpu.append(time.process_time() - t)
        before_bytes.append(len(canonical([ex.executed, blob])))
        t = time.process_time()
        image = ex.image()
        after_cpu.append(time.process_time() - t)
        written = changes.state_bytes
        r.checkpoints.stable = ex.executed
        r.transfer.keep(ex.executed, image)
        changes.changes()
        after_bytes.append(changes.state_bytes - written)
    return {
        "before_ms": 1000 * statistics.median(before_cpu),
        "after_ms": 1000 * statistics.median(after_cpu),
        "before_bytes": statistics.median(before_bytes),
        "after_bytes": statistics.median(after_bytes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--changed", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--size", type=int, default=1000, help="bytes per object")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(
        "| N objects | k changed | CPU before (ms) | CPU after (ms) | bytes before | bytes after |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.objects:
        for k in args.changed:
            m = measure(n, k, args.size, args.repeat)
            print(
                f"| {n} | {k} | {m['before_ms']:.1f} | {m['after_ms']:.2f} "
                f"| {m['before_bytes']:,.0f} | {m['after_bytes']:,.0f} |"
            )


if __name__ == "__main__":
    main()
