"""The three certificates of FaB Paxos and the statements they are made of.

- **Leader-election proof** (Fig. 6.7, L6632-6665): ``election`` suspicions of regency
  ``r - 1`` from distinct proposers prove that regency ``r`` began.  Regency 0 needs none.
- **Checkpoint certificate** (L5904-5925): ``f + 1`` matching ``CHECKPOINT(seq, digest)``
  statements; one comes from a correct node that executed every slot up to ``seq``, so
  every slot up to ``seq`` was learned, hence chosen, and needs no new proposal.
- **Progress certificate** (L6705-6720, Definition 15 at L6865): ``a - f`` REP statements
  for proposal number ``pn``, each listing what one acceptor accepted above ``low``.  It
  *vouches* for ``value`` at ``slot`` unless another value appears ``vouch`` times at that
  slot; a slot with no value appearing ``vouch`` times is free (L6870-6880).  An acceptor
  that accepted nothing at a slot contributes no value there, so a poisoned or empty slot
  never binds the certificate (Lemma 50's first case, L7460).
- **Commit proof** (Parameterized FaB, Fig. 6.9 lines 238-245 and 284-289): ``commit =
  ceil((a + f + 1) / 2)`` ACCEPTED statements of distinct acceptors for one value at one
  proposal number: no other value can be chosen at that number (Lemma 47).  With commit
  proofs, each REP also carries its acceptor's commit proof per slot; a slot without one in
  a signed REP is the acceptor's statement of having none (L7262), and the certificate
  vouches for no value another valid commit proof in it contradicts (lines 296-297: the
  seed's ``valid(PC[x].commit proof, d, pnumber)`` checks the proof at its own number; at
  the new one no proof can exist yet, and the text says "a commit proof for any value").

Every check here counts only statements whose MAC entry verifies at the checking node
(:mod:`bftfs.fab.auth`) and only one statement per signer, so a Byzantine leader cannot
add replies and a Byzantine acceptor cannot count twice.  Each check returns a reason
string on failure: the replica reports it as a rejection.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bftfs.fab.auth import KeyLookup, verify
from bftfs.fab.messages import (
    CommitProof,
    MalformedMessage,
    Rep,
    Signed,
    commit_proof_in,
    commit_proof_out,
)
from bftfs.qu.canon import canonical, unpack
from bftfs.quorums.fab import FabQuorums

SUSPECT = "suspect"
REP = "rep"
CHECKPOINT = "checkpoint"
ACCEPTED = "accepted"


def suspect_body(regency: int) -> bytes:
    return canonical([SUSPECT, regency])


def checkpoint_body(seq: int, digest: bytes) -> bytes:
    return canonical([CHECKPOINT, seq, digest])


def accepted_body(pn: int, slot: int, value: bytes) -> bytes:
    """An acceptor's statement of accepting ``value`` at ``pn`` for ``slot`` (line 238); the
    value's hash, not the value: a commit proof carries the value once."""
    return canonical([ACCEPTED, pn, slot, hashlib.sha256(value).digest()])


def rep_body(
    pn: int,
    low: int,
    accepted: Mapping[int, bytes],
    proofs: Mapping[int, CommitProof] | None = None,
) -> bytes:
    """A REP's body: what the acceptor accepted above ``low`` and, with commit proofs (not
    None), its commit proof per slot (line 252; a slot without one: it has none)."""
    body: list[Any] = [REP, pn, low, [[s, v] for s, v in sorted(accepted.items())]]
    if proofs is not None:
        body.append([commit_proof_out(p) for _, p in sorted(proofs.items())])
    return canonical(body)


