"""PostMark's "run to settled" figure (``benchmarks/postmark.py``): PostMark's run plus the
time until the target kept its changes (a directory fsync, and for bftfs its mount empty);
a bftfs run whose mount did not settle has none, rather than its run alone (which would
leave out exactly what the column is for)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import common  # noqa: E402
import postmark  # noqa: E402
from common import bftfs_spec, local_spec  # noqa: E402


def _run(target: str, b: int | None, wall: float, settle: float | None) -> dict[str, Any]:
    return {"target": target, "b": b, "tps": 100.0, "wall_s": wall, "settle_s": settle}


def test_run_to_settled_adds_the_settling_and_skips_a_run_that_never_settled() -> None:
    local, bftfs = local_spec(), bftfs_spec(1, 1)
    runs = [
        _run(local.name, None, 0.4, 0.001),
        _run(bftfs.name, 1, 10.0, 2.5),
        _run(bftfs.name, 1, 11.0, None),  # its mount still held changes at the cap
        _run(bftfs.name, 1, 12.0, 3.0),
    ]
    summary = postmark.summarise(runs, [local, bftfs])
    assert summary[local.name]["settled_s_median"] == 0.401
    assert summary[bftfs.name]["settled_s_median"] == 13.75  # of 12.5 and 15.0
    table = postmark.markdown(
        {
            "config": {
                "mode": "short",
                "files": 1000,
                "transactions": 4000,
                "size_min": 500,
                "size_max": 10000,
                "seed": 42,
                "runs": 3,
                "no_durable": False,
                "cap": 60.0,
            },
            "summary": summary,
            "date": "2026-12-01",
            "machine": {**common.machine_info(), "loadavg_end": [0.0, 0.0, 0.0]},
            "commit": common.commit_info(),
        }
    )
    assert "| run to settled |" in table
    assert "13.8 s" in table or "13.75 s" in table, table
