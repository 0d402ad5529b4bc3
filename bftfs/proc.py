"""Processes and FUSE mounts, in one place: spawning a daemon, waiting for its mount,
unmounting (lazily when busy), stopping a process by pid, and pid files that survive pid
reuse.  Node processes (``local.py``), mount daemons (``fuse/``), the test harness
(``testing/``) and the benchmarks all use these; each used to have its own copy.

Only the standard library: the benchmarks import this for bindfs without importing bftfs'
protocol code.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

#: Children this process started (``spawn``): reaped when they exit, so a dead child is
#: never mistaken for a running one (a zombie keeps its pid).
_children: dict[int, subprocess.Popen[bytes]] = {}

#: How often the waits below look again (seconds).
POLL = 0.02

#: glibc's ``mallopt`` parameters (malloc.h) and the sizes :func:`keep_big_buffers` sets.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024


def keep_big_buffers() -> bool:
    """Let a server process reuse the memory of its big buffers instead of mapping fresh
    pages for each (glibc only; whether it was set).

    Frames, decrypted bodies and fragments of 0.1-6 MB are allocated and freed by the
    thousand while a big file streams.  glibc maps an allocation above its mmap threshold
    with pages of its own and unmaps it when freed, and gives the heap's free top back
    above its trim threshold, so each such buffer cost a page fault and a zeroed page per
    4 KiB: 6-7% of a node's CPU and 5% of the mount daemon's (perf, issue 34).  With both
    thresholds fixed above the biggest frame, freed buffers stay in the heap for the next
    ones; the peak memory is the same, it is only returned to the system later."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


class ProcessError(RuntimeError):
    """A process exited or did not get ready in time (the message says which)."""


