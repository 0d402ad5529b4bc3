"""The arguments of the history commands (``bftfs log``, ``cat --at``, ``restore``,
``diff``, ``changes``, ``revert``, ``snapshot``, ``mount --at``; issue 17) and the
connection to the past they share.

PATH is a path under a mount of the cluster (``mount/docs/a.txt``; it need not exist any
more) or a path inside the file system: ``fs:/docs/a.txt``, or ``/docs/a.txt`` where
``/docs`` is no directory of this machine (``/etc/passwd`` outside every mount is refused:
it names this machine's file, not the cluster's).

WHEN (``--at``, ``--since``, ``--until``) is one of:

- a time: ``2026-11-23 14:05``, ``2026-11-23T14:05:30`` (local time unless it carries an
  offset), ``@1763900000.123456789`` (seconds since the epoch, to the nanosecond), ``now``;
- an age: ``-10m``, ``-30s``, ``-2h``, ``-1d``, ``-1w``;
- a time in words (English, read by dateparser): ``yesterday 14:00``, ``2 hours ago``,
  ``last monday 9:30``, ``14:00`` (today's, or yesterday's if that is still to come);
- a version id from ``bftfs log`` (hex, at least 4 digits): the moment that version was
  stored;
- a snapshot name (one word that is none of the above: looked up in the cluster).

A WHEN later than now (beyond :data:`CLOCK_SKEW_NS` of clock skew) is refused (exit 2):
the past cannot answer for tomorrow, and the tree as it is now, shown as tomorrow's, would
be a wrong answer that looks right.

Everything but a version id and a snapshot name is read here, before the cluster is asked
anything: text that is no WHEN is refused at once (exit 2).  A time is read once per
command, so ``--from -1h --to -5m`` measure from the same "now"; commands whose window a
user may want to repeat (``revert --dry-run``, ``restore``) print it as ``@SECONDS.NS``,
which names the same moment in every later run.

Times shown are the median of the storing nodes' clocks (not the writing client's), and a
version's client is the authenticated identity the nodes saw (``bftfs/fs/history/past.py``).  A
version fewer than ``2b + 1`` nodes still report has no time a lying node could not have
moved: it is shown as ``unknown`` (``null`` in ``--json``), and a moment it could decide
has no answer (exit 7) rather than a guess (issue 31).
"""

from __future__ import annotations

import datetime
import decimal
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import trio

from bftfs.config import ClusterConfig

_AGE = re.compile(r"^-(\d+(?:\.\d+)?)([smhdw])$")

log = logging.getLogger(__name__)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


_VERSION_ID = re.compile(r"^[0-9a-f]{4,12}$")


#: How far past this machine's clock a WHEN may be before it is refused as a future moment:
#: a few seconds of skew between this machine and another (a time copied from the output
#: of ``bftfs log`` on a machine whose clock runs ahead) is not a mistake.
CLOCK_SKEW_NS = 5 * 10**9


class WhenError(ValueError):
    """Text that is no WHEN, or a moment still to come."""


