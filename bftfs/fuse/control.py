"""Book-keeping of running mounts: pid files, unmounting, waiting for the daemon.

Kept apart from :mod:`bftfs.fuse.mount` (which imports pyfuse3 and the file system) so that
``bftfs down`` and ``bftfs umount`` need neither.

Each running mount leaves ``<cluster>/mounts/<key>.pid`` (pid and mount point) and
``<key>.json``, which the daemon rewrites every :data:`PUBLISH_INTERVAL` seconds: its
options, the faults its clients detected per node, its EIO answers, its metrics address
(``bftfs status`` reads it, :func:`mount_statuses`).  Unmounting is ``fusermount3 -u``,
then waiting for the daemon to send what it held back; a busy mount (open files, or an
operation waiting for unreachable nodes) is refused as umount(8) refuses it, unless the
caller asks to detach it lazily or by force (:func:`unmount`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from bftfs import proc
from bftfs.config import ClusterConfig
from bftfs.fuse.options import DEFAULT_ENTRY_TIMEOUT, DEFAULT_TIMEOUT
from bftfs.local import log_tail

log = logging.getLogger(__name__)

#: Seconds between two rewrites of a daemon's status file (``<key>.json``).
PUBLISH_INTERVAL = 2.0


class MountError(Exception):
    """Mounting or unmounting failed; the message says why."""


class MountBusy(MountError):
    """A clean unmount was refused: something in the mount is in use (umount(8)'s
    "target is busy")."""


def _key(mountpoint: Path) -> str:
    return hashlib.blake2b(str(mountpoint.resolve()).encode(), digest_size=8).hexdigest()


def pid_file(config: ClusterConfig, mountpoint: Path) -> Path:
    return config.home / "mounts" / f"{_key(mountpoint)}.pid"


def log_file(config: ClusterConfig, mountpoint: Path) -> Path:
    return config.home / "mounts" / f"{_key(mountpoint)}.log"


def status_file(config: ClusterConfig, mountpoint: Path) -> Path:
    return config.home / "mounts" / f"{_key(mountpoint)}.json"


def lost_file(config: ClusterConfig, mountpoint: Path) -> Path:
    """Where a mount daemon whose end gave up sending what it held back says how many
    changes were lost (``fs/session.py`` ``write_back_at_end``), for ``bftfs umount``."""
    return config.home / "mounts" / f"{_key(mountpoint)}.lost"


def take_lost(config: ClusterConfig, mountpoint: Path) -> int:
    """How many changes the last daemon of ``mountpoint`` lost at its end (0: none, or
    not said), the note removed: an unmount reports it once."""
    path = lost_file(config, mountpoint)
    try:
        lost = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    path.unlink(missing_ok=True)
    return lost


def mounted_fuse(mountpoint: Path) -> str | None:
    """The file-system type ``mountpoint`` is mounted with (:func:`bftfs.proc.mount_type`)."""
    return proc.mount_type(mountpoint)


def mount_statuses(config: ClusterConfig) -> list[dict[str, Any]]:
    """Every mount this cluster directory knows of, with its state: ``alive`` (the daemon
    runs and the directory is mounted), ``unresponsive`` (it runs but has not rewritten
    its status file for a while), ``dead`` (the daemon is gone; ``mounted`` says whether
    the kernel still holds the mount, which answers "Transport endpoint is not
    connected" until unmounted) or ``starting``; and what the daemon last published."""
    out = []
    now = time.time()
    for pid, mnt in known_mounts(config):
        try:
            published = json.loads(status_file(config, mnt).read_text())
        except (OSError, ValueError):
            published = {}
        if not isinstance(published, dict) or published.get("pid") != pid:
            published = {}
        fstype = mounted_fuse(mnt)
        if not proc.process_alive(pid):
            state = "dead"
        elif fstype is None:
            state = "starting"
        elif now - float(published.get("updated", 0)) > 5 * PUBLISH_INTERVAL:
            state = "unresponsive"
        else:
            state = "alive"
        out.append(
            {
                **published,
                "pid": pid,
                "mountpoint": str(mnt),
                "state": state,
                "mounted": fstype is not None,
            }
        )
    return out


def _unescape(field: str) -> str:
    """A ``/proc/self/mountinfo`` field as written (the kernel writes space, tab, newline
    and backslash as three octal digits)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def bftfs_mounts() -> list[tuple[Path, str]]:
    """(mount point, source) of every ``fuse.bftfs`` mount this process sees, whatever
    cluster it serves.  The source is the daemon's ``fsname``: the resolved path of the
    configuration it was mounted with (``fuse/mount.py``), which :func:`serves` checks."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 2 and tail[0] == "fuse.bftfs":
            out.append((Path(_unescape(fields[4])), _unescape(tail[1])))
    return out


def mount_config(path: str | Path) -> Path | None:
    """The configuration of the ``fuse.bftfs`` mount ``path`` lies under (the innermost),
    from its source in ``/proc/self/mountinfo``, if it names a readable file: a path under
    a mount names its file system, as ``zfs diff`` and ``juicefs`` find the volume from the
    mount (issue 67); None outside every mount."""
    absolute = Path(os.path.abspath(path))
    best: tuple[int, str] | None = None
    for point, source in bftfs_mounts():
        if (absolute == point or point in absolute.parents) and (
            best is None or len(point.parts) > best[0]
        ):
            best = (len(point.parts), source)
    if best is None or not Path(best[1]).is_file():
        return None
    return Path(best[1])


def serves(config: ClusterConfig, source: str) -> bool:
    """Whether a mount whose source is ``source`` serves ``config``'s cluster: the source
    names a configuration sharing a node key with ``config`` (node keys are made fresh for
    each cluster, so two clusters never share one; a copy of the configuration, or one
    older by a node replacement, still does).  A source that is no readable configuration
    (``bftfs``: a daemon started without one) is nobody's."""
    from bftfs import config as cfgmod

    try:
        theirs = cfgmod.load(Path(source))
    except (cfgmod.ConfigError, OSError, ValueError):
        return False
    ours = set(config.node_public_keys().values())
    return any(key in ours for key in theirs.node_public_keys().values())


def cluster_mountpoints(config: ClusterConfig) -> list[Path]:
    """The mount points of ``config``'s cluster on this machine: the ``fuse.bftfs`` mounts
    whose source is a configuration of this cluster (:func:`serves`), and the directories
    of this cluster directory's pid files that nothing else is mounted on now (a daemon
    that died and was unmounted leaves its pid file; its directory is another cluster's
    once that one mounts there).  Never another cluster's mount (issue 60: ``bftfs cat
    OTHER/hello.txt --at now`` answered with this cluster's ``/hello.txt``)."""
    mounted = bftfs_mounts()
    ours: list[Path] = []
    theirs: set[Path] = set()
    verdicts: dict[str, bool] = {}
    for point, source in mounted:
        if source not in verdicts:
            verdicts[source] = serves(config, source)
        if verdicts[source]:
            ours.append(point)
        else:
            theirs.add(point)
    for _pid, point in known_mounts(config):
        if point not in ours and point not in theirs and mounted_fuse(point) is None:
            ours.append(point)
    return ours


def known_mounts(config: ClusterConfig) -> list[tuple[int, Path]]:
    """(pid, mount point) of the daemons this cluster directory knows of."""
    out = []
    for p in sorted((config.home / "mounts").glob("*.pid")):
        try:
            pid_s, path = p.read_text().split("\n", 1)
            out.append((int(pid_s), Path(path.strip())))
        except (OSError, ValueError):
            continue
    return out


#: Seconds a history command waits for one mount to send what it holds back.
WRITE_BACK_WAIT = 60.0


def write_back_mounts(config: ClusterConfig, wait: float = WRITE_BACK_WAIT) -> list[str]:
    """Make this cluster's mounts on this machine send what they hold back (creates,
    removals, held files' writes: ``fs/writeback/``) before a command reads or changes
    the file system's state on the nodes, so that it sees what was done in them (``bftfs
    log`` right after an edit lists the edit).  An ``fsync`` of the mount point does it
    (``fsyncdir``).  Mounts on other machines are not reached: what they hold back
    reaches the nodes within their ``commit`` interval.

    Returns what went wrong, one line per mount (a dead mount, one that did not answer
    within ``wait`` seconds: a stopped daemon must not hang the command)."""
    problems: list[str] = []
    for _pid, mountpoint in known_mounts(config):
        if mounted_fuse(mountpoint) is None:
            continue
        outcome: list[BaseException | None] = []

        def fsync(mp: Path = mountpoint, out: list[BaseException | None] = outcome) -> None:
            try:
                fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                out.append(None)
            except OSError as e:
                out.append(e)

        worker = threading.Thread(target=fsync, daemon=True)
        worker.start()
        worker.join(wait)
        if not outcome:
            problems.append(f"{mountpoint}: no answer within {wait:g} s")
        elif outcome[0] is not None:
            problems.append(f"{mountpoint}: {outcome[0]}")
    return problems


is_mounted = proc.is_mounted


#: Seconds an unmount lets the daemon go without using any CPU before killing it (hung).
#: After the kernel lets go, the daemon still sends what it held back for as long as
#: that delivers (``fs/session.py``: it gives up after ``WRITE_BACK_STALLED`` = 60 s
#: without progress, then takes 5 s each to give back leases and locks), and killing it
#: sooner loses those creates and writes; while it works it is waited for.
DAEMON_IDLE_WAIT = 90.0
#: Seconds after which an unmount still waiting says so (``notice``).
NOTICE_AFTER = 2.0


def unmount(
    mountpoint: Path,
    *,
    pid: int | None = None,
    wait: float = DAEMON_IDLE_WAIT,
    notice: Callable[[int], None] | None = None,
    how: Literal["clean", "lazy", "force"] = "clean",
) -> bool:
    """Unmount ``mountpoint`` and wait for its daemon (``pid``, if known) to exit: only
    then is what it held back on the nodes.  ``notice(pid)`` is called once if that takes
    longer than :data:`NOTICE_AFTER` seconds.  Whether the daemon had to be killed, once it
    used no CPU for ``wait`` seconds (what it still held back is lost; its log names it).

    ``how``: ``clean`` (umount(8)'s way) refuses a busy mount - a file, directory or
    working directory open in it, or an operation waiting in the daemon - with
    :class:`MountBusy`, and nothing changes (issue 60: a lazy detach and a terminated
    daemon lost what an open file had written, and the writer got ENOTCONN).  ``lazy``
    detaches it at once and leaves the daemon serving what is still open until the last
    of it closes; then it sends what it holds back and exits by itself (not waited for).
    ``force`` detaches it and terminates the daemon, which sends what it holds back, but
    whatever the open files had not written yet is lost: for a cluster going away."""
    mountpoint = mountpoint.resolve()
    if how == "lazy":
        why = proc.detach(mountpoint)
        if why is not None:
            raise MountError(f"detaching {mountpoint} failed: {why}")
        return False
    why = proc.unmount(mountpoint, lazy_if_busy=how == "force")
    if why is not None:
        if how == "clean":
            if "busy" in why.lower():
                raise MountBusy(f"{mountpoint}: target is busy ({why})")
            raise MountError(f"unmounting {mountpoint} failed: {why}")
        log.warning("fusermount -u %s: %s; detached lazily", mountpoint, why)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    if pid is None:
        return False
    if notice is not None and wait > NOTICE_AFTER:
        deadline = time.monotonic() + NOTICE_AFTER
        while proc.process_alive(pid) and time.monotonic() < deadline:
            time.sleep(proc.POLL)
        if not proc.process_alive(pid):
            return False
        notice(pid)
        wait -= NOTICE_AFTER
    return proc.wait_gone_unless_idle(pid, wait)


def daemon_serving(mountpoint: Path) -> int | None:
    """The pid of the mount daemon serving ``mountpoint``, found by its command line
    (:func:`daemon_command`).  For ``bftfs umount`` without the cluster's configuration,
    whose pid files it cannot find: without the pid it would return while the daemon
    still sends what it held back, and a laptop shut then loses it."""
    want = [b"-m", b"bftfs", b"mount", os.fsencode(os.path.abspath(mountpoint)), b"--fg"]
    for pid, argv in proc.command_lines():
        starts = (i for i, arg in enumerate(argv) if arg == want[0])
        if any(argv[i : i + len(want)] == want for i in starts) and proc.process_alive(pid):
            return pid
    return None


def daemon_command(
    config_path: Path,
    client: str,
    mountpoint: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    entry_timeout: float = DEFAULT_ENTRY_TIMEOUT,
    log_path: Path,
    debug_modules: Sequence[str] = (),
    debug: bool = False,
    options: str = "",
    at_ns: int | None = None,
) -> list[str]:
    """The command line of a mount daemon in the foreground (``bftfs mount --fg``);
    ``options`` (``-o``, :mod:`bftfs.fuse.options`) apply over the other arguments;
    ``at_ns``: a read-only mount of the tree as it was then."""
    cmd = [
        sys.executable,
        # -P: the working directory stays off sys.path, so a directory named bftfs there
        # (the clone, seen from its parent) cannot stand in for the installed package.
        "-P",
        "-m",
        "bftfs",
        "mount",
        str(mountpoint),
        "--fg",
        "--config",
        str(config_path),
        "--as",
        client,
        "--attr-timeout",
        str(timeout),
        "--entry-timeout",
        str(entry_timeout),
        "--log",
        str(log_path),
    ]
    if options:
        cmd += ["-o", options]
    if debug_modules:
        cmd += ["--debug-modules", *debug_modules]
    if debug:
        cmd.append("--debug")
    if at_ns is not None:
        cmd += ["--at", f"@{at_ns // 10**9}.{at_ns % 10**9:09d}"]
    return cmd


__all__ = [
    "DEFAULT_ENTRY_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MountBusy",
    "MountError",
    "bftfs_mounts",
    "cluster_mountpoints",
    "daemon_command",
    "is_mounted",
    "known_mounts",
    "log_file",
    "log_tail",
    "lost_file",
    "mount_statuses",
    "mounted_fuse",
    "pid_file",
    "serves",
    "status_file",
    "take_lost",
    "unmount",
]
