"""The threshold rules of both protocols, in one place, as quorum-system properties.

The cluster configuration (``config.validate``), the PASIS client and nodes
(``rw.classify.RWThresholds``) and the Q/U client and servers (``qu.classify.QUThresholds``)
all check their sizes with these functions and raise :class:`ThresholdError`, so a rule is
written once and every layer names it the same way.

Each rule is a property of a threshold quorum system (``bftfs/quorums/threshold.py``, seed
001) in bftfs's hybrid fault model: up to ``t`` servers fail, ``b <= t`` of them
Byzantine, so availability is asked against ``t`` servers and consistency against ``b``
(seed 001 has one threshold ``f``, ``t = b = f``).  A broken rule's message names the
paper's equation and the property it breaks (docs/quorums.md):

- Q/U (seed 004 L2288-2291): (4.2) ``q + t <= n`` is availability (M2/O3: a quorum
  answers with ``t`` down); (4.3) ``2q - b - n >= r``: two quorums share ``r`` correct
  servers, so a complete candidate is repairable in every later quorum (the O1/O2 margin
  of a voting reader); (4.4) ``q + r - n > b``: a quorum meets any ``r`` servers in a
  correct one (D1).
- PASIS (seed 004 L1104-1135): a complete write has ``QC`` benign hosts and a reader hears
  ``N - t`` nodes.  (3.1) ``QC <= N - t - b`` is availability (a write finishes on the
  ``N - t`` replies, ``b`` of them lying); (3.4) ``t + b < QC``: any read meets a complete
  write's hosts in ``QC - t > b`` nodes (D1 between write and read quorums: Byzantine
  nodes alone never look like a complete write, nor hide one); (3.5)
  ``1 <= m <= QC - t``: those ``QC - t`` nodes hold enough fragments to decode.
"""

from __future__ import annotations

from bftfs.quorums.fab import FabQuorums, broken, fast_faults
from bftfs.quorums.threshold import available, min_intersection


class ThresholdError(ValueError):
    """Sizes that break one of the protocols' rules (the message names the rule)."""


#: Most objects one Q/U multi-object operation may touch (the file system needs 4, seed
#: L1995): what a node accepts.  A client names at most its cluster's ``max_objects``
#: (``[cluster] max_objects``; this in a new cluster), so nodes of an older release, which
#: accept :data:`NARROW_OBJECTS`, still answer the clients of a cluster file without it.
MAX_OBJECTS = 32
#: The width every release accepts: a cluster file without ``max_objects`` keeps to it.
NARROW_OBJECTS = 8


AVAILABILITY = "availability (M2/O3): a quorum must answer with t servers down"
QU_REPAIRABLE = "consistency (O1/O2): two quorums must share r correct servers"
QU_MEET = "consistency (D1): a quorum must meet any r servers in a correct one"
PASIS_AVAILABILITY = "availability (D2): a write must finish on n - t replies, b of them lying"
PASIS_MEET = "consistency (D1): a read must meet a complete write in more than b nodes"
PASIS_DECODE = "decoding: the nodes a read shares with a complete write must hold m fragments"


def fab_rule(n: int, b: int) -> str | None:
    """Why FaB Paxos cannot run on ``n`` nodes with ``b`` Byzantine (every node acceptor,
    proposer and learner; ``bftfs.quorums.fab``: F0-F6), or None.

    ``n >= 3b + 1``: the cluster runs with the largest ``t`` its nodes allow
    (``fast_faults``): plain FaB (``t = b``) from ``5b + 1``, Parameterized FaB with commit
    proofs below (``t = 0`` at ``3b + 1``; docs/fab.md)."""
    why = broken(FabQuorums.of(n, b, t=fast_faults(n, b)))
    return None if why is None else f"FaB engine: {why}"


def fault_rule(t: int, b: int) -> str | None:
    """``0 <= b <= t``: Byzantine faults are faults."""
    if t < 0 or b < 0:
        return f"t and b must not be negative (t={t}, b={b})"
    if b > t:
        return f"rule b <= t broken: b={b} > t={t} (Byzantine faults are faults)"
    return None


