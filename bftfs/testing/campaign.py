"""A generated adversary campaign over the file system (issue 18, "Widen the adversary").

Each **schedule** is drawn from one seed: the thresholds (``t = b = 1`` on six nodes, or
``t = 2, b = 1`` on nine), which ``b`` nodes are Byzantine (any placement: the preferred
quorum of the root directory included, as every file operation touches the root here), and
which ``t - b`` further nodes may crash.  Every Byzantine node runs
:class:`~bftfs.testing.byzantine.switching.Switching`: for *each request* it draws a new
behaviour from the whole Q/U and PASIS catalogue (forged candidates under stale and valid
authenticators, equivocation, withheld replies, older histories, corrupt fragments, huge
times, acknowledged-but-dropped writes, garbage, delays, and the history lies: versions
dated 1970 or ten years ahead, forged digests, empty chains, altered states).  Faulty
nodes are also armed, at
random rounds, to crash inside their ``k``-th next request (in the middle of whatever
operation sent it) and are restarted a few rounds later; never more than ``t`` nodes are
faulty.

Two or three clients run the real :class:`~bftfs.fs.FileSystem` (the one the FUSE daemon
runs, without a kernel, as the tier-3 tests do) in **rounds**: each round, some clients run
one operation each, concurrently, on disjoint names of the root directory - create/write,
``pwrite``, append, truncate, rename (over files too), unlink, mkdir, rmdir, read, stat -
so every operation has exactly one right answer under close-to-open semantics (the model of
:mod:`bftfs.testing.consistency`, without the kernel-cache allowances, which a file system
without a kernel does not have).  Every read and stat is compared with the model byte for
byte; at the end every client reads every name.  **History reads** (issue 31) ask what a
name held at a moment taken between two earlier rounds (:class:`~bftfs.fs.history.Past`, as
``bftfs cat --at`` does): the answer must be the model's at that moment, byte for byte, or
no answer (:class:`~bftfs.fs.history.Undecided`: a time too few nodes vouch for) - never
other contents, and never a file before it was made; at the end every name is asked at the
moment before the first round and at the last one.  Every operation must complete (at most
``t`` faulty nodes) within :data:`DEADLINE` seconds of trio's clock: a hang, an EIO or any
other error is a finding.  The Q/U and PASIS histories the file system made are recorded under
it and checked for linearizability (:mod:`bftfs.testing.recording`).

``python -m bftfs.testing.campaign --seed S --schedules K --ops N`` runs schedules ``S`` to
``S + K - 1`` and prints what it ran and found; a schedule that fails prints its seed, its
schedule, the last operations and its replay line (the schedule, placement, operations and
per-request lies are functions of the seed; the interleaving of concurrent requests over
real sockets is not: a replay is the same adversary, not always the same run; a hung step
also shows its tasks' stacks).  ``--workers W`` runs the schedules on ``W`` spawned
processes (``campaign_workers.py``); the report is the same, added up in seed order.

**It can fail.**  Checked by hand, seed 1, 40 operations: with ``b + 1`` Byzantine nodes
the first schedule reports no answer within :data:`DEADLINE` seconds (the root's Q/U object
was never established).  Disabling the readers' per-fragment check is *not* enough: the
regeneration check against the cross checksum still rejects a corrupt candidate.

Modules: this one runs schedules (clusters, clients, faults, rounds, the linearizability
check, the report); the model and the planner of each round's operations are
``campaign_model.py``; running one operation and checking its answer is ``campaign_steps.py``;
running schedules on worker processes, with what they log carried back, is
``campaign_workers.py``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import trio

from bftfs.config import default_sizes
from bftfs.fs.errors import FsError
from bftfs.fs.filesystem import FileSystem, open_file_system
from bftfs.fs.history import Past
from bftfs.qu.classify import QUThresholds
from bftfs.qu.client import QUClient
from bftfs.qu.pastread import PastReader
from bftfs.rw.client import open_rw_client
from bftfs.testing.byzantine.switching import Switching
from bftfs.testing.campaign_model import Finding, Planner, Step
from bftfs.testing.campaign_stacks import watched
from bftfs.testing.campaign_steps import check_name, check_past, run_step
from bftfs.testing.campaign_workers import Carried, default_workers, in_workers, recent_info
from bftfs.testing.cluster import Cluster, open_cluster, qu_client
from bftfs.testing.consistency import NAMES, TRACE, Inconsistent
from bftfs.testing.recording import (
    Checked,
    QUOp,
    RecordingQU,
    RecordingRW,
    RWLog,
    check_blocks,
    check_objects,
)

#: Seconds (trio's clock) any one operation may take with at most ``t`` faulty nodes.
DEADLINE = 60.0
#: Block size of the campaign's clusters: files of the sizes drawn span several blocks.
BLOCK_SIZE = 16 * 1024
#: Thresholds a schedule draws from (``t``, ``b``); the slow run adds ``(2, 1)``.
FAST_THRESHOLDS = ((1, 1),)
SLOW_THRESHOLDS = ((1, 1), (2, 1))
#: Chance per round that a faulty node (none down) is armed to crash.
CRASH_CHANCE = 0.15
#: PASIS client options: probe other nodes quickly, give up within seconds.
RW_OPTIONS: dict[str, Any] = {"probe_after": 0.05, "timeout": 5.0}


@dataclass(frozen=True)
class Schedule:
    """Everything one seed decides before the run."""

    seed: int
    ops: int
    t: int
    b: int
    n: int
    clients: int
    byzantine: tuple[int, ...]
    #: Honest nodes that may crash (the ``t - b`` benign faults).
    crashy: tuple[int, ...]
    #: The clients' lease term in seconds (0: no leases; ``fs/leases.py``).
    lease_term: float = 0.0
    slow: bool = False  # drawn from SLOW_THRESHOLDS: the replay needs --slow

    @classmethod
    def draw(
        cls,
        seed: int,
        ops: int,
        thresholds: tuple[tuple[int, int], ...] = FAST_THRESHOLDS,
        lease_term: float = 0.0,
    ) -> Schedule:
        rng = random.Random(seed)
        t, b = thresholds[rng.randrange(len(thresholds))]
        n = default_sizes(t, b)[0]
        faulty = rng.sample(range(n), t)
        return cls(
            seed=seed,
            ops=ops,
            t=t,
            b=b,
            n=n,
            clients=rng.choice((2, 3)),
            byzantine=tuple(sorted(faulty[:b])),
            crashy=tuple(sorted(faulty[b:])),
            lease_term=lease_term,
            slow=thresholds == SLOW_THRESHOLDS,
        )

    def text(self) -> str:
        crashy = ", crash-prone honest " + str(list(self.crashy)) if self.crashy else ""
        leases = f", leases of {self.lease_term:g} s" if self.lease_term else ""
        option = f" --lease {self.lease_term:g}" if self.lease_term else ""
        return (
            f"schedule seed {self.seed}: t={self.t} b={self.b} n={self.n}, "
            f"{self.clients} clients, {self.ops} operations{leases}, "
            f"Byzantine {list(self.byzantine)}{crashy} (replay: python -m "
            f"bftfs.testing.campaign --seed {self.seed} --schedules 1 --ops {self.ops}{option}"
            f"{' --slow' * self.slow})"
        )


@dataclass
class Report:
    """What a campaign ran and found."""

    schedules: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    rounds: int = 0
    behaviours: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    qu_ops: int = 0
    qu_objects: int = 0
    rw_ops: int = 0
    rw_blocks: int = 0
    #: What the clients' leases did (``Leases.stats``: taken, hits, recalled, ...).
    leases: Counter[str] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def text(self) -> str:
        lies = sum(v for k, v in self.behaviours.items() if not k.endswith(":honest"))
        kinds: Counter[str] = Counter()
        for k, v in self.behaviours.items():
            kinds[k.split(":", 1)[1]] += v
        top = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        return (
            f"{self.schedules} schedules, {sum(self.ops.values())} file-system operations in "
            f"{self.rounds} rounds, {self.seconds:.1f} s: {ops}\n"
            f"Byzantine requests: {sum(self.behaviours.values())} ({lies} lies): {top}\n"
            f"crashes inside a request: {self.crashes}\n"
            f"linearizability: {self.qu_ops} Q/U operations on {self.qu_objects} objects, "
            f"{self.rw_ops} PASIS block operations on {self.rw_blocks} blocks\n"
            + (
                "leases: " + ", ".join(f"{k} {v}" for k, v in sorted(self.leases.items())) + "\n"
                if self.leases
                else ""
            )
            + f"findings: {len(self.findings)}"
            + "".join("\n--- " + f for f in self.findings)
        )


# One schedule --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One schedule's contribution to the report."""

    ops: Counter[str] = field(default_factory=Counter)
    rounds: int = 0
    behaviours: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    leases: Counter[str] = field(default_factory=Counter)
    qu: list[QUOp] = field(default_factory=list)
    rw: RWLog = field(default_factory=RWLog)
    trace: list[str] = field(default_factory=list)
    checked: dict[str, Checked] = field(default_factory=dict)
    #: When the schedule started (trio's clock): trace lines say seconds since.
    started: float | None = None

    def note(self, line: str) -> None:
        """Add ``line`` to the trace (the last :data:`TRACE` lines are kept)."""
        now = trio.current_time()
        if self.started is None:
            self.started = now
        self.trace.append(f"{now - self.started:7.2f} s  {line}")
        del self.trace[:-TRACE]

    #: Seconds each operation took, with its description (the slowest go in the report).
    durations: list[tuple[float, str]] = field(default_factory=list)