def parse_when(text: str, now_ns: int | None = None, *, future_ok: bool = False) -> int | str:
    """A moment in ns since the epoch, or a version id or snapshot name (str) to look up.

    Args:
        now_ns: the moment ages and words are counted from (default: the clock now).
        future_ok: accept a moment later than ``now_ns`` (only to ask whether text reads
            as a time at all, as ``snapshot create NAME`` does).

    Raises:
        WhenError: none of the forms in the module docstring, or (unless ``future_ok``) a
            moment more than :data:`CLOCK_SKEW_NS` after ``now_ns``.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    moment = _parse_when(text, now_ns)
    if not future_ok and isinstance(moment, int) and moment > now_ns + CLOCK_SKEW_NS:
        ahead = (moment - now_ns) / 1e9
        raise WhenError(
            f"{text!r} is {_duration(ahead)} in the future ({iso_time(moment)}): the history "
            "holds only the past (a WHEN is a moment up to now)"
        )
    return moment


def _duration(seconds: float) -> str:
    """``3 s``, ``2.5 h``, ``1.0 days``: how far ahead a refused WHEN is."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _parse_when(text: str, now_ns: int) -> int | str:
    """:func:`parse_when` without the check of a future moment."""
    t = text.strip()
    if t == "now":
        return now_ns
    m = _AGE.match(t)
    if m:
        return now_ns - int(float(m.group(1)) * _UNITS[m.group(2)] * 1e9)
    if t.startswith("@"):
        try:
            return int(decimal.Decimal(t[1:]) * 10**9)
        except (decimal.InvalidOperation, ValueError):
            raise WhenError(f"not a time: {text!r}") from None
    if _VERSION_ID.match(t.lower()) and not t.isdigit():
        return t.lower()
    try:
        dt = datetime.datetime.fromisoformat(t)
    except ValueError:
        pass
    else:
        if dt.tzinfo is None:
            dt = dt.astimezone()  # local time
        return _ns(dt)
    words = _in_words(t, now_ns)
    if words is not None:
        return words
    if _could_be_snapshot(t):
        return t  # a snapshot name, looked up later (resolve_moment)
    raise WhenError(
        f"not a time, an age, a version id or a snapshot: {text!r} (e.g. '2026-11-23 14:05', "
        "'yesterday 14:00', '2 hours ago', -10m, @1763900000, an id from bftfs log, or a "
        "snapshot name)"
    )


def _ns(dt: datetime.datetime) -> int:
    """An aware datetime in ns since the epoch, exactly (a float would round)."""
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    delta = dt - epoch
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def _could_be_snapshot(t: str) -> bool:
    """One word that a snapshot could be named (the rule of ``valid_snapshot_name``)."""
    return bool(t) and t.isprintable() and not any(c in t for c in "/ \t") and t[0] not in "-@"


def _in_words(t: str, now_ns: int) -> int | None:
    """A time in English words (``yesterday 14:00``, ``2 hours ago``) counted from
    ``now_ns`` in local time; None: not one.

    dateparser (maintained, widely used) reads them; it is imported only here, as it takes
    ~0.1 s.  Numbers alone (``5``, ``2024``) are not read as dates: they would be guesses
    (the 5th of this month? the year?), and a snapshot may be named so.  A bare month
    means its first day, and a weekday or time of day the latest one not to come yet.
    """
    if t.isdigit() or not any(c.isalpha() or c == ":" for c in t):
        return None
    import dateparser

    base = datetime.datetime.fromtimestamp(now_ns / 1e9)  # naive local, as dateparser wants
    settings = {
        "RELATIVE_BASE": base,
        "PREFER_DATES_FROM": "past",
        "PREFER_DAY_OF_MONTH": "first",
        "RETURN_AS_TIMEZONE_AWARE": True,
        "PARSERS": ["relative-time", "absolute-time"],
    }
    dt = dateparser.parse(t, languages=["en"], settings=settings)
    if dt is None or not _shows_its_clock(t, dt):
        return None
    return _ns(dt)


#: A time of day written in a WHEN: ``14:00``, ``9:30:15``.
_CLOCK = re.compile(r"(?<![\d:])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d:])")


def _shows_its_clock(t: str, dt: datetime.datetime) -> bool:
    """Whether every time of day written in ``t`` is the one ``dt`` has: dateparser skips
    what it cannot read, so ``yesterday 25:00`` would otherwise be yesterday at this hour
    (a time nobody asked for, and a revert's window with it)."""
    for m in _CLOCK.finditer(t):
        if dt.minute != int(m[2]) or dt.hour % 12 != int(m[1]) % 12:
            return False
        if m[3] is not None and dt.second != int(m[3]):
            return False
    return True


def checked_when(text: str) -> str:
    """An argparse ``type`` for WHEN options: ``text`` itself if it is a WHEN, else a usage
    error at once, before the configuration is read or the cluster asked (the command
    parses it again with the one "now" it uses for every option)."""
    import argparse

    try:
        parse_when(text)
    except WhenError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def exact_time(ns: int) -> str:
    """A moment as ``@SECONDS.NANOSECONDS``: what to pass to a later command for the very
    same moment (an age or a word would be counted from that command's own "now")."""
    return f"@{decimal.Decimal(ns).scaleb(-9)}"