def check_commit(
    me: int, key: KeyLookup, q: FabQuorums, nodes: int, proof: CommitProof
) -> str | None:
    """``valid`` (Fig. 6.9 lines 284-289): why ``proof`` does not hold ``commit`` verified
    statements of distinct acceptors for its value, slot and number; None when it does."""
    if len(proof.statements) > q.a:  # one per acceptor: more is a liar making work
        return f"commit proof for slot {proof.slot}: {len(proof.statements)} > a statements"
    body = accepted_body(proof.pn, proof.slot, proof.value)
    signers = {
        s.signer
        for s in proof.statements
        if s.signer < q.a and s.body == body and verify(me, key, s, nodes)
    }
    if len(signers) < q.commit:
        return f"commit proof for slot {proof.slot}: {len(signers)} < {q.commit} statements"
    return None


def _parse(body: bytes) -> list[Any] | None:
    try:
        raw = unpack(body)
    except Exception:  # noqa: BLE001 - hostile bytes: any parse failure is "not a statement"
        return None
    return raw if isinstance(raw, list) and raw else None


def _nat(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def parse_suspect(body: bytes) -> int | None:
    """The regency a suspicion names, or None."""
    raw = _parse(body)
    if raw is None or len(raw) != 2 or raw[0] != SUSPECT or not _nat(raw[1]):
        return None
    return int(raw[1])


def parse_checkpoint(body: bytes) -> tuple[int, bytes] | None:
    """``(seq, digest)`` of a checkpoint statement, or None."""
    raw = _parse(body)
    if raw is None or len(raw) != 3 or raw[0] != CHECKPOINT or not _nat(raw[1]):
        return None
    if not isinstance(raw[2], bytes) or len(raw[2]) > 64:
        return None
    return int(raw[1]), raw[2]


@dataclass(frozen=True)
class RepStatement:
    """A parsed REP: acceptor ``signer`` for proposal ``pn``, its stable checkpoint ``low``
    and the value it accepted at each slot above ``low`` (latest proposal number), with its
    commit proof per slot (Parameterized FaB; unchecked here)."""

    signer: int
    pn: int
    low: int
    accepted: dict[int, bytes]
    proofs: dict[int, CommitProof]


def parse_rep(statement: Signed) -> RepStatement | None:
    """The REP a statement carries, or None (malformed, or slots not above ``low``)."""
    raw = _parse(statement.body)
    if raw is None or len(raw) not in (4, 5) or raw[0] != REP:
        return None
    if not _nat(raw[1]) or not _nat(raw[2]):
        return None
    if not isinstance(raw[3], list):
        return None
    accepted: dict[int, bytes] = {}
    for entry in raw[3]:
        if not (isinstance(entry, list) and len(entry) == 2 and _nat(entry[0])):
            return None
        slot, value = entry
        if not isinstance(value, bytes) or slot <= raw[2] or slot in accepted:
            return None
        accepted[slot] = value
    proofs: dict[int, CommitProof] = {}
    for entry in raw[4] if len(raw) == 5 and isinstance(raw[4], list) else []:
        try:
            proof = commit_proof_in(entry)
        except (MalformedMessage, ValueError, TypeError):
            return None
        if proof.slot <= raw[2] or proof.slot in proofs:
            return None
        proofs[proof.slot] = proof
    return RepStatement(statement.signer, int(raw[1]), int(raw[2]), accepted, proofs)


def check_proof(
    me: int, key: KeyLookup, q: FabQuorums, nodes: int, regency: int, proof: Iterable[Signed]
) -> str | None:
    """Why ``proof`` does not show that ``regency`` began; None when it does."""
    if regency == 0:
        return None
    signers = {
        s.signer
        for s in proof
        if s.signer < q.p and parse_suspect(s.body) == regency - 1 and verify(me, key, s, nodes)
    }
    if len(signers) < q.election:
        return f"election proof for regency {regency}: {len(signers)} < {q.election} suspicions"
    return None


def check_low(
    me: int, key: KeyLookup, q: FabQuorums, nodes: int, low: int, certificate: Iterable[Signed]
) -> bytes | str:
    """The state digest ``certificate`` shows stable at checkpoint ``low`` (``b""`` for
    ``low = 0``, the empty start), or why it shows none: a ``str``."""
    if low == 0:
        return b""
    votes: dict[bytes, set[int]] = {}
    for s in certificate:
        parsed = parse_checkpoint(s.body)
        if parsed is not None and parsed[0] == low and verify(me, key, s, nodes):
            votes.setdefault(parsed[1], set()).add(s.signer)
    for digest, signers in votes.items():
        if len(signers) >= q.f + 1:
            return digest
    return f"checkpoint certificate for {low}: fewer than f + 1 = {q.f + 1} matching"


@dataclass(frozen=True)
class ProgressCertificate:
    """``a - f`` verified REPs for proposal number ``pn`` above checkpoint ``low``."""

    pn: int
    low: int
    counts: dict[int, Counter[bytes]]  # slot -> how many REPs report each value there
    vouch: int
    #: slot -> value -> highest proposal number of a valid commit proof for it in a REP
    #: (Parameterized FaB; empty in plain FaB).
    commits: dict[int, dict[bytes, int]] = field(default_factory=dict)

    def _counted(self, slot: int) -> bytes | None:
        for value, count in self.counts.get(slot, Counter()).items():
            if count >= self.vouch:
                return value
        return None

    def bound(self, slot: int) -> bytes | None:
        """The value the certificate is bound to at ``slot``, or None: any value may be
        proposed there.  A value with a commit proof in the certificate (of the highest
        number if several: then none is vouched for, lines 296-297), else one that appears
        ``vouch`` times and so may have been chosen (Lemma 45)."""
        proven = self.commits.get(slot)
        if proven:
            return max(proven.items(), key=lambda vp: (vp[1], vp[0]))[0]
        return self._counted(slot)

    def vouches(self, slot: int, value: bytes) -> bool:
        """``vouches-for`` (Definition 15; Fig. 6.9 lines 291-299): no value other than
        ``value`` appears ``vouch`` times at ``slot`` (lines 292-295), and no commit proof in
        the certificate is for another value (lines 296-298)."""
        counted = self._counted(slot)
        if counted is not None and counted != value:
            return False
        return all(v == value for v in self.commits.get(slot, {}))

    def slots(self) -> list[int]:
        """Slots above ``low`` that some REP reports, in order."""
        return sorted(self.counts)


def progress_certificate(
    me: int, key: KeyLookup, q: FabQuorums, nodes: int, pn: int, low: int, reps: Iterable[Rep]
) -> ProgressCertificate | str:
    """The progress certificate ``reps`` make for ``pn`` above ``low``, or why they do not.

    Counted: one REP per acceptor whose entry verifies here, for ``pn``, whose own
    checkpoint is not above ``low`` (a REP above ``low`` may have collected slots the
    certificate must see, so the leader may not leave them out).
    """
    counts: dict[int, Counter[bytes]] = {}
    commits: dict[int, dict[bytes, int]] = {}
    seen: set[int] = set()
    for rep in reps:
        if len(seen) == q.certificate:
            break  # exactly a - f: then `vouch` is a strict majority and binds one value
        parsed = parse_rep(rep.statement)
        if parsed is None or parsed.signer >= q.a or parsed.signer in seen:
            continue
        if parsed.pn != pn or parsed.low > low or not verify(me, key, rep.statement, nodes):
            continue
        seen.add(parsed.signer)
        for slot, value in parsed.accepted.items():
            if slot > low:
                counts.setdefault(slot, Counter())[value] += 1
        for slot, proof in parsed.proofs.items():
            # a proof that does not verify here counts as none (a Byzantine acceptor may
            # claim to have none anyway); Lemma 48 needs only the correct holders' proofs
            if slot > low and check_commit(me, key, q, nodes, proof) is None:
                at = commits.setdefault(slot, {})
                at[proof.value] = max(at.get(proof.value, 0), proof.pn)
    if len(seen) < q.certificate:
        return f"progress certificate for {pn}: {len(seen)} < a - f = {q.certificate} replies"
    return ProgressCertificate(pn, low, counts, q.vouch, commits)
