"""The pure parts of benchmarks/engines.py (issue 39's two-engine fault-scalability table):
argument parsing, the per-operation arithmetic, the protocol's expected frames, and the
Markdown table.  No cluster, no timing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import engines  # noqa: E402


def test_lists_are_parsed_and_bad_entries_refused_by_name() -> None:
    assert engines.parse_list(" qu , fab", engines.ENGINES) == ["qu", "fab"]
    with pytest.raises(ValueError, match="unknown pbft"):
        engines.parse_list("qu,pbft", engines.ENGINES)
    with pytest.raises(ValueError, match="empty"):
        engines.parse_list("qu,,fab")
    assert engines.parse_ints("1,2,3") == [1, 2, 3]
    with pytest.raises(ValueError):
        engines.parse_ints("1,0")
    with pytest.raises(ValueError):
        engines.parse_ints("one")


def test_command_line_defaults_and_refusals() -> None:
    args = engines.parse_args([])
    assert (args.engines, args.bs, args.clients) == (["qu", "fab"], [1, 2, 3], [2, 4])
    assert args.name.endswith("-fault-scalability-engines")
    assert not args.leases and engines.parse_args(["--leases"]).leases
    with pytest.raises(SystemExit):
        engines.parse_args(["--engines", "raft"])


def test_protocol_frames_per_node_per_call() -> None:
    assert engines.protocol_frames("qu", 6) == engines.protocol_frames("qu", 16) == 2.0
    # n = 6: 5 PROPOSE, 30 ACCEPTED, 5 LEARNED, 1.875 CHECKPOINT calls (2 frames each at
    # the callee), 6 client requests (2 frames each), 6 replies (1 frame each)
    assert engines.protocol_frames("fab", 6) == pytest.approx((2 * 41.875 + 18) / 6)
    assert engines.protocol_frames("fab", 16) == pytest.approx((2 * 285 + 48) / 16)
    with pytest.raises(ValueError):
        engines.protocol_frames("pbft", 4)


def test_node_counters_group_requests_by_protocol() -> None:
    stats = {
        "traffic": {"frames_in": 10, "frames_out": 5, "bytes_in": 1000, "bytes_out": 24},
        "requests": {"req.fab": 7, "req.qu.update": 3, "req.qu.query": 1, "req.rw.write": 2},
    }
    got = engines.node_counters(stats, 1.5)
    assert got["frames"] == 15 and got["bytes"] == 1024 and got["cpu_s"] == 1.5
    assert (got["fab_requests"], got["qu_requests"], got["rw_requests"]) == (7, 4, 2)
    assert got["ping_requests"] == 0


def _counters(cpu: float, frames: float) -> dict[str, float]:
    out = dict.fromkeys(engines.COUNTERS, 0.0)
    out.update(cpu_s=cpu, frames=frames)
    return out


def test_per_operation_is_the_mean_over_nodes_in_both_snapshots() -> None:
    before = {0: _counters(1.0, 100), 1: _counters(2.0, 100), 2: _counters(0, 0)}
    after = {0: _counters(1.5, 140), 1: _counters(3.0, 180)}  # node 2 went down
    got = engines.per_operation(before, after, 10)
    assert got["frames"] == pytest.approx(6.0)  # (4 + 8) / 2
    assert got["cpu_s"] == pytest.approx(0.075) and got["max_cpu_s"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        engines.per_operation(before, after, 0)


def test_fab_kinds_are_summed_over_nodes_per_operation() -> None:
    before = {0: {"kinds": {"ACCEPTED": 6}}, 1: {}}
    after = {0: {"kinds": {"ACCEPTED": 18, "PROPOSE": 6}}, 1: {"kinds": {"ACCEPTED": 12}}}
    got = engines.kinds_per_operation(before, after, 2)
    assert got == {"ACCEPTED": 12.0, "PROPOSE": 3.0}
    assert list(got) == ["ACCEPTED", "PROPOSE"]  # largest first


def _phase(clients: int, frames: float, ops_per_s: float) -> dict[str, Any]:
    return {
        "clients": clients,
        "qu_requests": 1.5,
        **({"fab_sent": {"REPLY": 9.0}} if frames > 10 else {}),
        "frames": frames,
        "bytes": 2048.0,
        "cpu_s": 0.002,
        "max_cpu_s": 0.003,
        "mounts_cpu_s": 0.001,
        "ops_per_s": ops_per_s,
        "load": [1.0, 1.5],
    }


def test_markdown_puts_the_engines_side_by_side_per_b_and_client_count() -> None:
    result = {
        "engines": ["qu", "fab"],
        "files": 20,
        "commit": {"commit": "abc"},
        "machine": {"cpu": "test"},
        "when": "2026-11-26T00:00:00Z",
        "runs": [
            {"engine": "qu", "b": 1, "n": 6, "phases": [_phase(1, 3.0, 40), _phase(2, 4, 30)]},
            {"engine": "fab", "b": 1, "n": 6, "phases": [_phase(1, 29, 60), _phase(2, 35, 50)]},
            {"engine": "qu", "b": 2, "n": 11, "phases": [_phase(1, 3.2, 20)]},
            {
                "engine": "fab",
                "b": 2,
                "n": 11,
                "phases": [_phase(1, 60, 7)],  # the phases before the failure are kept
                "error": "[Errno 5] Input/output error\nmore",
            },
        ],
    }
    md = engines.markdown(result)
    assert "## 1 client, own directory" in md and "## 2 clients, one directory" in md
    # 1.5 calls per operation each (FaB: 9 REPLY over 6 nodes): 2 and 19.3 frames per call
    assert "| 1 | 6 | 1.50 / 1.50 | 2.0 (2) / 19.3 (17) | 3.0 / 29.0 | 2.00 / 2.00 |" in md
    assert "| 2.00 / 2.00 | 3.00 / 3.00 |" in md
    assert "| 40.0 / 60.0 | 1.0-1.5 / 1.0-1.5 |" in md
    assert "| 2 | 11 | 1.50 / 0.82 | 2.1 (2) / 73.3 (28) | 3.2 / 60.0 |" in md  # one client
    assert "| 40.0 / 60.0 |" in md and "| 2 | 11 | 1.50 / - |" not in md
    assert "- fab b=2 FAILED: [Errno 5] Input/output error" in md and "more" not in md
    assert "mounts with lease=0" in md
    assert "mounts with leases" in engines.markdown({**result, "leases": True})
