"""Progress certificates (bftfs/fab/certificates.py) against the seed's definitions, by
Hypothesis: Definition 15 (L6865) by brute force, Lemma 45 (L6945: a chosen value binds
every later certificate) and Lemma 50 (L7460: a certificate vouches for some value),
over random certificates built from signed REP statements."""

from __future__ import annotations

from collections import Counter

from fab_sim import keys_for
from hypothesis import given
from hypothesis import strategies as st

from bftfs.fab.auth import sign
from bftfs.fab.certificates import ProgressCertificate, progress_certificate, rep_body
from bftfs.fab.messages import Rep
from bftfs.quorums.fab import FabQuorums, chosen_size

VALUES = [b"v", b"w", b"x"]


def _certificate(q: FabQuorums, reports: dict[int, bytes | None]) -> ProgressCertificate:
    """The certificate acceptor 0 builds from REPs for proposal 1 at slot 1, where
    ``reports[j]`` is what acceptor ``j`` says it accepted (None: nothing)."""
    reps = []
    for j, value in reports.items():
        body = rep_body(1, 0, {} if value is None else {1: value})
        reps.append(Rep(sign(j, keys_for(j), body, q.a), ()))
    pc = progress_certificate(0, keys_for(0), q, q.a, 1, 0, reps)
    assert not isinstance(pc, str), pc
    return pc


reports_strategy = st.lists(st.sampled_from([*VALUES, None]), min_size=5, max_size=5)


@given(reports_strategy)
def test_vouching_is_definition_15(reports: list[bytes | None]) -> None:
    """A certificate vouches for ``v`` iff no other value appears ceil((a - f + 1) / 2)
    times in it (brute force over the five REPs of a = 6, f = 1)."""
    q = FabQuorums.standard(1)
    pc = _certificate(q, dict(enumerate(reports)))
    counts = Counter(r for r in reports if r is not None)
    for v in VALUES:
        expected = not any(c >= q.vouch for w, c in counts.items() if w != v)
        assert pc.vouches(1, v) == expected


@given(reports_strategy)
def test_every_certificate_vouches_for_some_value(reports: list[bytes | None]) -> None:
    """Lemma 50: with a - f entries, no two values both reach the binding count."""
    q = FabQuorums.standard(1)
    pc = _certificate(q, dict(enumerate(reports)))
    assert any(pc.vouches(1, v) for v in VALUES)


@given(
    f=st.sampled_from([1, 2]),
    data=st.data(),
)
def test_a_chosen_value_binds_every_later_certificate(f: int, data: st.DataObject) -> None:
    """Lemma 45: ``v`` accepted by ``chosen`` correct acceptors; Byzantine acceptors report
    anything, the rest of the correct ones anything they may have accepted; every
    certificate of any ``a - f`` of them is bound to ``v``."""
    q = FabQuorums.standard(f)
    acceptors = list(range(q.a))
    faulty = set(
        data.draw(st.lists(st.sampled_from(acceptors), min_size=f, max_size=f, unique=True))
    )
    correct = [j for j in acceptors if j not in faulty]
    chose = set(
        data.draw(
            st.lists(
                st.sampled_from(correct),
                min_size=chosen_size(q.a, f),
                max_size=chosen_size(q.a, f),
                unique=True,
            )
        )
    )
    members = data.draw(
        st.lists(
            st.sampled_from(acceptors), min_size=q.certificate, max_size=q.certificate, unique=True
        )
    )
    reports = {}
    for j in members:
        if j in chose:
            reports[j] = b"v"
        else:  # a correct acceptor outside the chosen set, or a Byzantine one
            reports[j] = data.draw(st.sampled_from([b"w", b"x", None] + ([b"v"] * (j in faulty))))
    pc = _certificate(q, reports)
    assert pc.bound(1) == b"v"
    assert not pc.vouches(1, b"w") and not pc.vouches(1, b"x")
