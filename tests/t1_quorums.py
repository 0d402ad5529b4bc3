"""Seed 001's quorum systems (bftfs/quorums/, docs/quorums.md): the constructions hold their
intersection properties (by the size arithmetic and by enumerating every pair for small
``n``), a construction weakened by one server, one row or one grid line is caught with the
pair that breaks it, loads and fault tolerances match the seed's formulas, the sizes bftfs
runs are the quorum systems the rules say, and ``bftfs quorums`` reports them."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from itertools import combinations
from math import isqrt

import pytest

from bftfs.cli.main import main
from bftfs.config import ClusterConfig, ConfigError, default_sizes
from bftfs.quorums import check, measures
from bftfs.quorums import grid as gr
from bftfs.quorums import threshold as th
from bftfs.quorums.systems import (
    SetSystem,
    all_subsets,
    complements,
    fail_prone_threshold,
    partition,
)
from bftfs.quorums.threshold import Kind
from bftfs.thresholds import pasis_rule, qu_quorums

CHECKS = {
    Kind.MASKING: check.masking,
    Kind.DISSEMINATION: check.dissemination,
    Kind.OPAQUE: check.opaque,
}


def _witness_is_real(v: check.Violation, f: int, n: int) -> None:
    """The violation's own witnesses break the property it names (recomputed here from the
    definitions, seed L100-102, L195-197, L243-245), with fail-prone sets of ``f``."""
    universe = (1 << n) - 1
    for b in (v.b1, v.b2):
        assert b == -1 or (b & ~universe == 0 and b.bit_count() <= f)
    meet = v.q1 & v.q2
    if v.prop == "M1":
        assert meet & ~v.b1 & ~v.b2 == 0
    elif v.prop == "D1":
        assert meet & ~v.b1 == 0
    elif v.prop == "O1":
        against = (v.q2 & v.b1) | (v.q2 & ~v.q1)
        assert (meet & ~v.b1).bit_count() < against.bit_count()
    elif v.prop == "O2":
        assert (meet & ~v.b1).bit_count() <= (v.q2 & v.b1).bit_count()
    else:
        assert v.prop in ("M2", "D2", "O3") and v.b1 != -1


# --- threshold constructions (Examples 4.7, 5.7, 5.12) ------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("f", [0, 1, 2])
def test_threshold_constructions_hold_exhaustively_from_their_minimum(kind: Kind, f: int) -> None:
    for n in range(max(1, th.min_servers(kind, f)), 13):
        q = th.quorum_size(kind, n, f)
        assert th.broken(kind, n, f, q) is None, (kind, n, f)
        assert CHECKS[kind](all_subsets(n, q), fail_prone_threshold(n, f)) is None, (n, q)


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("f", [1, 2])
def test_a_threshold_construction_one_server_short_is_caught_with_its_pair(
    kind: Kind, f: int
) -> None:
    n = th.min_servers(kind, f) + 1
    q = th.quorum_size(kind, n, f) - 1
    v = CHECKS[kind](all_subsets(n, q), fail_prone_threshold(n, f))
    assert v is not None and v.prop in ("M1", "D1", "O1", "O2"), v
    _witness_is_real(v, f, n)
    assert th.broken(kind, n, f, q) is not None


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("f", [1, 2])
def test_no_quorum_size_works_one_server_below_the_bound(kind: Kind, f: int) -> None:
    """Cor. 4.4 (n > 4f), Cor. 5.5 (n > 3f), Thm. 5.13 (n >= 5f): every threshold system on
    one server fewer breaks a property, and the checker shows which pair or set does."""
    n = th.min_servers(kind, f) - 1
    bs = fail_prone_threshold(n, f)
    for q in range(1, n + 1):
        v = CHECKS[kind](all_subsets(n, q), bs)
        assert v is not None, (kind, n, q)
        _witness_is_real(v, f, n)
        assert th.broken(kind, n, f, q) is not None


def test_the_size_arithmetic_agrees_with_enumeration_for_every_small_system() -> None:
    for n in range(1, 11):
        for f in range(min(3, n + 1)):
            bs = fail_prone_threshold(n, f)
            for q in range(1, n + 1):
                qs = all_subsets(n, q)
                for kind in Kind:
                    by_proof = th.broken(kind, n, f, q) is None
                    assert by_proof == (CHECKS[kind](qs, bs) is None), (kind, n, f, q)


# --- grids (Examples 4.8, 5.8) -------------------------------------------------------------


def test_the_masking_grid_holds_and_has_the_seeds_load() -> None:
    k, f = 4, 1
    qs = gr.grid(k, gr.grid_rows(Kind.MASKING, f))
    assert k == gr.grid_min_side(Kind.MASKING, f)
    assert check.masking(qs, fail_prone_threshold(k * k, f)) is None
    load = measures.load(qs)
    assert load.exact and load.uniform == gr.grid_load(k, 3) == Fraction(13, 16)
    assert load.uniform == Fraction((2 * f + 2) * isqrt(k * k) - (2 * f + 1), k * k)  # L168
    assert measures.fault_tolerance(qs) == gr.grid_fault_tolerance(k, 3) == 1


def test_a_grid_with_too_few_rows_is_caught_with_its_pair() -> None:
    """Quorums of a column and ``f`` rows: two with different columns and disjoint rows
    meet in ``2f`` servers, which two faulty sets cover."""
    k, f = 4, 1
    v = check.masking(gr.grid(k, rows=f), fail_prone_threshold(k * k, f))
    assert v is not None and v.prop == "M1"
    assert (v.q1 & v.q2).bit_count() == 2 * f
    _witness_is_real(v, f, k * k)


def test_a_grid_too_small_for_its_rows_is_caught_with_the_faulty_set() -> None:
    """``3f + 1 <= sqrt(n)`` (L162): on a 3x3 grid, 2f + 1 = 3 rows are every row, and one
    faulty server meets every quorum."""
    v = check.masking(gr.grid(3, rows=3), fail_prone_threshold(9, 1))
    assert v is not None and v.prop == "M2" and v.b1.bit_count() == 1


def test_a_grid_without_a_column_is_caught_with_its_pair() -> None:
    v = check.dissemination(gr.grid(4, rows=2, columns=0), fail_prone_threshold(16, 1))
    assert v is not None and v.prop == "D1" and v.q1 & v.q2 == 0


def test_the_seeds_masking_grid_is_conservative() -> None:
    """Found by the checker (docs/quorums.md): the seed counts only one quorum's column
    crossing the other's rows; both cross, so ``f + 1`` rows already give ``2f + 2``
    shared servers and M1 holds, at a lower load than ``2f + 1`` rows."""
    k, f = 4, 1
    qs = gr.grid(k, rows=f + 1)
    assert check.masking(qs, fail_prone_threshold(k * k, f)) is None
    assert measures.uniform_load(qs) == Fraction(10, 16) < gr.grid_load(k, 2 * f + 1)


def test_the_dissemination_grid_holds_and_has_the_seeds_load() -> None:
    k, f = 3, 1
    qs = gr.grid(k, gr.grid_rows(Kind.DISSEMINATION, f))
    assert check.dissemination(qs, fail_prone_threshold(9, f)) is None
    assert measures.uniform_load(qs) == Fraction((f + 2) * k - (f + 1), 9) == Fraction(7, 9)


def test_grid_load_falls_as_one_over_sqrt_n_and_never_below_the_bound() -> None:
    """Cor. 4.6 (L154): every quorum system's load is at least ``1/sqrt(n)``; the f = 0 grid
    comes within a factor 2 of it (L170), a threshold system stays above 1/2."""
    for k in (2, 3, 4):
        load = measures.load(gr.grid(k, rows=1))
        assert load.exact and Fraction(1, k) <= load.uniform < Fraction(2, k)
    assert measures.load(all_subsets(16, 9)).uniform > Fraction(1, 2)


# --- load and availability -----------------------------------------------------------------


def test_threshold_load_and_availability_match_enumeration() -> None:
    n, q = 7, 5
    qs = all_subsets(n, q)
    assert measures.load(qs).uniform == measures.load_bound(qs) == th.load(q, n)
    assert measures.fault_tolerance(qs) == th.fault_tolerance(q, n) == 2
    for p in (0.01, 0.1, 0.5):
        assert measures.failure_probability(qs, p) == pytest.approx(th.failure_probability(q, n, p))


def test_opaque_load_bound_is_one_half() -> None:
    """Thm. 5.15 (L286): an opaque system's load is at least 1/2 whatever its quorums."""
    assert measures.load_bound(all_subsets(16, 2), opaque=True) == Fraction(1, 2)


