"""``bftfs/health.py``: findings against nodes stand above the operator's baseline."""

from __future__ import annotations

from pathlib import Path

from bftfs import health


def test_findings_stand_above_the_baseline_and_survive_a_reload(tmp_path: Path) -> None:
    assert health.standing(health.load(tmp_path), {}) == {}
    health.add_verify(tmp_path, {"4": 303, "2": 0})
    totals = {
        0: {"4:corrupt": 5, "0:damaged": 2, "0:repaired": 2},
        1: {"4:corrupt": 3, "4:refuted": 1, "1:corrupt": 9},  # about itself: not evidence
    }
    got = health.standing(health.load(tmp_path), totals)
    assert sorted(got) == [0, 4]
    assert got[4].verify == 303 and got[4].reported == {"corrupt": 8, "refuted": 1}
    assert got[4].reporters == {0, 1}
    assert got[0].scrub == {"damaged": 2, "repaired": 2} and not got[0].reported
    assert "bftfs verify rewrote 303" in health.describe(4, got[4])

    health.clear(tmp_path, totals)
    assert health.standing(health.load(tmp_path), totals) == {}
    later = {0: {"4:corrupt": 6, "0:damaged": 2}, 1: {"4:corrupt": 1}}  # node 1's store new
    got = health.standing(health.load(tmp_path), later)
    assert got[4].reported == {"corrupt": 2} and got[4].verify == 0
    assert 0 not in got


def test_a_damaged_record_reads_as_empty(tmp_path: Path) -> None:
    health.path_of(tmp_path).write_text("{not json")
    assert health.load(tmp_path) == health.Record()