def _fail(what: str) -> Finding:
    return Finding(what)


async def _run(home: Path, sched: Schedule, out: Outcome) -> None:
    # Two streams: the operations' plan must not depend on when an armed crash lands
    # (that depends on the sockets' interleaving), or one seed runs different operations
    # from run to run (measured for seed 2: 45 to 47 operations in 17 to 19 rounds).
    rng = random.Random(sched.seed ^ 0xCA3)
    fault_rng = random.Random(sched.seed ^ 0xFA17)
    out.note("starting the cluster")
    async with (
        open_cluster(
            home, t=sched.t, b=sched.b, clients=sched.clients, seed=sched.seed,
            block_size=BLOCK_SIZE,
        ) as cluster,
        AsyncExitStack() as stack,
    ):  # fmt: skip
        faulty: dict[int, Switching] = {}
        for i in sched.byzantine + sched.crashy:
            faulty[i] = Switching(cluster, i, sched.seed, byzantine=i in sched.byzantine)
            faulty[i].install()
        fss, pasts = await _open_clients(cluster, sched, out, stack)
        out.note(f"{sched.clients} file systems opened")
        planner = Planner(rng, sched.clients)
        moments = [time.time_ns()]  # the node clocks' time between rounds (planner.past)
        await _rounds(cluster, faulty, fault_rng, sched, out, planner, fss, pasts, moments)
        await _final_reads(cluster, faulty, out, planner, fss, pasts, moments)