def spawn(cmd: Sequence[str], *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a session of its own (a terminal's signals do not reach it), with
    no stdin, stdout and stderr appended to ``log`` (discarded without one)."""
    if log is None:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    else:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
    _children[proc.pid] = proc
    return proc


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (reaping it if it is our child; a zombie counts as gone once
    all its threads have exited)."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our child from elsewhere (the test harness)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    if not fields:
        return False
    if fields[0] != b"Z":
        return True
    # A zombie leader whose other threads are still exiting: until the last one has, the
    # process holds its files (a FUSE daemon's connection answers on; t4_operators).
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def reap_exited() -> None:
    """Collect children that exited on their own."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            del _children[pid]


def stop(pid: int, *, kill: bool = False, timeout: float = 10.0) -> None:
    """Stop ``pid``: SIGTERM (SIGKILL with ``kill``), SIGKILL after ``timeout`` seconds,
    and wait until it is gone."""
    if pid <= 0:  # kill(2) would signal a process group, or every process we may
        raise ValueError(f"not a process id: {pid}")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    wait_gone(pid, timeout)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits; SIGKILL it after ``timeout`` seconds.  Whether it had to
    be killed."""
    deadline = time.monotonic() + timeout
    killed = False
    while process_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed = True
            deadline = time.monotonic() + 5
        time.sleep(POLL)
    return killed


def wait_gone_unless_idle(pid: int, idle: float) -> bool:
    """Wait until ``pid`` exits for as long as it works: SIGKILL it only once it used no
    CPU for ``idle`` seconds (hung).  Whether it had to be killed.  For a mount daemon
    sending what it held back to a slow cluster, which ends by itself (``fs/session.py``
    gives up after a stall): a fixed deadline killed it while it still delivered."""
    ticks = cpu_ticks(pid)
    deadline = time.monotonic() + idle
    while process_alive(pid):
        now = cpu_ticks(pid)
        if now != ticks:
            ticks, deadline = now, time.monotonic() + idle
        elif time.monotonic() > deadline:
            return wait_gone(pid, 0)
        time.sleep(POLL)
    return False


def cpu_ticks(pid: int) -> int | None:
    """CPU time process ``pid`` used so far (user + system clock ticks, ``/proc/PID/stat``
    fields 14 and 15), or None if it does not run."""
    fields = _stat_fields(pid)
    try:
        return None if fields is None else int(fields[11]) + int(fields[12])
    except (ValueError, IndexError):
        return None


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 first: a name may
    hold spaces and parentheses), or None if the process does not run."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return stat[stat.rindex(b")") + 2 :].split()
    except (OSError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/PID/stat`` field 22),
    or None if it does not run: with the pid, it names one process for good."""
    fields = _stat_fields(pid)
    try:
        return None if fields is None else int(fields[19])
    except (ValueError, IndexError):
        return None


def write_pid(path: Path, pid: int) -> None:
    """Pid file ``path`` for ``pid``, with the process's start time (:func:`read_pid`)."""
    ticks = start_ticks(pid)
    path.write_text(f"{pid}\n" + (f"start {ticks}\n" if ticks is not None else ""))


def read_pid(path: Path, *, marks: Sequence[bytes]) -> int | None:
    """The pid in pid file ``path`` if that process runs and its command line contains
    every one of ``marks`` (a recycled pid belongs to some other program), else None.

    A file :func:`write_pid` wrote also names the process's start time, which must match:
    pids are recycled within minutes where ``pid_max`` is 32768, and a process of the same
    program (another cluster's node: the marks match) may hold the pid of one that died
    with its pid file in place (a power cut): taken for it, `bftfs up` did not start the
    node and `bftfs down` stopped the other cluster's (issue 60 item 8)."""
    try:
        lines = path.read_text().split("\n")
        pid = int(lines[0].strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not all(m in cmdline for m in marks) or not process_alive(pid):
        return None
    started = [
        ln.split()[1] for ln in lines[1:] if ln.startswith("start ") and len(ln.split()) == 2
    ]
    if started and started[0] != str(start_ticks(pid)):
        return None  # the pid was recycled
    return pid


# FUSE mounts -------------------------------------------------------------------------------


def fusermount() -> str:
    """The fusermount program (fuse3's, else fuse2's)."""
    return shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"


def mount_type(mountpoint: Path) -> str | None:
    """The file-system type ``mountpoint`` is mounted with, from ``/proc/self/mountinfo``
    (None if it is no mount point).  Reads no file of the mount, so it neither hangs on a
    daemon waiting for its cluster nor misses a dead daemon's mount (``os.path.ismount``
    says False for one: its stat fails with ENOTCONN)."""
    target = os.path.abspath(mountpoint)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == target:
            found = right.split()[0] if right else "?"  # the last mount on it wins
    return found


def is_mounted(mountpoint: Path) -> bool:
    """Whether ``mountpoint`` is a mount point (a dead daemon's mount included)."""
    return mount_type(mountpoint) is not None


def is_dead_mount(mountpoint: Path) -> bool:
    """Whether ``mountpoint`` is a FUSE mount whose daemon is gone ("Transport endpoint is
    not connected"): it must be unmounted before anything can use the directory."""
    kind = mount_type(mountpoint)
    if kind is None or not kind.startswith("fuse"):
        return False
    try:
        # statfs always reaches the daemon (a stat may be answered from the kernel's
        # attribute cache for a while after the daemon died).
        os.statvfs(mountpoint)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def unmount(mountpoint: Path, *, lazy_if_busy: bool = True) -> str | None:
    """Unmount a FUSE mount; if that fails (busy) and ``lazy_if_busy`` (tear-down, which
    must never hang on it), detach it lazily (``-z``).  None when it unmounted cleanly or
    was not mounted, else why the clean unmount failed (``fusermount``'s message)."""
    if not is_mounted(mountpoint):
        return None
    r = subprocess.run([fusermount(), "-u", str(mountpoint)], capture_output=True, text=True)
    if r.returncode == 0:
        return None
    if lazy_if_busy:
        subprocess.run([fusermount(), "-u", "-z", str(mountpoint)], capture_output=True)
    return r.stderr.strip() or f"fusermount exited {r.returncode}"


def detach(mountpoint: Path) -> str | None:
    """Detach a FUSE mount lazily (``fusermount -u -z``): gone from the name space now, the
    kernel keeps the connection to its daemon until the last open file or working
    directory in it is let go.  None when done, else why not."""
    if not is_mounted(mountpoint):
        return None
    r = subprocess.run([fusermount(), "-u", "-z", str(mountpoint)], capture_output=True, text=True)
    return None if r.returncode == 0 else r.stderr.strip() or f"fusermount exited {r.returncode}"


def wait_mounted(
    mountpoint: Path,
    proc: subprocess.Popen[bytes],
    *,
    timeout: float = 30.0,
    what: str = "the mount daemon",
    detail: Callable[[], str] = str,
) -> None:
    """Wait until ``proc`` has mounted ``mountpoint``.

    Raises:
        ProcessError: ``proc`` exited first, or ``timeout`` seconds passed (then ``proc`` is
            killed); ``detail()`` (e.g. the daemon's log tail) ends the message.
    """
    deadline = time.monotonic() + timeout
    while not is_mounted(mountpoint):
        if proc.poll() is not None:
            raise ProcessError(f"{what} exited (code {proc.returncode}){detail()}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise ProcessError(f"{mountpoint} was not mounted within {timeout:g}s{detail()}")
        time.sleep(POLL)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """``proc``'s exit code once it exits; None if it had to be killed after ``timeout``."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        return None


def command_lines() -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, argv)`` of every process whose command line this user may read (a process
    gone meanwhile, or another user's without privileges, is left out): how a daemon is
    found by what it was started with."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        yield int(pid_dir.name), argv


def port_holders(port: int) -> list[tuple[int, str]]:
    """The processes holding a TCP socket on local ``port`` (any address, IPv4 or IPv6, any
    state: a listener, or an outgoing connection the OS gave that port), as ``(pid, command
    line)``, from ``/proc/net/tcp*`` (the sockets' inodes) and ``/proc/*/fd`` (who has
    them open).  Processes of other users are invisible without privileges: then empty."""
    inodes = _socket_inodes(port)
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd) in wanted:
                    holders.append((int(pid_dir.name), _command_line(pid_dir)))
                    break
    return sorted(holders)


def _socket_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            _, _, hex_port = fields[1].rpartition(":")
            with contextlib.suppress(ValueError):
                if int(hex_port, 16) == port and fields[9] != "0":
                    inodes.add(fields[9])
    return inodes


def _command_line(pid_dir: Path, limit: int = 100) -> str:
    """A process's command line (its name when that is unreadable), at most ``limit``."""
    try:
        argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
        text = " ".join(" ".join(a.decode(errors="replace").split()) for a in argv if a)
    except OSError:
        text = ""
    if not text:
        with contextlib.suppress(OSError):
            text = (pid_dir / "comm").read_text().strip()
    return text[:limit] + ("..." if len(text) > limit else "")


def describe_port_holder(port: int) -> str:
    """``port 7000 is held by pid 123 (nginx: master process)``, or as much as can be
    found (the port alone when no visible process holds it)."""
    holders = port_holders(port)
    if not holders:
        return f"port {port} is held by a process this user cannot see, or was just released"
    who = ", ".join(f"pid {pid} ({cmd})" for pid, cmd in holders[:3])
    return f"port {port} is held by {who}"