def test_a_partition_fail_prone_system_gets_super_element_quorums() -> None:
    """Example 4.9 (L177-181): five clusters, at most one faulty; quorums of
    ``ceil((m + 3) / 2) = 4`` whole clusters are masking."""
    bs = partition([2, 2, 2, 2, 2])
    blocks = bs.sets
    qs = SetSystem(10, tuple(a | b | c | d for a, b, c, d in combinations(blocks, 4)), "4 of 5")
    assert check.masking(qs, bs) is None
    three = SetSystem(10, tuple(a | b | c for a, b, c in combinations(blocks, 3)), "3 of 5")
    v = check.masking(three, bs)
    assert v is not None and v.prop == "M1"


@pytest.mark.parametrize(("blocks", "masking", "dissemination"), [(5, 1, 1), (4, 0, 1), (3, 0, 0)])
def test_whether_a_system_exists_for_failure_domains(
    blocks: int, masking: int, dissemination: int
) -> None:
    """Thm. 4.3 / 5.4 (L122, L217): one exists iff the complements of the fail-prone sets
    are one; for a partition, iff no four (masking) or three (dissemination) blocks cover
    the servers (Cor. 4.4, 5.5: ``m > 4``, ``m > 3``, L177, L233)."""
    bs = partition([2] * blocks)
    qs = complements(bs)
    assert (check.masking(qs, bs) is None) == bool(masking)
    assert (check.dissemination(qs, bs) is None) == bool(dissemination)


