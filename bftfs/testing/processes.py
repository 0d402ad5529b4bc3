"""A cluster of real node processes in a directory, for benchmarks and process-level tests.

``with ProcessCluster(tmp_path, t=1, b=1) as pc:`` creates the cluster (fresh keys, free
ports outside the ephemeral range, claimed: ``local.cluster_ports``), starts one ``bftfs
node`` process per node, waits until all answer, and on exit stops every process it
started (SIGTERM, then SIGKILL), even when the body failed.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from bftfs import local
from bftfs.config import ClusterConfig


class ProcessCluster:
    """Node processes for a fresh cluster in ``home`` (see module docstring)."""

    def __init__(
        self, home: Path, *, node_args: dict[int, list[str]] | None = None, **init_options: Any
    ) -> None:
        self.home = home
        self.node_args = node_args or {}
        init_options.setdefault("map_size", 1024**3)
        self.config: ClusterConfig = local.init_cluster(home, **init_options)

    def __enter__(self) -> ProcessCluster:
        try:
            local.start_nodes(self.config, self.node_args)
            local.wait_ready(self.config)
        except BaseException:
            local.stop_nodes(self.config, kill=True)
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        local.stop_nodes(self.config)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (no clean shutdown: what survives is what LMDB committed)."""
        local.stop_node(self.config, i, kill=True)

    def stop(self, i: int) -> None:
        """SIGTERM node ``i`` and wait for it to exit."""
        local.stop_node(self.config, i)

    def start(self, i: int) -> None:
        """(Re)start node ``i`` and wait until it answers."""
        local.start_node(self.config, i, self.node_args.get(i))
        local.wait_ready(self.config, nodes=[i])

    def pid(self, i: int) -> int | None:
        return local.running_pid(self.config.node(i))


def caught_up(cfg: ClusterConfig, node: int) -> dict[str, Any] | None:
    """Node ``node``'s catch-up records (Q/U objects and PASIS blocks) once both are done,
    else None: a node started empty (a replacement) holds what it must from then on."""
    statuses = trio.run(local.query_status, cfg)
    st = statuses[node]
    if not st.up or st.stats is None:
        return None
    progress = st.stats.get("progress") or {}
    records = {k: progress.get(k) or {} for k in ("qu.catchup", "rw.catchup")}
    if all(r.get("state") == "done" for r in records.values()):
        return records
    return None


def wait_caught_up(cfg: ClusterConfig, node: int, seconds: float = 60.0) -> dict[str, Any]:
    """:func:`caught_up`'s records, polled until both are done (``trio.TooSlowError``
    after ``seconds``)."""

    async def wait() -> dict[str, Any]:
        with trio.fail_after(seconds):
            while True:
                got = await trio.to_thread.run_sync(caught_up, cfg, node)
                if got is not None:
                    return got
                await trio.sleep(0.3)

    return trio.run(wait)