#: ``fs:/docs/a.txt``: a path inside the file system, whatever this machine holds.
FS_PREFIX = "fs:"


def fs_path(arg: str, mountpoints: list[Path]) -> str:
    """The path inside the file system that ``arg`` names (see the module docstring).

    An absolute path outside every mount names a path inside the file system only where
    it cannot name this machine's own files: its first component must not exist here
    (``/docs/a.txt``), else it is refused (``/etc/passwd`` is this machine's, and reading
    the history of ``/etc/passwd`` inside the cluster instead would answer a question
    nobody asked).  ``fs:/etc/passwd`` always names the path inside the file system.

    Raises:
        ValueError: a relative path outside every mount of the cluster, or an absolute
            one naming this machine's files.
    """
    if arg.startswith(FS_PREFIX):
        inside = arg[len(FS_PREFIX) :]
        if not inside.startswith("/"):
            raise ValueError(f"{arg}: a path inside the file system starts with / (fs:/docs)")
        return inside
    absolute = Path(os.path.abspath(arg))
    for mp in mountpoints:
        mp = Path(os.path.abspath(mp))
        if absolute == mp or mp in absolute.parents:
            return "/" + str(absolute.relative_to(mp)).removeprefix(".")
    where = ", ".join(str(m) for m in mountpoints) or "none mounted here"
    if arg.startswith("/"):
        top = absolute.parts[1] if len(absolute.parts) > 1 else None
        if top is None or not os.path.lexists(f"/{top}"):
            return arg
        raise ValueError(
            f"{arg}: outside every mount of this cluster (mounts: {where}); it names this "
            f"machine's files. For the path inside the file system write {FS_PREFIX}{arg}"
        )
    raise ValueError(
        f"{arg}: not under a mount of this cluster (mounts: {where}); give the path inside "
        f"the file system as {FS_PREFIX}/PATH (e.g. {FS_PREFIX}/docs/a.txt)"
    )


def mountpoints_of(cfg: ClusterConfig) -> list[Path]:
    """This cluster's mount points on this machine, never another cluster's
    (:func:`bftfs.fuse.control.cluster_mountpoints`): a path under one names a path
    inside this file system."""
    from bftfs.fuse.control import cluster_mountpoints

    return cluster_mountpoints(cfg)


def iso_time(ns: int | None) -> str:
    if ns is None:
        return "unknown"
    dt = datetime.datetime.fromtimestamp(ns / 1e9).astimezone()
    return dt.isoformat(sep=" ", timespec="seconds")


def client_names(cfg: ClusterConfig) -> dict[int, str]:
    """Every client id the cluster had, named (a removed client as ``NAME (removed)``)."""
    return cfg.client_names()


def author_of(client: int, names: dict[int, str]) -> str:
    """A version's client by name; one the configuration no longer names (an entry removed
    by hand, not by ``bftfs client remove``) by its id, ``client#N``."""
    from bftfs.ids import CLIENT_ID_BASE

    return names.get(client) or f"client#{client - CLIENT_ID_BASE}"


def client_ids(cfg: ClusterConfig) -> dict[str, int]:
    """``--client NAME``: a configured client's id, or a removed one's (a revoked key's
    changes are what ``revert --client`` is for); a current client wins a shared name."""
    ids = {r.name: int(r.id) for r in cfg.retired_clients}
    ids.update({c.name: int(c.id) for c in cfg.clients})
    return ids


async def find_history(past: Any, path: str, now_ns: int) -> Any:
    """The history of the object ``path`` names now or, if it is gone, last named."""
    from bftfs.fs.history import NotThen

    try:
        v = await past.resolve(path, now_ns)
        return await past.history(v.oid)
    except NotThen:
        pass
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name:
        raise NotThen(f"{path}: no such file or directory")
    dir_hist = await find_history(past, parent or "/", now_ns)
    from bftfs.fsobjects.dirents import all_entries

    for dv in dir_hist.versions:
        if dv.state is not None and dv.state.get("k") == "d":
            entry = all_entries(dv.state["e"]).get(name.encode())
            if entry is not None:
                return await past.history(int(entry[0]))
    raise NotThen(f"{path}: never existed in the history kept")


