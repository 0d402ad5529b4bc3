"""Mount options, as ``mount -o`` spells them: one parser for ``bftfs mount -o``, the
``mount.fuse.bftfs`` helper that ``mount -t fuse.bftfs`` and ``/etc/fstab`` run, and the
mount daemon's own command line.

Pure (no pyfuse3), so the command line and the helper parse options without loading FUSE.

==================  ==========================================================================
``client=NAME``      the client identity (its key under ``clients/NAME/``), default ``client0``
``ro`` / ``rw``      read-only: every change is refused with EROFS (default ``rw``)
``allow_other``      let other users than the one who mounted in (FUSE's own option: only when
                     asked; an unprivileged user needs ``user_allow_other`` in /etc/fuse.conf)
``attr_timeout=S``   seconds the kernel caches attributes and missing names (default 1)
``entry_timeout=S``  seconds the kernel caches names it found (default 30)
``timeo=S``          how long a request of the kernel waits for an unavailable cluster
                     before it fails with EIO (default 10).  Unavailable means fewer than a
                     quorum of nodes live (``q``; ``n - t`` for the least ``n``): nodes
                     refusing connections, or silent with requests outstanding for several
                     of their own response times (``net/liveness.py``).  While a quorum is
                     live a request waits, however slow the nodes (docs/fs.md,
                     "Slow is not unavailable").  An unmount sends what the mount held
                     back until 6 x timeo pass with none of it taken
``soft``             unavailable means no call completed for ``timeo``, however many nodes
                     are live (the meaning before issue 60: a busy cluster's slow answers
                     fail with EIO)
``hard``             try again after each ``timeo`` instead of failing, for as long as it
                     takes, as NFS hard mounts do, also with fewer than a quorum live
``nowsync``          create write-behind (the default): a create without ``O_EXCL`` is
                     answered at once and sent with the file's first flush or close as one
                     update; other clients see the name from then on (docs/fs.md)
``wsync``            every create is sent before it returns (as before; CephFS's names)
``lease=S``          take shared leases of S seconds (10 to 120, default 30) on objects
                     this mount keeps asking about, and answer their lookups, stats,
                     opens and listings without a round until another client's change
                     recalls them (docs/fs.md, "Leases"); 0 takes none (every query a
                     round, as before leases).  A directory this mount keeps creating
                     files in is leased exclusively: the closes of its new files (to
                     1 MiB) and its unlinks return without waiting for the servers
                     (directory write-back, sent within ``commit`` seconds)
``commit=S``         with ``lease=``: the longest a close or unlink left to write-back waits
                     before it is sent (default 5, as ext4; 0: every close and unlink waits,
                     as without leases)
``publish``          with ``lease=`` (the default): this mount's look at a directory another
                     mount holds exclusively asks that mount to publish what it held back,
                     which keeps its lease and write-back (docs/fs.md, "Publication"),
                     instead of recalling it; ``nopublish`` recalls
``locklease=S``      how long this mount's ``fcntl`` and ``flock`` locks live on the servers
                     unless renewed (10 to 120, default 30): a mount killed or cut off
                     frees its locks for the others within it (docs/fs.md, "Locks")
``metrics_port=P``   serve Prometheus metrics on this port (0: any free one; off by default)
``metrics_addr=A``   the address they listen on (default 127.0.0.1)
``passthrough``      keep a local copy of each file read whole (its blocks verified) and let
                     the kernel serve later read-only opens of that same version from it,
                     without the daemon (FUSE passthrough: Linux >= 6.9, libfuse 3.17 from
                     setup; docs/fs.md, "Passthrough"); off by default (``nopassthrough``)
``passthrough_cache=M`` the copies' bound in MiB (default 1024; least recently used evicted)
``readahead_max=M``  the most a sequential reader's read-ahead window grows to, in MiB
                     (default 64): it is twice the links' measured bandwidth-delay product,
                     at least 8 MiB (docs/wan.md, "Read-ahead"); 8 keeps it at 8 MiB, less
                     keeps it smaller still
``nonempty``         mount over a directory that holds entries (hidden while mounted);
                     without it such a mount point is refused, as ZFS refuses one
``noatime``, ...     the kernel's own flags ``noatime``, ``nosuid``, ``nodev``, ``noexec``:
                     applied to the mount (``/proc/mounts`` shows them)
==================  ==========================================================================

The generic options ``mount(8)`` and fstab pass along (``defaults``, ``auto``, ``noauto``,
``user``, ``nofail``, ``_netdev``, ``x-systemd.*``) and the kernel's defaults (``atime``,
``relatime``, ``suid``, ``dev``, ``exec``, ...) are accepted and change nothing; anything
else is an error naming the option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: Seconds the kernel may cache attributes and missing names (``attr_timeout``; the choice
#: is explained in :mod:`bftfs.fuse.operations`).
DEFAULT_TIMEOUT = 1.0
#: Seconds the kernel may cache the names it found (``entry_timeout``).
DEFAULT_ENTRY_TIMEOUT = 30.0
#: Seconds a system call waits for an unavailable cluster before it fails with EIO
#: (``timeo``): long enough to ride out a node restarting or a short network partition,
#: short enough that a program (and its user) learns within seconds, not minutes.
DEFAULT_TIMEO = 10.0
#: Bounds of ``lease=`` (seconds): shorter would spend its term's margin (about 5 s) on
#: clocks; longer than the nodes grant (``fsobjects.leases.MAX_TERM``).
MIN_LEASE = 10.0
MAX_LEASE_TERM = 120.0
#: Seconds a lease is asked for (``lease=``): half CephFS's 60 s cap on what a dead holder
#: costs the others, and a renewal round per object in use every 20 s (docs/fs.md).
DEFAULT_LEASE = 30.0
#: Seconds a close left to directory write-back may wait (``commit=``, ext4's default).
DEFAULT_COMMIT = 5.0
#: Seconds a lock lives on the servers unless renewed (``locklease=``; bounds as ``lease=``).
DEFAULT_LOCK_LEASE = 30.0

#: MiB of verified copies a ``passthrough`` mount keeps (``passthrough_cache=``).
DEFAULT_PASSTHROUGH_CACHE = 1024

#: MiB a file's read-ahead window may grow to (``readahead_max=``; ``fs/files/window.py``).
DEFAULT_READAHEAD_MAX_MIB = 64

#: mount(8)'s VFS flags the kernel applies to the mount itself (access times, set-uid
#: bits, device files, programs): passed to it as given, so ``/proc/mounts`` shows them.
KERNEL_FLAGS = ("noatime", "nosuid", "nodev", "noexec")

#: Options mount(8), fstab and systemd pass along that mean nothing to bftfs, or ask for
#: what the kernel does anyway (``atime``, ``relatime``, ``suid``, ``dev``, ``exec``: the
#: opposites of :data:`KERNEL_FLAGS` are the defaults).  ``nodiratime`` is here because
#: libfuse cannot pass it (its mount refuses the option); ``noatime`` implies it.
_IGNORED = frozenset(
    {
        "defaults",
        "auto",
        "noauto",
        "user",
        "users",
        "nouser",
        "owner",
        "group",
        "nofail",
        "_netdev",
        "suid",
        "dev",
        "exec",
        "async",
        "atime",
        "relatime",
        "norelatime",
        "strictatime",
        "diratime",
        "nodiratime",
        "lazytime",
        "nolazytime",
        "silent",
        "loud",
    }
)
_IGNORED_PREFIXES = ("x-", "comment=", "fsname=", "subtype=")


class OptionError(ValueError):
    """A mount option bftfs does not know, or a bad value (the message names it)."""


@dataclass(frozen=True)
class MountOptions:
    """What a mount is asked for (see the module docstring)."""

    client: str = "client0"
    read_only: bool = False
    #: The :data:`KERNEL_FLAGS` asked for, in the order given.
    kernel_flags: tuple[str, ...] = ()
    #: Mount over a directory that is not empty (its entries hidden while mounted).
    nonempty: bool = False
    allow_other: bool = False
    attr_timeout: float = DEFAULT_TIMEOUT
    entry_timeout: float = DEFAULT_ENTRY_TIMEOUT
    hard: bool = False
    #: ``soft``: unavailable is no call completing for ``timeo`` (module docstring).
    soft: bool = False
    timeo: float = DEFAULT_TIMEO
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    #: Create write-behind (``nowsync``); ``wsync`` turns it off.
    write_behind: bool = True
    #: Seconds a lease is asked for (``lease=``; 0: no leases, every query a round).
    lease: float = DEFAULT_LEASE
    #: Seconds directory write-back keeps a closed create (``commit=``; 0: closes wait).
    commit: float = DEFAULT_COMMIT
    #: Another mount's look at a directory this one holds asks it to publish rather than
    #: recalling its lease, and this mount's looks ask so (``nopublish``: they recall).
    publish: bool = True
    #: Seconds this mount's locks live on the servers unless renewed (``locklease=``).
    lock_lease: float = DEFAULT_LOCK_LEASE
    #: FUSE passthrough of verified copies (``passthrough``), and their bound in MiB.
    passthrough: bool = False
    passthrough_cache: int = DEFAULT_PASSTHROUGH_CACHE
    #: MiB a file's read-ahead window may grow to from the links' measure.
    readahead_max: int = DEFAULT_READAHEAD_MAX_MIB

    @property
    def deadline(self) -> float | None:
        """Seconds before a request gives up with EIO; None for ``hard`` (never)."""
        return None if self.hard else self.timeo

    def with_options(self, text: str | None) -> MountOptions:
        """These options with the comma-separated ``text`` (``-o``) applied over them."""
        return parse(text, self)

    def to_string(self) -> str:
        """The ``-o`` form that :func:`parse` reads back to these options."""
        out = [f"client={self.client}", "ro" if self.read_only else "rw"]
        if self.allow_other:
            out.append("allow_other")
        out += list(self.kernel_flags)
        if self.nonempty:
            out.append("nonempty")
        out += [f"attr_timeout={self.attr_timeout:g}", f"entry_timeout={self.entry_timeout:g}"]
        if self.hard:
            out.append("hard")
        elif self.soft:
            out.append("soft")
        out.append(f"timeo={self.timeo:g}")
        out.append("nowsync" if self.write_behind else "wsync")
        if not self.publish:
            out.append("nopublish")
        if self.lease != DEFAULT_LEASE:
            out.append(f"lease={self.lease:g}")
        if self.commit != DEFAULT_COMMIT:
            out.append(f"commit={self.commit:g}")
        if self.lock_lease != DEFAULT_LOCK_LEASE:
            out.append(f"locklease={self.lock_lease:g}")
        if self.passthrough:
            out.append("passthrough")
            if self.passthrough_cache != DEFAULT_PASSTHROUGH_CACHE:
                out.append(f"passthrough_cache={self.passthrough_cache}")
        if self.readahead_max != DEFAULT_READAHEAD_MAX_MIB:
            out.append(f"readahead_max={self.readahead_max}")
        if self.metrics_port is not None:
            out += [f"metrics_port={self.metrics_port}", f"metrics_addr={self.metrics_addr}"]
        return ",".join(out)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _seconds(name: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise OptionError(f"mount option {name}={value!r}: not a number of seconds") from None
    if not x >= 0 or x == float("inf"):
        raise OptionError(f"mount option {name}={value!r}: must be a finite number >= 0")
    return x


def parse(text: str | None, base: MountOptions | None = None) -> MountOptions:
    """``base`` (default: the defaults) with the options in ``text`` applied, left to right.

    Raises:
        OptionError: an unknown option or a bad value.
    """
    opts = base or MountOptions()
    changes: dict[str, object] = {}
    kernel = list(opts.kernel_flags)
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        if name in ("acregmin", "acregmax"):
            raise OptionError(
                f"mount option {name}= was removed: leases (lease=, default "
                f"{DEFAULT_LEASE:g} s) let the kernel keep a file's attributes until another "
                'client\'s change recalls them (docs/fs.md, "Leases")'
            )
        got = _valued(name, value) if eq else _flag(item, kernel)
        if got is not None:
            changes.update(got)
        elif not (item in _IGNORED or item.startswith(_IGNORED_PREFIXES)):
            raise OptionError(
                f"unknown mount option {item!r} (bftfs knows client=, ro, rw, allow_other, "
                "attr_timeout=, entry_timeout=, timeo=, hard, soft, wsync, "
                "nowsync, lease=, commit=, locklease=, publish, nopublish, passthrough, "
                "nopassthrough, "
                "passthrough_cache=, readahead_max=, metrics_port=, metrics_addr=, nonempty, "
                + ", ".join(KERNEL_FLAGS)
                + ")"
            )
    return dataclasses.replace(opts, **changes)  # type: ignore[arg-type]


def _flag(item: str, kernel: list[str]) -> dict[str, object] | None:
    """The changes a bare option makes (``kernel``: the kernel's flags so far, in order),
    or None when it is not one of bftfs's."""
    if item in ("ro", "rw"):
        return {"read_only": item == "ro"}
    if item == "allow_other":
        return {"allow_other": True}
    if item in ("hard", "soft"):
        return {"hard": item == "hard", "soft": item == "soft"}
    if item in ("wsync", "nowsync"):
        return {"write_behind": item == "nowsync"}
    if item == "nonempty":
        return {"nonempty": True}
    if item in ("passthrough", "nopassthrough"):
        return {"passthrough": item == "passthrough"}
    if item in ("publish", "nopublish"):
        return {"publish": item == "publish"}
    if item in KERNEL_FLAGS:
        if item not in kernel:
            kernel.append(item)
        return {"kernel_flags": tuple(kernel)}
    return None


def _valued(name: str, value: str) -> dict[str, object] | None:
    """The changes ``name=value`` makes, or None when ``name`` takes no value here.

    Raises:
        OptionError: a bad value."""
    if name == "client":
        if not value:
            raise OptionError("mount option client= needs a client name")
        return {"client": value}
    if name in ("attr_timeout", "entry_timeout", "timeo", "commit"):
        return {name: _seconds(name, value)}
    if name == "lease":
        term = _seconds(name, value)
        if term and not MIN_LEASE <= term <= MAX_LEASE_TERM:
            raise OptionError(
                f"mount option lease={value!r}: 0 (off) or {MIN_LEASE:g} to "
                f"{MAX_LEASE_TERM:g} seconds"
            )
        return {"lease": term}
    if name == "locklease":
        term = _seconds(name, value)
        if not MIN_LEASE <= term <= MAX_LEASE_TERM:
            raise OptionError(
                f"mount option locklease={value!r}: {MIN_LEASE:g} to {MAX_LEASE_TERM:g} seconds"
            )
        return {"lock_lease": term}
    if name == "metrics_port":
        try:
            port = int(value)
        except ValueError:
            port = -1
        if not 0 <= port < 65536:
            raise OptionError(f"mount option metrics_port={value!r}: not a port number")
        return {"metrics_port": port}
    if name in ("passthrough_cache", "readahead_max"):
        try:
            mib = int(value)
        except ValueError:
            mib = -1
        if mib < 1:
            raise OptionError(f"mount option {name}={value!r}: a number of MiB >= 1")
        return {name: mib}
    if name == "metrics_addr":
        return {"metrics_addr": value}
    return None