async def _open_clients(
    cluster: Cluster, sched: Schedule, out: Outcome, stack: AsyncExitStack
) -> tuple[list[FileSystem], list[Past]]:
    """Each client's file system (over recording Q/U and PASIS clients) and history
    reader, closed with ``stack``."""
    clock = [1_700_000_000_000_000_000]

    def clock_ns() -> int:  # deterministic, strictly increasing file times
        clock[0] += 1_000_000
        return clock[0]

    fss: list[FileSystem] = []
    pasts: list[Past] = []
    th = QUThresholds.from_config(cluster.config)
    for k in range(sched.clients):
        rw = await stack.enter_async_context(
            open_rw_client(cluster.client(k), cluster.config, **RW_OPTIONS)
        )
        qu = RecordingQU(qu_client(cluster, k, sched.seed), trio.current_time, out.qu)
        # History reads: the recorded Q/U client (its fs.peek queries are real reads),
        # the PASIS client unrecorded (a read of the past is no read of the present).
        reader = PastReader(cluster.client(k), th)
        pasts.append(Past(cast(QUClient, qu), reader, rw, BLOCK_SIZE))
        # (Not under a deadline: the file system's nursery, entered here, outlives this block;
        # a cancel scope around entering it would be exited while the nursery is still open.)
        fss.append(
            await stack.enter_async_context(
                open_file_system(
                    cast(QUClient, qu),
                    cast(Any, RecordingRW(rw, trio.current_time, out.rw, k)),
                    cluster.config,
                    clock_ns=clock_ns,
                    rng=random.Random(sched.seed * 1000 + k),
                    attr_ttl=0.0,
                    lease_term=sched.lease_term,
                    # With leases, creates are written behind and, in a directory
                    # held exclusively, back (fs/writeback/).
                    write_behind=sched.lease_term > 0,
                    commit=5.0 if sched.lease_term > 0 else 0.0,
                )
            )
        )
        if fss[-1].meta.leases is not None:  # recalls are pushed on the client's links
            fss[-1].meta.leases.listen(cluster.client(k), cluster.config.node_ids)
    return fss, pasts