def test_explicit_systems_refuse_what_they_cannot_enumerate() -> None:
    with pytest.raises(ValueError, match="1..16 servers"):
        all_subsets(17, 2)
    with pytest.raises(ValueError, match="n = k\\*k"):
        gr.grid_side(10)


# --- the protocols bftfs runs --------------------------------------------------------------


@pytest.mark.parametrize(("t", "b"), [(1, 1), (1, 0), (2, 1)])
def test_q_u_sizes_are_an_opaque_system_available_with_t_down(t: int, b: int) -> None:
    """Q/U's quorums (every ``q`` of ``n``) are an opaque quorum system for ``b`` liars
    (voting, seed 001 Def. 5.10) that a quorum survives ``t`` crashes of, and a quorum
    meets any ``r`` servers outside every ``b``-set (rule 4.4 as D1), for every ``n`` up to
    12; with one server less in the quorum the checker finds the pair."""
    for n in range(3 * t + 2 * b + 1, 13):
        q, r = qu_quorums(n, t, b)
        qs, bs, ts = all_subsets(n, q), fail_prone_threshold(n, b), fail_prone_threshold(n, t)
        if b:
            assert check.opaque(qs, bs, ts) is None, (n, q)
        assert check.availability("O3", qs, ts) is None
        assert check.d1(qs, all_subsets(n, r), bs) is None
    n = 3 * t + 2 * b + 1
    q, r = qu_quorums(n, t, b)
    v = check.d1(all_subsets(n, q - 1), all_subsets(n, r), fail_prone_threshold(n, b))
    assert v is not None
    _witness_is_real(v, b, n)


@pytest.mark.parametrize(("t", "b"), [(1, 1), (2, 1), (2, 2)])
def test_pasis_sizes_meet_every_read_in_more_than_b(t: int, b: int) -> None:
    """PASIS's rules (3.4) and (3.1) are D1 between a complete write's ``QC`` hosts and a
    read's ``N - t`` replies, and availability of ``QC + b`` replies with ``t`` down."""
    cfg = ClusterConfig.for_test(t=t, b=b)
    n, qc = cfg.n, cfg.qc
    writes, reads = all_subsets(n, qc), all_subsets(n, n - t)
    bs, ts = fail_prone_threshold(n, b), fail_prone_threshold(n, t)
    assert check.d1(writes, reads, bs) is None
    assert check.availability("D2", all_subsets(n, qc + b), ts) is None
    v = check.d1(all_subsets(n, t + b), reads, bs)
    assert v is not None and (v.q1 & v.q2).bit_count() == b