def pasis_rules(n: int, t: int, b: int, qc: int, m: int) -> list[str]:
    """Every PASIS rule (seed L1104-1135, spec A.2) the sizes break, in the paper's order."""
    if (why := fault_rule(t, b)) is not None:
        return [why]
    broken = []
    shared = min_intersection(qc, n - t, n)  # = QC - t when QC >= t
    if not shared > b:
        broken.append(
            f"PASIS rule t + b < QC (eq. 3.4) broken: t + b = {t + b}, QC = {qc}; "
            f"breaks {PASIS_MEET}"
        )
    if not available(qc + b, n, t):
        broken.append(
            f"PASIS rule QC <= N - t - b (eq. 3.1) broken: QC = {qc} > {n} - {t} - {b}; "
            f"breaks {PASIS_AVAILABILITY}"
        )
    if not 1 <= m <= shared:
        broken.append(
            f"PASIS rule 1 <= m <= QC - t (eq. 3.5) broken: m = {m}, QC - t = {qc - t}; "
            f"breaks {PASIS_DECODE}"
        )
    return broken


def pasis_rule(n: int, t: int, b: int, qc: int, m: int) -> str | None:
    """The first PASIS rule broken, or ``None``."""
    return next(iter(pasis_rules(n, t, b, qc, m)), None)


def qu_rules(n: int, t: int, b: int, q: int, r: int) -> list[str]:
    """Every Q/U threshold constraint (4.2)-(4.4) (seed L2288-2291) the sizes break."""
    if (why := fault_rule(t, b)) is not None:
        return [why]
    broken = []
    if not available(q, n, t):
        broken.append(
            f"Q/U rule (4.2) q + t <= n broken: q={q}, t={t}, n={n}; breaks {AVAILABILITY}"
        )
    if not min_intersection(q, q, n) - b >= r:
        broken.append(
            f"Q/U rule (4.3) 2q - b - n >= r broken: q={q}, b={b}, n={n}, r={r}; "
            f"breaks {QU_REPAIRABLE}"
        )
    if not min_intersection(q, r, n) > b:
        broken.append(
            f"Q/U rule (4.4) q + r - n > b broken: q={q}, r={r}, n={n}, b={b}; breaks {QU_MEET}"
        )
    return broken


def qu_rule(n: int, t: int, b: int, q: int, r: int) -> str | None:
    """The first Q/U threshold constraint broken, or ``None``."""
    return next(iter(qu_rules(n, t, b, q, r)), None)


def qu_min_servers(t: int, b: int) -> int:
    """``3t + 2b + 1``: the fewest servers Q/U runs on (seed L2294-2298; with ``t = b = f``
    it is ``5f + 1``, one more than seed 001's opaque bound ``5f``, Thm. 5.13, L272)."""
    return 3 * t + 2 * b + 1


def qu_quorums(n: int, t: int, b: int) -> tuple[int, int]:
    """The smallest Q/U quorum ``q`` and repairable set ``r`` for ``n`` servers that meet
    :func:`qu_rule`, with ``r >= t + b + 1``.  At ``n = 3t + 2b + 1`` that is
    ``q = 2t + 2b + 1``, ``r = t + b + 1``; a larger ``n`` needs a larger ``q`` (with t=b=1:
    n=7 gives q=6, n=8 gives q=7).  ``(0, 0)`` when no pair exists (n too small)."""
    for r in range(t + b + 1, n + 1):
        q = max(-(-(n + b + r) // 2), n + b + 1 - r)
        if available(q, n, t) and qu_rule(n, t, b, q, r) is None:
            return q, r
    return 0, 0


def pasis_largest_qc(n: int, t: int, b: int) -> int:
    """The largest ``QC`` still available with ``t`` nodes down: a write needs ``QC + b``
    of the ``N - t`` replies (``available(QC + b, N, t)``), so ``QC = N - t - b``; the
    configuration's default, so reads are most often complete on the first round."""
    return n - t - b


def pasis_largest_m(n: int, t: int, qc: int) -> int:
    """The largest ``m`` the nodes a read shares with a complete write (at least
    ``min_intersection(QC, N - t, N) = QC - t``) can decode, at least 1: the
    configuration's default, the least storage blow-up."""
    return max(1, min_intersection(qc, n - t, n))


def check(why: str | None) -> None:
    """Raise :class:`ThresholdError` with ``why``, if any."""
    if why is not None:
        raise ThresholdError(why)