async def _rounds(
    cluster: Cluster,
    faulty: dict[int, Switching],
    rng: random.Random,
    sched: Schedule,
    out: Outcome,
    planner: Planner,
    fss: list[FileSystem],
    pasts: list[Past],
    moments: list[int],
) -> None:
    """The schedule's rounds until ``sched.ops`` operations ran: faults, then each
    round's operations concurrently, each checked against the model."""
    down_since: dict[int, int] = {}
    done = 0
    while done < sched.ops:
        r = out.rounds
        out.rounds += 1
        await _faults(cluster, faulty, rng, r, down_since, out)
        steps = planner.round()
        for s in steps:
            out.note(f"round {r}: {s.text()}")

        async def one(s: Step, r: int) -> None:
            try:
                t0 = trio.current_time()
                async with _named_hang(s, f"round {r}"):
                    got = await run_step(fss[s.client], s, _fail, pasts[s.client], moments)
                if got is not None:
                    out.ops[f"history {got}"] += 1
                out.durations.append((trio.current_time() - t0, f"round {r}: {s.text()}"))
            except FsError as e:
                raise _fail(f"{s.text()}: {type(e).__name__} (errno {e.errno}): {e}") from e

        async with trio.open_nursery() as nursery:
            for s in steps:
                nursery.start_soon(one, s, r)
        moments.append(time.time_ns())
        planner.apply(steps)
        out.ops.update(s.kind for s in steps)
        done += len(steps)


def _named_hang(s: Step, where: str) -> AbstractAsyncContextManager[None]:
    """:data:`DEADLINE` for a final step; past it, a finding naming it and its stacks."""
    what = f"{where} {s.text()}: no answer within {DEADLINE} s (a hang); it waited in:"
    return watched(DEADLINE, lambda stacks: _fail("\n  ".join([what, *stacks])))