@pytest.mark.parametrize(
    ("t", "b", "sizes"),
    [(1, 1, (6, 5, 3, 4, 3)), (2, 2, (11, 9, 5, 7, 5)), (1, 0, (4, 3, 2, 3, 2))],
)
def test_the_cluster_sizes_are_unchanged(t: int, b: int, sizes: tuple[int, ...]) -> None:
    cfg = ClusterConfig.for_test(t=t, b=b)
    assert (cfg.n, cfg.q, cfg.r, cfg.qc, cfg.m) == sizes


def test_the_default_pasis_sizes_are_the_largest_the_properties_allow() -> None:
    """``QC = N - t - b`` and ``m = QC - t`` as before, now from the properties: one more
    in ``QC`` breaks availability (3.1), one more in ``m`` breaks decoding (3.5)."""
    for t, b in [(1, 1), (1, 0), (2, 1), (2, 2), (3, 1)]:
        for n in range(3 * t + 2 * b + 1, 3 * t + 2 * b + 5):
            _, qc, m = default_sizes(t, b, n)
            assert (qc, m) == (n - t - b, max(1, n - t - b - t))
            assert pasis_rule(n, t, b, qc, m) is None
            assert "eq. 3.1" in str(pasis_rule(n, t, b, qc + 1, m))
            assert "eq. 3.5" in str(pasis_rule(n, t, b, qc, m + 1))


@pytest.mark.parametrize(
    ("kwargs", "prop"),
    [
        ({"qc": 2, "m": 1}, "consistency (D1): a read must meet a complete write"),
        ({"qc": 5, "m": 1}, "availability (D2)"),
        ({"qc": 4, "m": 4}, "decoding"),
        ({"n": 5}, "no quorum size gives both availability"),
    ],
)
def test_an_unsafe_configuration_is_refused_naming_the_property(
    kwargs: dict[str, int], prop: str
) -> None:
    with pytest.raises(ConfigError, match=prop.replace("(", r"\(").replace(")", r"\)")):
        ClusterConfig.for_test(t=1, b=1, **kwargs)


# --- bftfs quorums ---------------------------------------------------------------------------


def test_bftfs_quorums_reports_both_protocols_and_what_fails_at_t_plus_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["quorums", "--t", "1", "--b", "1"]) == 0
    out = capsys.readouterr().out
    assert "n = 6 servers" in out
    assert "Q/U (metadata)  yes   q=5, r=3" in out
    assert "PASIS (blocks)  yes   QC=4, m=3" in out
    assert "Q/U (metadata) at t + 1 = 2 faulty servers: fails" in out
    assert "Q/U rule (4.2) q + t <= n broken: q=5, t=2, n=6; breaks availability" in out
    assert "masking        n >= 5" in out and "opaque         n >= 5" in out
    assert "smallest n=16: quorum 13, load 13/16" in out


def test_bftfs_quorums_refuses_too_few_servers_with_exit_3(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["quorums", "--t", "1", "--b", "1", "--n", "5"]) == 3
    out = capsys.readouterr().out
    assert "Q/U (metadata)  NO" in out and "Q/U needs n >= 3t + 2b + 1 = 6" in out
    assert main(["quorums", "--t", "1", "--b", "2"]) == 3
    assert "b <= t" in capsys.readouterr().out
    assert main(["quorums", "--t", "100", "--b", "100"]) == 3
    assert "n must be in 1..256" in capsys.readouterr().out
    assert main(["quorums", "--t", "1", "--b", "1", "--n", "0"]) == 3
    assert "n must be in 1..256" in capsys.readouterr().out


def test_bftfs_quorums_runs_as_a_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bftfs", "quorums", "--t", "2", "--b", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Q/U (metadata)  yes   q=7, r=4" in done.stdout