async def resolve_moment(past: Any, path: str, when: int | str, now_ns: int) -> int:
    """``when`` as a moment: a snapshot's, or a version id's looked up in ``path``'s
    history."""
    from bftfs.fs.history import PastError

    if isinstance(when, int):
        return when
    snaps = await past.snapshots()
    if when in snaps:
        return int(snaps[when])
    if not _VERSION_ID.match(when.lower()):
        raise WhenError(
            f"not a time, an age, a version id or a snapshot: {when!r} "
            f"(snapshots: {', '.join(sorted(snaps)) or 'none'})"
        )
    hist = await find_history(past, path, now_ns)
    v = hist.by_id(when.lower())
    if v is None:
        raise PastError(f"{path}: no version {when} in its history (see bftfs log {path})")
    if v.time_ns is None:
        raise PastError(
            f"{path}: the time of version {when} is unknown (fewer than 2b+1 nodes still "
            "report it): give a time instead"
        )
    return int(v.time_ns)


def moment_of(cfg: ClusterConfig, client: str, when: int | str) -> int:
    """A WHEN without a path (``bftfs mount --at``): a time, an age or a snapshot name."""
    if isinstance(when, int):
        return when

    async def run(past: Any) -> int:
        snaps = await past.snapshots()
        if when not in snaps:
            raise WhenError(
                f"--at {when}: give a time, an age or a snapshot name (snapshots: "
                f"{', '.join(sorted(snaps)) or 'none'}); a version id names one file's "
                "version: `bftfs log PATH` shows its time"
            )
        return int(snaps[when])

    return int(with_past(cfg, client, run))


def with_past(cfg: ClusterConfig, client: str, fn: Any) -> Any:
    """Run ``await fn(past)`` against the cluster; its result (:func:`run_within`)."""
    from bftfs.cli.reach import require_reachable
    from bftfs.fs.session import open_past

    require_reachable(cfg)

    async def logged(past: Any) -> Any:
        try:
            return await fn(past)
        finally:
            log.info("%s", past.statistics())

    return run_within(lambda: open_past(cfg, client), logged)


def run_within(opening: Any, fn: Any) -> Any:
    """Run ``await fn(opened)`` inside ``async with opening() as opened`` (a client of the
    cluster); its result.  An error ``fn`` raises comes out as itself (not wrapped in the
    exception group of the clients' nurseries)."""

    async def main() -> tuple[bool, Any]:
        async with opening() as opened:
            try:
                return True, await fn(opened)
            except Exception as e:
                return False, e

    ok, got = trio.run(main)
    if not ok:
        raise first_error(got)
    return got


def first_error(e: BaseException) -> BaseException:
    """The error to report of ``e``: ``e`` itself, or of an exception group (the
    concurrent reads and writes of the history commands run in nurseries) the first
    history error it holds (:class:`~bftfs.fs.history.PastError`: exit 7 with its message),
    else its first error.  A group would end the command with a traceback."""
    from bftfs.fs.history import PastError

    if not isinstance(e, BaseExceptionGroup):
        return e
    leaves = [first_error(x) for x in e.exceptions]
    return next((x for x in leaves if isinstance(x, PastError)), leaves[0])


async def range_trees(
    past: Any,
    path: str,
    since: int | str,
    until: int | str | None,
    now_ns: int,
    progress: Any = None,
) -> tuple[int, int, dict[str, Any], dict[str, Any], dict[int, Any]]:
    """The trees at both ends of a range and the histories of every object in them (one
    walk of each object's whole history serves both trees)."""
    lo = await resolve_moment(past, path, since, now_ns)
    hi = now_ns if until is None else await resolve_moment(past, path, until, now_ns)
    before, after = await past.trees(path, [lo, hi], whole=True, progress=progress)
    histories = {}
    for v in [*before.values(), *after.values()]:
        if v.oid not in histories:
            histories[v.oid] = (await past.history(v.oid)).versions
    return lo, hi, before, after, histories
