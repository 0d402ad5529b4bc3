"""What storage nodes verify, when, which old versions they keep, and how much one client
may ask of them: the ``[verification]``, ``[retention]`` and ``[limits]`` tables of
``cluster.toml`` (docs/lazy.md and docs/threat-model.md have the argument).

Verification (seed 004 sections 3.7-3.9, spec ``pasis-qu-lazy.md`` part B):

==================  ==========  ==========================================================
key                 default     meaning
==================  ==========  ==========================================================
``mode``            lazy-coop   ``lazy-coop``: the ``b + 1`` nodes responsible for a block
                                verify it and NOTIFY the others (seed L1496-1537);
                                ``lazy``: every node verifies every block itself;
                                ``write-time``: a node verifies right after each write
                                (AVID-like, the seed's comparison point); ``off``: nothing
                                is verified in the background (readers still verify).
``settle_seconds``  1.0         a block is verified once no write reached it for this long
                                (let overwrite bursts settle, seed L1615-1621)
``idle_seconds``    0.05        and no foreground request reached the node for this long
                                (verification runs in idle time first, L1419-1424)
``fallback_seconds`` 10.0       a node not responsible for a block verifies it itself when
                                ``b + 1`` NOTIFYs did not arrive within this time
``per_client_block`` 8          unverified versions one client may leave on one block
``per_client``      1024        unverified versions one client may leave on the node; at a
                                limit, that client's writes are verified before anything
                                else, idle or not (seed B.3; the seed gives no numbers), by
                                their ``b + 1`` responsible nodes (``lazy-coop``); the
                                others wait for NOTIFYs up to twice the budgets
``stream_seconds``  1.0         a run of client requests with no gap of
                                ``stream_idle_seconds`` that has lasted this long is a
                                *stream* (a big file written or read); 0: never
``stream_idle_seconds`` 0.5     while a stream lasts, verification waits for this much
                                quiet (or ``idle_seconds`` if longer) instead of
                                ``idle_seconds`` (it yields the CPU to the
                                stream and catches up after it)
``stream_bytes``    134217728   while a stream lasts, one client's budget is this many
                                bytes of unverified fragments on the node (128 MiB) instead
                                of ``per_client`` versions; past it, as at ``per_client``,
                                its writes are verified first.  Always a bound: a client
                                that streams forever leaves at most this much (and
                                ``per_client_block`` per block) unverified
``wave_blocks``     16          blocks verified together: their READs run concurrently
                                and share one frame per peer, their records one commit
                                and their NOTIFYs one frame per peer; 1: one at a time
``pool_fraction``   0.75        above this share of the LMDB map in use the node verifies
                                and collects without waiting for idle time, and history
                                is thinned oldest first: every tier of ``[retention]``
                                shortens in proportion until, at ``data_fraction``, only
                                ``keep_versions`` stay (``rw/lazy.squeezed``)
``data_fraction``   0.9         above this share a node refuses new non-empty block
                                versions (``full``: ENOSPC), keeping the rest for metadata
                                updates, so that files can still be removed and their
                                space given back.  Both shares are of the map, or of the
                                disk under it when that is fuller (``node/store.Store.fill``)
``scrub_seconds``   604800      every this often (a week; 0: never) a node checks every
                                fragment it stores against its cross checksum, in idle
                                time, and rewrites a damaged latest version from the
                                other nodes (node/rw_scrubber.py); a pass starts one
                                period after the last one ended (kept in the store,
                                so restarts do not postpone it)
``scrub_rate``      2000        versions a scrub checks per second at most
``catchup_bytes_per_second`` 67108864  the block data a node catching up (restarted, or
                                a new machine replacing one) reads from the others per
                                second at most (64 MiB; 0: no limit): what it takes from
                                the foreground (node/rw_catchup.py)
``catchup_parallel`` 8          blocks a catch-up reads at once
``audit_seconds``   3600        every this often (0: never) a node audits each other node
                                (proofs of storage, node/audits.py, docs/bar.md): it asks
                                for ``audit_challenges`` fragments picked at random among
                                its verified blocks, checked against their cross checksums
``audit_challenges`` 4          fragments each node asks of each peer per audit period
==================  ==========  ==========================================================

Retention (what garbage collection keeps below a version verified complete; the thinning
schedule is ``bftfs/thinning.py``):

==================  ==========  ==========================================================
``keep_seconds``    900         every version younger than this is kept (15 minutes of
                                history, for ``bftfs log``/restore and for readers racing
                                with a collection)
``keep_hourly``     48          beyond that, the newest version of each hour is kept for
                                this many hours (two days)
``keep_daily``      7           the newest of each day (UTC) for this many days
``keep_weekly``     0           the newest of each week (from Monday, UTC) for this many
                                weeks (0: none)
``keep_versions``   2           the newest versions of every block kept whatever their age
``forget_seconds``  900         a removed file's or directory's last Q/U version (its
                                tombstone) stays this long after its history's horizon,
                                then the nodes forget the object altogether once all of
                                them agree (docs/qu.md): a handle another mount still
                                holds on it then answers ESTALE, as on NFS
==================  ==========  ==========================================================

History's *horizon* is the longest of ``keep_seconds``, ``keep_hourly`` hours,
``keep_daily`` days and ``keep_weekly`` weeks: 7 days by default.  Block contents are
thinned to the schedule, and so are Q/U versions (metadata, directories, inline files;
docs/history.md).  A ``[retention]`` table written before the
schedule existed (only ``keep_seconds``, ``keep_versions``, ``forget_seconds``) loads
unchanged: its ``keep_seconds`` keeps its meaning and the schedule's defaults are added
above it; ``keep_hourly = 0`` and ``keep_daily = 0`` give the old behaviour back.

Limits (per client principal, on each node; nodes talking to nodes are never limited, see
``bftfs/node/limits.py``; a ``0`` rate turns that bucket off):

=======================  ==========  =====================================================
``max_inflight``         128         requests of one client a node works on at once; the
                                     next waits unread in its connection (backpressure)
``requests_per_second``  10000.0     token-bucket rate of one client's requests (a batch
                                     counts one per item); over it the node stops reading
                                     that client's connection until tokens are back
``bytes_per_second``     268435456   the same for the bytes of its frames (256 MiB/s)
``burst_seconds``        2.0         each bucket holds this many seconds of its rate
``quota_fraction``       1.0         bytes one client's requests may keep on a node, as a
                                     share of ``map_size``: PASIS block versions and Q/U
                                     records (versions, stored requests, histories) in one
                                     figure (bftfs/accounting.py); a non-empty block
                                     version, or a Q/U update of its own whose states grow,
                                     beyond it is refused (``quota``: EDQUOT once more
                                     than ``b`` nodes refuse); empty versions, updates
                                     that keep or shrink the states, repairs and
                                     deletions always pass.  The default ``1.0`` is no
                                     quota: only ``data_fraction`` binds (ENOSPC), so one
                                     client may use the whole store; set it below 1 when
                                     clients do not trust each other (issue 31)
``handler_slots``        0           a pool of this many handlers shared by all clients,
                                     granted round-robin among those waiting when it is
                                     full (``net/admission.py``, against a flooder's
                                     queue); 0: none.  Off by default: requests a node
                                     holds unanswered hold its slots, so a client whose
                                     requests are held (or a handler that waits) starves
                                     every client of the node once the pool is full
=======================  ==========  =====================================================

The rates are chosen well above what one mount can ask of a node (a null request costs a
node about 0.1 ms of CPU, so one node answers on the order of 10 000 requests per second
in all), so they hold back only a client that floods; ``make test`` passes under them
unchanged, but they were not measured against an Andrew or PostMark run.  A quota
(``quota_fraction`` below 1) keeps any single key from taking more than that share of a
node's store; by default there is none, so a cluster with one user can fill it (a full
store answers ENOSPC, not EDQUOT).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from bftfs.thinning import Schedule

MODES = ("lazy-coop", "lazy", "write-time", "off")
#: Largest verification wave: a wave's READs to a peer share one ``rw.batch`` frame, which
#: holds at most 128 items (``rw/batch.MAX_BATCH``).
MAX_WAVE_BLOCKS = 128


class PolicyError(ValueError):
    """A ``[verification]``, ``[retention]`` or ``[limits]`` setting out of range."""


@dataclass(frozen=True)
class VerificationPolicy:
    """See the module docstring."""

    mode: str = "lazy-coop"
    settle_seconds: float = 1.0
    idle_seconds: float = 0.05
    fallback_seconds: float = 10.0
    per_client_block: int = 8
    per_client: int = 1024
    stream_seconds: float = 1.0
    stream_idle_seconds: float = 0.5
    stream_bytes: int = 128 * 1024 * 1024
    wave_blocks: int = 16
    pool_fraction: float = 0.75
    data_fraction: float = 0.9
    scrub_seconds: float = 604800.0
    scrub_rate: int = 2000
    catchup_bytes_per_second: int = 64 * 1024 * 1024
    catchup_parallel: int = 8
    audit_seconds: float = 3600.0
    audit_challenges: int = 4

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def cooperative(self) -> bool:
        return self.mode == "lazy-coop"

    def validate(self) -> VerificationPolicy:
        if self.mode not in MODES:
            raise PolicyError(f"[verification] mode must be one of {', '.join(MODES)}")
        for name in (
            "settle_seconds",
            "idle_seconds",
            "fallback_seconds",
            "stream_seconds",
            "stream_idle_seconds",
        ):
            if not 0 <= getattr(self, name) <= 86400:
                raise PolicyError(f"[verification] {name} must be in 0..86400 seconds")
        if self.per_client_block < 1 or self.per_client < self.per_client_block:
            raise PolicyError(
                "[verification] per_client_block must be at least 1 and per_client at "
                "least per_client_block"
            )
        if not 0 <= self.stream_bytes <= 1 << 50:
            raise PolicyError("[verification] stream_bytes must be in 0..2**50 bytes")
        if not 1 <= self.wave_blocks <= MAX_WAVE_BLOCKS:
            raise PolicyError(f"[verification] wave_blocks must be in 1..{MAX_WAVE_BLOCKS}")
        if not 0.1 <= self.pool_fraction <= 1.0:
            raise PolicyError("[verification] pool_fraction must be in 0.1..1.0")
        if not self.pool_fraction <= self.data_fraction <= 1.0:
            raise PolicyError("[verification] data_fraction must be in pool_fraction..1.0")
        if not 0 <= self.scrub_seconds <= 10 * 365 * 86400:
            raise PolicyError("[verification] scrub_seconds must be in 0 .. 10 years (0: off)")
        if not 1 <= self.scrub_rate <= 1_000_000:
            raise PolicyError("[verification] scrub_rate must be in 1..1000000 versions/s")
        if not 0 <= self.catchup_bytes_per_second <= 1 << 40:
            raise PolicyError(
                "[verification] catchup_bytes_per_second must be in 0..2**40 (0: no limit)"
            )
        if not 1 <= self.catchup_parallel <= 64:
            raise PolicyError("[verification] catchup_parallel must be in 1..64 blocks")
        if not 0 <= self.audit_seconds <= 7 * 86400:
            raise PolicyError("[verification] audit_seconds must be in 0 .. a week (0: off)")
        if not 1 <= self.audit_challenges <= 1000:
            raise PolicyError("[verification] audit_challenges must be in 1..1000")
        return self


@dataclass(frozen=True)
class RetentionPolicy:
    """See the module docstring."""

    keep_seconds: float = 900.0
    keep_versions: int = 2
    forget_seconds: float = 900.0
    # The schedule's keys come last, so that positional construction keeps its meaning.
    keep_hourly: int = 48
    keep_daily: int = 7
    keep_weekly: int = 0

    def validate(self) -> RetentionPolicy:
        if not 0 <= self.keep_seconds <= 10 * 365 * 86400:
            raise PolicyError("[retention] keep_seconds must be in 0 .. 10 years")
        for name, most in (("keep_hourly", 24 * 3650), ("keep_daily", 3650), ("keep_weekly", 520)):
            if not 0 <= getattr(self, name) <= most:
                raise PolicyError(f"[retention] {name} must be in 0..{most} (0: none)")
        if not 1 <= self.keep_versions <= 1_000_000:
            raise PolicyError("[retention] keep_versions must be at least 1")
        if not 0 <= self.forget_seconds <= 10 * 365 * 86400:
            raise PolicyError("[retention] forget_seconds must be in 0 .. 10 years")
        return self

    def schedule(self) -> Schedule:
        """The thinning schedule these keys describe (bftfs/thinning.py)."""
        return Schedule(
            int(self.keep_seconds * 1e9), self.keep_hourly, self.keep_daily, self.keep_weekly
        )

    @property
    def horizon_seconds(self) -> float:
        """How long a version may be kept as history (the longest tier): what replaces a
        lone ``keep_seconds`` wherever age alone decides (Q/U versions, tombstones)."""
        return self.schedule().horizon_ns / 1e9


@dataclass(frozen=True)
class LimitsPolicy:
    """See the module docstring (the ``[limits]`` table)."""

    max_inflight: int = 128
    requests_per_second: float = 10000.0
    bytes_per_second: int = 256 * 1024 * 1024
    burst_seconds: float = 2.0
    quota_fraction: float = 1.0
    handler_slots: int = 0

    def validate(self) -> LimitsPolicy:
        if not 1 <= self.max_inflight <= 1_000_000:
            raise PolicyError("[limits] max_inflight must be in 1..1000000 requests")
        if not 0 <= self.requests_per_second <= 1e9:
            raise PolicyError("[limits] requests_per_second must be in 0..1e9 (0: no limit)")
        if not 0 <= self.bytes_per_second <= 1 << 50:
            raise PolicyError("[limits] bytes_per_second must be in 0..2**50 (0: no limit)")
        if not 0.001 <= self.burst_seconds <= 3600:
            raise PolicyError("[limits] burst_seconds must be in 0.001..3600 seconds")
        if not 0 < self.quota_fraction <= 1.0:
            raise PolicyError("[limits] quota_fraction must be in 0 (excluded)..1.0")
        if not 0 <= self.handler_slots <= 100_000:
            raise PolicyError("[limits] handler_slots must be in 0..100000 (0: no shared pool)")
        return self

    def quota_bytes(self, map_size: int) -> int:
        """Bytes (block versions and Q/U records) one client may keep on a node of
        ``map_size``."""
        return int(self.quota_fraction * map_size)


def _from_table(cls: type, where: str, table: Any) -> Any:
    if table is None:
        return cls().validate()
    if not isinstance(table, Mapping):
        raise PolicyError(f"{where} must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(table) - set(known)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        default = getattr(cls(), key)
        if isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = type(value) is int
        if not ok:
            raise PolicyError(f"{where} {key} must be a {type(default).__name__}, got {value!r}")
        values[key] = value
    return cls(**values).validate()


def verification_from(table: Any) -> VerificationPolicy:
    """The ``[verification]`` table (None: the defaults)."""
    return _from_table(VerificationPolicy, "[verification]", table)


def retention_from(table: Any) -> RetentionPolicy:
    """The ``[retention]`` table (None: the defaults)."""
    return _from_table(RetentionPolicy, "[retention]", table)


def limits_from(table: Any) -> LimitsPolicy:
    """The ``[limits]`` table (None: the defaults)."""
    return _from_table(LimitsPolicy, "[limits]", table)


#: Keys newer than the previous release, written only when set to other than their default:
#: a release refuses keys it does not know, and during a rolling upgrade the previous
#: release's clients and nodes read the cluster.toml this one writes (docs/operations.md).
WRITTEN_WHEN_SET = frozenset({"audit_seconds", "audit_challenges", "handler_slots"})


def to_table(policy: VerificationPolicy | RetentionPolicy | LimitsPolicy) -> dict[str, Any]:
    """The policy's table as written to cluster.toml (:data:`WRITTEN_WHEN_SET`)."""
    default = type(policy)()
    return {
        f.name: getattr(policy, f.name)
        for f in fields(policy)
        if f.name not in WRITTEN_WHEN_SET or getattr(policy, f.name) != getattr(default, f.name)
    }
