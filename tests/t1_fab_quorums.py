"""FaB Paxos quorum sizes (bftfs/quorums/fab.py; seed 003 sections 6.6 and 6.7): the seed's sizes
pass, every weakening is refused naming the property it breaks, and the proof-by-sizes
agrees with the exhaustive enumeration."""

from __future__ import annotations

import pytest

from bftfs.quorums.fab import (
    FabConfigError,
    FabQuorums,
    broken,
    chosen_size,
    commit_size,
    exhaustive,
    fast_faults,
    learn_size,
    vouch_size,
)


@pytest.mark.parametrize("f", [1, 2, 3])
def test_standard_sizes_are_the_seeds(f: int) -> None:
    q = FabQuorums.standard(f)
    assert (q.a, q.p, q.l) == (5 * f + 1,) * 3
    assert q.learn == learn_size(q.a, f) == 4 * f + 1  # ceil((a + 3f + 1) / 2), L6460
    assert q.certificate == 4 * f + 1
    assert q.vouch == vouch_size(q.a, f) == 2 * f + 1  # ceil((a - f + 1) / 2), Def. 15
    assert chosen_size(q.a, f) == 3 * f + 1
    assert q.election == 3 * f + 1 and q.pull == f + 1


def test_six_nodes_at_f1_is_bftfs_cluster() -> None:
    q = FabQuorums.standard(1)
    assert (q.a, q.learn, q.certificate, q.vouch) == (6, 5, 5, 3)


@pytest.mark.parametrize("f", [1, 2])
def test_5f_acceptors_are_refused_as_not_two_step(f: int) -> None:
    with pytest.raises(FabConfigError, match="F4"):
        FabQuorums.checked(5 * f, f)


@pytest.mark.parametrize("f", [1, 2])
def test_learning_on_a_minus_f_with_5f_acceptors_breaks_safety(f: int) -> None:
    """The only way to stay two-step with 5f acceptors, learning on a - f = 4f ACCEPTED,
    leaves too few correct acceptors behind a learned value (F1)."""
    q = FabQuorums(5 * f, 5 * f, 5 * f, f, learn=4 * f, vouch=vouch_size(5 * f, f))
    assert (why := broken(q)) is not None and why.startswith("F1")
    assert (why := exhaustive(q)) is not None and why.startswith("F1")


def test_a_smaller_learn_quorum_is_refused() -> None:
    q = FabQuorums.standard(1)
    weak = FabQuorums(q.a, q.p, q.l, q.f, learn=q.learn - 1, vouch=q.vouch)
    assert (broken(weak) or "").startswith("F1")


def test_a_smaller_vouch_threshold_is_refused() -> None:
    """A certificate bound by a minority could name two values (F3)."""
    q = FabQuorums.standard(1)
    weak = FabQuorums(q.a, q.p, q.l, q.f, learn=q.learn, vouch=q.vouch - 1)
    assert (broken(weak) or "").startswith("F3")
    assert (exhaustive(weak) or "").startswith("F3")


def test_a_larger_vouch_threshold_is_refused() -> None:
    """A certificate that needs more copies than the chosen acceptors leave in it would let
    a new leader replace a chosen value (Lemma 45)."""
    q = FabQuorums.standard(1)
    weak = FabQuorums(q.a, q.p, q.l, q.f, learn=q.learn, vouch=q.vouch + 1)
    assert (broken(weak) or "").startswith("F3")
    assert (exhaustive(weak) or "").startswith("F3")


def test_too_few_proposers_or_learners_are_refused() -> None:
    with pytest.raises(FabConfigError, match="F0"):
        FabQuorums.checked(6, 1, p=3)
    with pytest.raises(FabConfigError, match="F0"):
        FabQuorums.checked(6, 1, l=3)


@pytest.mark.parametrize("f", [1, 2])
@pytest.mark.parametrize("extra", range(-2, 3))
def test_proof_and_enumeration_agree(f: int, extra: int) -> None:
    """For the seed's formulas at a = 5f + 1 + extra, the size proof and the exhaustive
    check give the same verdict (the property named, or none)."""
    a = 5 * f + 1 + extra
    q = FabQuorums.of(a, f)
    by_proof, by_enumeration = broken(q), exhaustive(q)
    assert (by_proof is None) == (by_enumeration is None) == (a >= 5 * f + 1)
    if by_proof is not None and by_enumeration is not None:
        assert by_proof[:2] == by_enumeration[:2]


def test_exhaustive_refuses_a_universe_too_big() -> None:
    with pytest.raises(ValueError, match="exhaustive"):
        exhaustive(FabQuorums.of(21, 4))


# -- Parameterized FaB Paxos (section 6.7, L7072-7330) ---------------------------------------


@pytest.mark.parametrize(("n", "f", "t"), [(4, 1, 0), (5, 1, 0), (6, 1, 1), (7, 2, 0), (9, 2, 1)])
def test_a_cluster_runs_the_largest_t_its_nodes_allow(n: int, f: int, t: int) -> None:
    """t = min(f, (n - 3f - 1) // 2); commit proofs only below 5f + 1."""
    assert fast_faults(n, f) == t
    q = FabQuorums.cluster(n, f)
    assert q.fast == t and q.commits == (t < f)
    assert q.commit == commit_size(n, f) == -(-(n + f + 1) // 2)


def test_four_nodes_at_f1_sizes() -> None:
    """a = 4: two-step on all 4 ACCEPTED, else 3 commit proofs of 3 statements each."""
    q = FabQuorums.cluster(4, 1)
    assert (q.a, q.learn, q.commit, q.certificate, q.vouch) == (4, 4, 3, 3, 2)
    assert broken(q) is None and exhaustive(q) is None


def test_six_nodes_stay_plain_fab() -> None:
    assert FabQuorums.cluster(6, 1) == FabQuorums.standard(1)


@pytest.mark.parametrize("f", [1, 2])
def test_3f_acceptors_are_refused(f: int) -> None:
    with pytest.raises(FabConfigError, match="F0"):
        FabQuorums.cluster(3 * f, f)
    q = FabQuorums.of(3 * f, f, t=0)
    assert (exhaustive(q) or "")[:2] in ("F4", "F5", "F6")


def test_t_beyond_the_nodes_is_refused_as_not_two_step() -> None:
    """Four nodes cannot be two-step despite one fault (a >= 3f + 2t + 1 = 6)."""
    with pytest.raises(FabConfigError, match="F4"):
        FabQuorums.checked(4, 1, t=1)
    with pytest.raises(FabConfigError, match="F0"):
        FabQuorums.checked(6, 1, t=2)


@pytest.mark.parametrize(("a", "f"), [(4, 1), (5, 1), (6, 1), (7, 2), (8, 2), (9, 2)])
@pytest.mark.parametrize("t", [0, 1, 2])
def test_parameterized_proof_and_enumeration_agree(a: int, f: int, t: int) -> None:
    """Safe and live (F1-F6) exactly when a >= 3f + 2t + 1, by proof and by enumeration."""
    if t > f:
        return
    q = FabQuorums.of(a, f, t=t)
    by_proof, by_enumeration = broken(q), exhaustive(q)
    assert (by_proof is None) == (by_enumeration is None) == (a >= 3 * f + 2 * t + 1)
