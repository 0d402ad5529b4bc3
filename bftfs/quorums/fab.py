"""The quorums of FaB Paxos (seed 003 section 6.6, L6411-7070), sized and checked.

FaB Paxos has ``a`` acceptors, ``p`` proposers and ``l`` learners, up to ``f`` of each
Byzantine.  Its thresholds, each a ceiling of half a sum so that two such sets meet in
enough correct processes:

- ``learn = ceil((a + 3f + 1) / 2)`` matching ACCEPTED messages make a learner learn
  (Fig. 6.6 line 27, L6494);
- ``chosen = ceil((a + f + 1) / 2)`` *correct* acceptors accepting one value for one
  proposal number make it chosen (L6540-6545, L6842);
- a progress certificate holds ``a - f`` replies (L6705) and vouches only for a value
  that appears ``vouch = ceil((a - f + 1) / 2)`` times in it (Definition 15, L6865);
- ``election = ceil((p + f + 1) / 2)`` suspicious proposers replace the regent (L6650;
  the same count satisfies the leader, Fig. 6.6 line 4, L6471) and
  ``ceil((l + f + 1) / 2)`` learners make a proposer satisfied (Fig. 6.6 line 8, L6475);
- ``f + 1`` matching pull answers make a lagging learner learn (Fig. 6.6 line 42).

**Parameterized FaB Paxos** (section 6.7, L7072-7330, Fig. 6.9) adds ``t`` (``0 <= t <= f``):
``a = 3f + 2t + 1`` acceptors, safe with ``f`` Byzantine, two-step despite ``t`` faulty.
Acceptors sign their ACCEPTED and collect a *commit proof*: ``commit = ceil((a + f + 1) / 2)``
statements accepting one value for one proposal number (``valid``, Fig. 6.9 line 284); a
learner also learns on ``commit`` commit proofs (line 263), three steps, live with ``f``
faulty.  With ``t = f`` (FaB Paxos, ``5f + 1``) there are no commit proofs: the cluster
behaves as plain FaB (:attr:`FabQuorums.commits` is False).  :func:`fast_faults` is the
``t`` a cluster of ``n`` nodes runs with: the largest the node count allows.

:func:`broken` names the first property a configuration breaks, from the sizes alone (the
proofs of Theorem 13, Lemma 44, Lemma 45 and Lemma 46, L6935-7040); :func:`exhaustive`
checks the same properties by enumerating every set for small ``a``, so a wrong formula
cannot hide behind a wrong proof.  A configuration may pass its own sizes (``learn``,
``vouch``) to show what breaks when one is weakened; ``FabQuorums.checked`` refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from bftfs.quorums.systems import MAX_SERVERS, mask


def _ceil_half(x: int) -> int:
    return -(-x // 2)


def learn_size(a: int, f: int) -> int:
    """``ceil((a + 3f + 1) / 2)``: ACCEPTED messages a learner needs (L6494)."""
    return _ceil_half(a + 3 * f + 1)


def chosen_size(a: int, f: int) -> int:
    """``ceil((a + f + 1) / 2)``: correct acceptors that make a value chosen (L6842)."""
    return _ceil_half(a + f + 1)


def commit_size(a: int, f: int) -> int:
    """``ceil((a + f + 1) / 2)``: ACCEPTED statements in a commit proof, and commit proofs a
    learner needs (Fig. 6.9 lines 263 and 286)."""
    return chosen_size(a, f)


def fast_faults(n: int, f: int) -> int:
    """The ``t`` of ``n`` nodes: ``min(f, (n - 3f - 1) // 2)``, the most faults the cluster
    stays two-step through (``n >= 3f + 2t + 1``); 0 when ``n < 3f + 3`` (then only
    ``n >= 3f + 1`` keeps it safe and live, :func:`broken` says when not)."""
    return max(0, min(f, (n - 3 * f - 1) // 2))


def vouch_size(a: int, f: int) -> int:
    """``ceil((a - f + 1) / 2)``: appearances in a progress certificate that bind it to one
    value (Definition 15, L6865)."""
    return _ceil_half(a - f + 1)


def election_size(p: int, f: int) -> int:
    """``ceil((p + f + 1) / 2)``: proposers whose suspicion replaces a regent (L6650)."""
    return _ceil_half(p + f + 1)


class FabConfigError(ValueError):
    """A FaB configuration that breaks a property; the message names it."""


@dataclass(frozen=True)
class FabQuorums:
    """The sizes one FaB Paxos cluster runs with.

    Build it with :meth:`checked` (refuses an unsafe or not two-step configuration) or
    :meth:`standard` (every role on each of ``5f + 1`` nodes).  The constructor itself takes
    any sizes, so a test can run the protocol with one weakened and watch it fail.
    """

    a: int  # acceptors
    p: int  # proposers
    l: int  # noqa: E741 - the seed's name for the number of learners
    f: int
    learn: int  # matching ACCEPTED a learner needs; normally learn_size(a, f)
    vouch: int  # progress-certificate binding threshold; normally vouch_size(a, f)
    #: Faults the cluster stays two-step through (Parameterized FaB, L7110); None: ``f``.
    t: int | None = None

    @property
    def fast(self) -> int:
        """``t``: faulty acceptors a two-step learn survives."""
        return self.f if self.t is None else self.t

    @property
    def commits(self) -> bool:
        """Whether acceptors sign ACCEPTED and collect commit proofs (``t < f``: a learn
        quorum alone would not survive ``f`` silent acceptors)."""
        return self.fast < self.f

    @property
    def commit(self) -> int:
        """``ceil((a + f + 1) / 2)``: the size of a commit proof (Fig. 6.9 line 286)."""
        return commit_size(self.a, self.f)

    @property
    def certificate(self) -> int:
        """``a - f``: replies in a progress certificate (L6705)."""
        return self.a - self.f

    @property
    def election(self) -> int:
        """Suspicions that replace a regent."""
        return election_size(self.p, self.f)

    @property
    def pull(self) -> int:
        """``f + 1`` matching answers to a PULL: one comes from a correct learner."""
        return self.f + 1

    @classmethod
    def of(
        cls,
        a: int,
        f: int,
        p: int | None = None,
        l: int | None = None,  # noqa: E741
        t: int | None = None,
    ) -> FabQuorums:
        """The seed's sizes for ``a`` acceptors (``p`` and ``l`` default to ``a``, ``t`` to
        ``f``: plain FaB), unchecked."""
        p, l = a if p is None else p, a if l is None else l  # noqa: E741
        return cls(a, p, l, f, learn_size(a, f), vouch_size(a, f), None if t == f else t)

    @classmethod
    def checked(
        cls,
        a: int,
        f: int,
        p: int | None = None,
        l: int | None = None,  # noqa: E741
        t: int | None = None,
    ) -> FabQuorums:
        """The seed's sizes, refused when they break a property.

        Raises:
            FabConfigError: naming the property (:func:`broken`).
        """
        q = cls.of(a, f, p, l, t)
        if (why := broken(q)) is not None:
            raise FabConfigError(why)
        return q

    @classmethod
    def standard(cls, f: int) -> FabQuorums:
        """``5f + 1`` nodes, each acceptor, proposer and learner (bftfs's six nodes at f=1)."""
        return cls.checked(5 * f + 1, f)

    @classmethod
    def cluster(cls, n: int, f: int) -> FabQuorums:
        """``n`` nodes, each of the three roles, with ``t = fast_faults(n, f)``: plain FaB
        from ``5f + 1``, Parameterized FaB with commit proofs from ``3f + 1``.

        Raises:
            FabConfigError: ``n`` too small for ``f`` (:func:`broken`).
        """
        return cls.checked(n, f, t=fast_faults(n, f))


def broken(q: FabQuorums) -> str | None:
    """The first FaB property ``q`` breaks, by proof from the sizes; None when it is sound.

    - F0: ``0 <= f``, ``p >= 3f + 1``, ``l >= 3f + 1`` (L6439; leader election and pull need
      a correct majority of suspicions and ``f + 1`` correct learners).
    - F1 (Theorem 13, L6982): a learn quorum holds ``learn - f >= chosen`` correct acceptors,
      so a learned value was chosen.
    - F2 (Lemma 44, L6935): ``chosen`` correct acceptors are a majority of the ``a - f``
      correct ones, so one proposal number chooses one value.
    - F3 (Lemma 45, L6945): a progress certificate of ``a - f`` replies keeps
      ``(a - f) - (a - chosen) = chosen - f >= vouch`` replies from the acceptors that chose
      ``v``, and ``vouch`` is a strict majority of the certificate (one value binds it;
      Lemma 50, L7460).
    - F4 (two steps despite ``t`` silent acceptors, L6439, L7110; Theorem 10, L6299):
      ``learn <= a - t`` (``a >= 3f + 2t + 1``).
    - F5 (with commit proofs, Lemma 48's second case, L7290): a progress certificate
      holds a commit proof of a chosen value from a correct acceptor:
      ``commit - f - f >= 1``.
    - F6 (with commit proofs, liveness despite ``f`` faulty, L7225): ``commit <= a - f``
      correct acceptors can each gather a commit proof (``a >= 3f + 1``).
    """
    a, f, t = q.a, q.f, q.fast
    chosen = chosen_size(a, f)
    if f < 0 or a <= 0:
        return f"F0: no FaB cluster with a={a}, f={f}"
    if not 0 <= t <= f:
        return f"F0: t={t} must be in 0..f={f} (L7110)"
    if q.p < 3 * f + 1 or q.l < 3 * f + 1:
        return f"F0: p={q.p} and l={q.l} must be at least 3f + 1 = {3 * f + 1} (L6439)"
    if q.learn - f < chosen:
        return (
            f"F1: a learner learns on {q.learn} ACCEPTED, {f} of them may lie, leaving "
            f"{q.learn - f} < {chosen} correct: a learned value need not be chosen"
        )
    if 2 * chosen <= a - f:
        return f"F2: {chosen} correct acceptors are not a majority of the {a - f} correct ones"
    if q.certificate - (a - chosen) < q.vouch:
        return (
            f"F3: a progress certificate of {q.certificate} replies may hold only "
            f"{q.certificate - (a - chosen)} from acceptors that chose a value, fewer "
            f"than the {q.vouch} that bind it (a new leader could propose another value)"
        )
    if 2 * q.vouch <= q.certificate:
        return f"F3: {q.vouch} is not a majority of a {q.certificate}-reply certificate"
    if q.learn > a - t:
        return (
            f"F4: a learner needs {q.learn} ACCEPTED but only a - t = {a - t} acceptors are "
            f"sure to answer: not two-step with t={t} faulty "
            f"(a >= 3f + 2t + 1 = {3 * f + 2 * t + 1})"
        )
    if q.commits and q.commit - 2 * f < 1:
        return (
            f"F5: a certificate of {q.certificate} replies may hold no commit proof from a "
            f"correct holder of one of {q.commit} (a > 3f = {3 * f})"
        )
    if q.commits and q.commit > a - f:
        return f"F6: a commit proof needs {q.commit} > a - f = {a - f} correct acceptors"
    return None


def exhaustive(q: FabQuorums) -> str | None:
    """F1-F4 checked by enumerating every faulty set, learn quorum and certificate of the
    ``a`` acceptors (``a <= 16``; well under a second at ``a = 11``); the same answer as
    :func:`broken` for the seed's sizes, which the tests check.

    Raises:
        ValueError: ``a`` too large to enumerate.
    """
    a, f = q.a, q.f
    if not 0 < a <= MAX_SERVERS:
        raise ValueError(f"exhaustive check needs 1..{MAX_SERVERS} acceptors, not {a}")
    every = range(a)
    chosen = chosen_size(a, f)
    faulty_sets = [mask(b) for b in combinations(every, f)]
    # F1: some learn quorum minus some faulty set has fewer than `chosen` members.
    for lq in (mask(c) for c in combinations(every, q.learn)):
        for b in faulty_sets:
            if (lq & ~b).bit_count() < chosen:
                return f"F1: learn quorum {lq:#x} minus faulty {b:#x} is not a chosen set"
    # F2/F3: for every faulty set B, chosen set C of correct acceptors and certificate P:
    # P holds >= vouch entries from C (the certificate binds to the chosen value) and two
    # chosen sets of correct acceptors meet.
    for b in faulty_sets:
        correct = [u for u in every if not b >> u & 1]
        chosen_sets = [mask(c) for c in combinations(correct, chosen)]
        for c1 in chosen_sets:
            if any(c1 & c2 == 0 for c2 in chosen_sets):
                return f"F2: two chosen sets of correct acceptors are disjoint (faulty {b:#x})"
            for pc in (mask(p) for p in combinations(every, q.certificate)):
                if (pc & c1).bit_count() < q.vouch:
                    return (
                        f"F3: certificate {pc:#x} holds {(pc & c1).bit_count()} < {q.vouch} "
                        f"replies of chosen set {c1:#x}"
                    )
    if 2 * q.vouch <= q.certificate:
        return f"F3: {q.vouch} is not a majority of a {q.certificate}-reply certificate"
    if q.learn > a - q.fast:
        return f"F4: no learn quorum avoids some {q.fast} silent acceptors"
    return _exhaustive_commits(q, faulty_sets) if q.commits else None


def _exhaustive_commits(q: FabQuorums, faulty_sets: list[int]) -> str | None:
    """F5 and F6 by enumeration: every set of ``commit`` holders of a commit proof meets
    every certificate in a correct acceptor, and some ``commit`` acceptors avoid every
    faulty set."""
    every = range(q.a)
    holders = [mask(c) for c in combinations(every, q.commit)]
    certificates = [mask(p) for p in combinations(every, q.certificate)]
    for b in faulty_sets:
        for h in holders:
            for pc in certificates:
                if h & pc & ~b == 0:
                    return f"F5: certificate {pc:#x} holds no correct holder of {h:#x}"
        if not any(h & b == 0 for h in holders):
            return f"F6: every commit proof needs an acceptor of faulty {b:#x}"
    return None