async def _final_reads(
    cluster: Cluster,
    faulty: dict[int, Switching],
    out: Outcome,
    planner: Planner,
    fss: list[FileSystem],
    pasts: list[Past],
    moments: list[int],
) -> None:
    """Everything back up, then every client reads every name and every name is read at
    the first and the last moment; what the leases and faulty nodes did goes to ``out``."""
    for sw in faulty.values():
        sw.disarm()
    for i in sorted(cluster.crashed):
        await cluster.recover(i)
        out.note(f"end: node {i} restarted")
    out.note("final reads")
    for k in range(len(fss)):
        for name in NAMES:
            s = Step(k, "read", name, {}, expect=planner.model.get(name))
            async with _named_hang(s, "final"):
                await check_name(fss[k], s, _fail)
            out.ops["final read"] += 1
    # Every name before the first round (nothing existed) and after the last.
    for j in (0, len(moments) - 1):
        for name in NAMES:
            s = Step(0, "history", name, {}, expect=planner.past[j].get(name), offset=j)
            async with _named_hang(s, "final"):
                got = await check_past(pasts[0], s, moments[j], _fail)
            out.ops[f"final history {got}"] += 1
    out.note("stopping the cluster")
    for fs in fss:
        if fs.meta.leases is not None:
            out.leases.update(fs.meta.leases.stats)
    for sw in faulty.values():
        out.behaviours.update(sw.drawn)
        out.crashes += sw.crashes


async def _faults(
    cluster: Cluster,
    faulty: dict[int, Switching],
    rng: random.Random,
    r: int,
    down_since: dict[int, int],
    out: Outcome,
) -> None:
    """Restart nodes down for a few rounds; now and then arm a faulty node to crash.

    ``rng`` is the faults' own stream, drawn from the same number of times every round
    whatever the nodes' state, so each round's draw is the seed's alone."""
    for i in sorted(cluster.crashed):
        down_since.setdefault(i, r)
        if r - down_since[i] >= 2:
            await cluster.recover(i)
            del down_since[i]
            out.note(f"round {r}: node {i} restarted")
    roll, pick, after = rng.random(), rng.randrange(max(len(faulty), 1)), rng.randint(1, 40)
    if faulty and not cluster.crashed and roll < CRASH_CHANCE:
        i = sorted(faulty)[pick]
        faulty[i].arm_crash(after)
        out.note(f"round {r}: node {i} armed to crash in its request {after} from now")


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


def _describe(e: BaseException) -> str:
    """What went wrong, without the nurseries' exception groups around it: the findings
    first, then anything else (a hang while opening the file system is a ``TooSlowError``)."""
    leaves = sorted(_leaves(e), key=lambda x: not isinstance(x, Finding))
    parts = []
    for leaf in leaves:
        if isinstance(leaf, Finding | Inconsistent):
            parts.append(str(leaf))
        elif isinstance(leaf, trio.TooSlowError):
            parts.append(f"no answer within {DEADLINE} s (a hang) outside the rounds")
        else:
            parts.append(f"unexpected {type(leaf).__name__}: {leaf}")
    return "\n".join(parts)


def run_schedule(home: Path, sched: Schedule) -> Outcome:
    """Run one schedule in ``home`` and check its histories.

    Raises:
        Finding: anything wrong, with the schedule, the last operations and how to replay.
    """
    out = Outcome()

    def finding(what: str) -> Finding:
        trace = "\n  ".join(out.trace)
        return Finding(f"{sched.text()}\n{what}\nlast operations and faults:\n  {trace}")

    try:
        trio.run(_run, home, sched, out)
    except Exception as e:
        raise finding(_describe(e)) from e
    out.checked = {"Q/U": check_objects(out.qu), "PASIS": check_blocks(out.rw)}
    for name, checked in out.checked.items():
        if not checked.verdict:
            raise finding(f"{name} history not linearizable: {checked.verdict.reason}")
    return out


@dataclass
class Counts:
    """What one schedule adds to the report (picklable and small: no histories)."""

    ops: Counter[str]
    rounds: int
    behaviours: Counter[str]
    crashes: int
    leases: Counter[str]
    qu_ops: int
    qu_objects: int
    rw_ops: int
    rw_blocks: int

    def add_to(self, report: Report) -> None:
        report.ops.update(self.ops)
        report.rounds += self.rounds
        report.behaviours.update(self.behaviours)
        report.crashes += self.crashes
        report.leases.update(self.leases)
        report.qu_ops += self.qu_ops
        report.qu_objects += self.qu_objects
        report.rw_ops += self.rw_ops
        report.rw_blocks += self.rw_blocks


