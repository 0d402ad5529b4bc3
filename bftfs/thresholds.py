"""The threshold rules of both protocols, in one place.

The cluster configuration (``config.validate``), the PASIS client and nodes
(``rw.classify.RWThresholds``) and the Q/U client and servers (``qu.classify.QUThresholds``)
all check their sizes with these functions and raise :class:`ThresholdError`, so a rule is
written once and every layer names it the same way.
"""

from __future__ import annotations


class ThresholdError(ValueError):
    """Sizes that break one of the protocols' rules (the message names the rule)."""


def fault_rule(t: int, b: int) -> str | None:
    """``0 <= b <= t``: Byzantine faults are faults."""
    if t < 0 or b < 0:
        return f"t and b must not be negative (t={t}, b={b})"
    if b > t:
        return f"rule b <= t broken: b={b} > t={t} (Byzantine faults are faults)"
    return None


def pasis_rule(n: int, t: int, b: int, qc: int, m: int) -> str | None:
    """The PASIS constraint summary (seed L1104-1135, spec A.2), the first rule broken."""
    if (why := fault_rule(t, b)) is not None:
        return why
    if not t + b < qc:
        return f"PASIS rule t + b < QC (eq. 3.4) broken: t + b = {t + b}, QC = {qc}"
    if not qc <= n - t - b:
        return f"PASIS rule QC <= N - t - b (eq. 3.1) broken: QC = {qc} > {n} - {t} - {b}"
    if not 1 <= m <= qc - t:
        return f"PASIS rule 1 <= m <= QC - t (eq. 3.5) broken: m = {m}, QC - t = {qc - t}"
    return None


def qu_rule(n: int, t: int, b: int, q: int, r: int) -> str | None:
    """The Q/U threshold constraints (4.2)-(4.4) (seed L2288-2291), the first broken."""
    if (why := fault_rule(t, b)) is not None:
        return why
    if q + t > n:
        return f"Q/U rule (4.2) q + t <= n broken: q={q}, t={t}, n={n}"
    if 2 * q - b - n < r:
        return f"Q/U rule (4.3) 2q - b - n >= r broken: q={q}, b={b}, n={n}, r={r}"
    if q + r - n <= b:
        return f"Q/U rule (4.4) q + r - n > b broken: q={q}, r={r}, n={n}, b={b}"
    return None


def qu_quorums(n: int, t: int, b: int) -> tuple[int, int]:
    """The smallest Q/U quorum ``q`` and repairable set ``r`` for ``n`` servers that meet
    :func:`qu_rule`, with ``r >= t + b + 1``.  At ``n = 3t + 2b + 1`` that is
    ``q = 2t + 2b + 1``, ``r = t + b + 1``; a larger ``n`` needs a larger ``q`` (with t=b=1:
    n=7 gives q=6, n=8 gives q=7).  ``(0, 0)`` when no pair exists (n too small)."""
    for r in range(t + b + 1, n + 1):
        q = max(-(-(n + b + r) // 2), n + b + 1 - r)
        if q + t <= n and qu_rule(n, t, b, q, r) is None:
            return q, r
    return 0, 0


def check(why: str | None) -> None:
    """Raise :class:`ThresholdError` with ``why``, if any."""
    if why is not None:
        raise ThresholdError(why)
