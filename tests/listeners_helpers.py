"""What the register tests on node processes share (t3_listeners, t3_blisteners)."""

from __future__ import annotations

from pathlib import Path

from bftfs.testing.processes import ProcessCluster

#: The profile that lies on both register kinds (``bftfs/testing/byzantine/listeners.py``).
LIAR = ["--byzantine", "listeners-liar"]


def register_cluster(
    home: Path,
    clients: int,
    node_args: dict[int, list[str]] | None = None,
    *,
    serve: bool = True,
) -> ProcessCluster:
    """4 node processes (``b = 1`` of Listeners: ``n = 3b + 1``; Q/U's b is 0 here)
    serving registers (``--listeners``) unless not ``serve``, ``node_args`` added, with
    ``clients`` client keys."""
    flag = ["--listeners"] if serve else []
    args = {i: [*flag, *(node_args or {}).get(i, [])] for i in range(4)}
    return ProcessCluster(
        home,
        n=4,
        t=1,
        b=0,
        clients=clients,
        map_size=1 << 28,
        durable=False,
        node_args=args,
    )