def count_schedule(home: Path, sched: Schedule) -> Counts | str:
    """Run one schedule: its counts, or its finding's text (with the replay line and the
    protocol's last INFO records, ``campaign_workers.recent_info``)."""
    with recent_info() as recent:
        try:
            out = run_schedule(home, sched)
        except Finding as e:
            return "\n  ".join([str(e), "last protocol records:", *recent()])
    qu, rw = out.checked["Q/U"], out.checked["PASIS"]
    return Counts(
        out.ops, out.rounds, out.behaviours, out.crashes, out.leases,
        qu.operations, qu.registers, rw.operations, rw.registers,
    )  # fmt: skip


def campaign(
    home: Path,
    *,
    seed: int,
    schedules: int,
    ops: int,
    thresholds: tuple[tuple[int, int], ...] = FAST_THRESHOLDS,
    stop_at_first: bool = True,
    lease_term: float = 0.0,
    workers: int | None = None,
) -> Report:
    """Schedules ``seed`` .. ``seed + schedules - 1`` of ``ops`` operations each; with
    ``lease_term``, the clients take shared leases of that term (``fs/leases.py``).

    ``workers`` processes run the schedules (default: ``$BFTFS_TEST_WORKERS``, else 1: in
    this process); the report is the serial run's whatever their number: counts added in
    seed order, each finding with its schedule's replay line.  With ``stop_at_first`` the
    report ends at the lowest-seeded finding, as a serial run's does: schedules above it
    that a worker had already started are stopped and left out of it (their findings too).
    """
    workers = default_workers(1) if workers is None else workers
    report = Report()
    start = time.monotonic()
    scheds = [Schedule.draw(s, ops, thresholds, lease_term) for s in range(seed, seed + schedules)]
    jobs = [(home / f"schedule{sched.seed}", sched) for sched in scheds]
    if workers <= 1:
        results: Iterator[Counts | str] = (count_schedule(*job) for job in jobs)
        _merge(report, results, stop_at_first)
    else:
        with in_workers(count_schedule, jobs, workers) as futures:
            _merge(report, _replayed(scheds, futures), stop_at_first)
    report.seconds = time.monotonic() - start
    return report


def _replayed(
    scheds: list[Schedule], futures: Iterator[Future[Carried[Counts | str]]]
) -> Iterator[Counts | str]:
    """The workers' results in seed order, their logs re-emitted here; a schedule whose
    worker failed (an exception other than a finding, a dead process) raises, named."""
    for sched, future in zip(scheds, futures, strict=True):
        try:
            carried = future.result()
        except Exception as e:
            raise RuntimeError(f"{sched.text()}: its worker failed: {e!r}") from e
        yield carried.replay()


def _merge(report: Report, results: Iterator[Counts | str], stop_at_first: bool) -> None:
    """Add the schedules' results, in seed order, to ``report``."""
    for result in results:
        report.schedules += 1
        if isinstance(result, str):
            report.findings.append(result)
            if stop_at_first:
                return
        else:
            result.add_to(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="first schedule's seed")
    parser.add_argument("--schedules", type=int, default=4)
    parser.add_argument("--ops", type=int, default=40, help="operations per schedule")
    parser.add_argument("--slow", action="store_true", help="also draw t=2, b=1 on nine nodes")
    parser.add_argument("--keep-going", action="store_true", help="run on after a finding")
    parser.add_argument("--lease", type=float, default=0.0, help="clients' lease term, s")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes running schedules (default 1)"
    )
    args = parser.parse_args(argv)
    thresholds = SLOW_THRESHOLDS if args.slow else FAST_THRESHOLDS
    with tempfile.TemporaryDirectory() as tmp:
        report = campaign(
            Path(tmp),
            seed=args.seed,
            schedules=args.schedules,
            ops=args.ops,
            thresholds=thresholds,
            stop_at_first=not args.keep_going,
            lease_term=args.lease,
            workers=args.workers,
        )
    print(report.text())
    return 1 if report.findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
