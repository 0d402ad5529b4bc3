"""seqio's free-memory state (benchmarks/memstate.py): the choice is parsed and recorded,
``as-is`` touches nothing, ``hot`` drops the page cache and touches memory right before a
phase, and the memory it holds stays within half of what the machine has."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import memstate  # noqa: E402
import seqio  # noqa: E402


def test_seqio_starts_every_phase_hot_unless_told() -> None:
    assert seqio.parse_args([]).memory == "hot"
    assert seqio.parse_args(["--memory", "as-is"]).memory == "as-is"
    with pytest.raises(SystemExit):
        seqio.parse_args(["--memory", "cold"])


def test_the_results_say_which_memory_each_phase_met() -> None:
    hot = seqio._memory_note({"memory": "hot", "free_page_reporting": True})
    assert "just freed by the benchmark" in hot and "reports no" not in hot
    assert "reports no free pages" in seqio._memory_note({"memory": "hot"})
    assert "previous target" in seqio._memory_note({"memory": "as-is"})


def test_as_is_drops_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise AssertionError("as-is must not drop the page cache")

    monkeypatch.setattr(memstate, "drop_caches", refuse)
    assert memstate.prepare("as-is", 200) is None


def test_hot_drops_the_cache_then_touches_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[str] = []
    monkeypatch.setattr(memstate, "drop_caches", lambda: done.append("drop"))
    monkeypatch.setattr(memstate, "touch_and_free", lambda mib: done.append(f"touch {mib}"))
    assert memstate.prepare("hot", 200) is None
    assert done == ["drop", f"touch {memstate.hot_mib(200)}"]
    done.clear()
    assert memstate.prepare("hot", 200, dropped=True) is None  # the read's: already dropped
    assert done == [f"touch {memstate.hot_mib(200)}"]
    monkeypatch.setattr(memstate, "drop_caches", lambda: "page cache not dropped: EPERM")
    assert memstate.prepare("hot", 200) == "page cache not dropped: EPERM"


def test_a_hot_phase_holds_at_most_half_of_the_available_memory() -> None:
    assert memstate.hot_mib(1) <= 2048
    assert memstate.hot_mib(1 << 30) < 1 << 30  # bounded by MemAvailable / 2
    memstate.touch_and_free(4)  # a few pages: runs and gives them back
