"""Tier 1: what ``bftfs status`` prints and decides, without a cluster (issue 36): a
catch-up's rate and time left, a report that fits a normal terminal, a dead mount in the
health and the exit code; the ``[metrics]`` configuration and where a node serves metrics
from it or from its options; the node's metric families built from its progress records."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bftfs import health, local
from bftfs.cli import statustables as tables
from bftfs.cli.nodes import node_metrics_endpoint
from bftfs.cli.status import STATUS_DEGRADED, STATUS_HEALTHY, cluster_health
from bftfs.config import ClusterConfig, ConfigError, MetricsConfig, from_dict, to_dict
from bftfs.ids import client_id
from bftfs.local import NodeStatus
from bftfs.node import nodemetrics
from bftfs.node.pace import catch_ups, pace


def running_qu(**over: Any) -> dict[str, Any]:
    """A Q/U catch-up 3.8 s into a pass over 130 objects: 30 done, 5 skipped, 3 failed."""
    record = {
        "state": "running",
        "behind": 130,
        "done": 30,
        "skipped": 5,
        "failed": 3,
        "adopted": 0,
        "passes": 1,
        "seconds": 3.8,
    }
    return {**record, **over}


def test_a_running_catch_up_has_a_rate_and_a_time_left() -> None:
    p = pace("qu.catchup", running_qu())
    assert (p.checked, p.total, p.rate) == (38, 130, pytest.approx(10.0))
    assert p.eta == pytest.approx(9.2)
    assert tables.catch_up_summary({"qu.catchup": running_qu()}) == "qu 38/130 (10/s, 9 s left)"
    # PASIS: blocks proposed (candidates) are what it goes through; "behind" is a part.
    rw = {
        "state": "running",
        "candidates": 400,
        "behind": 12,
        "current": 100,
        "done": 10,
        "skipped": 0,
        "failed": 2,
        "seconds": 4.0,
    }
    assert tables.catch_up_summary({"rw.catchup": rw}) == "rw 112/400, 12 behind (28/s, 10 s left)"
    # With the data it read (a node that counts it): the MiB/s the throttle bounds.
    rw_bytes = {**rw, "bytes_read": 42 << 20}
    assert tables.catch_up_summary({"rw.catchup": rw_bytes}) == (
        "rw 112/400, 12 behind (28/s, 10.5 MiB/s, 10 s left)"
    )
    # Nothing checked yet (still reading the first object): no rate, no guess.
    fresh = running_qu(done=0, skipped=0, failed=0, seconds=0.4)
    assert pace("qu.catchup", fresh).eta is None
    assert tables.catch_up_summary({"qu.catchup": fresh}) == "qu 0/130"
    # Finished passes read as before (tests/t1_qu_catchup.py has the incomplete one).
    done = {"state": "done", "behind": 3, "done": 3, "seconds": 0.5}
    assert tables.catch_up_summary({"qu.catchup": done}) == "qu done 3/3"
    assert pace("qu.catchup", done).eta is None
    assert catch_ups({"qu.catchup": done, "rw.verify": {}})["qu"].to_json() == {
        "state": "done",
        "checked": 3,
        "total": 3,
        "rate_per_s": 6.0,
        "eta_s": None,
        "bytes_per_s": None,
    }


def test_times_left_read_as_a_person_reads_them() -> None:
    assert [tables.duration(s) for s in (0.3, 8.4, 200, 7500)] == [
        "under 1 s",
        "8 s",
        "3 min 20 s",
        "2 h 05 min",
    ]


def node_stats(i: int, **progress: Any) -> dict[str, Any]:
    principals = {
        str(int(client_id(k))): {
            "stored_bytes": 3 << 20,
            "meta_bytes": 40 << 10,
            "quota_refused": k,
        }
        for k in range(5)
    }
    verify = {
        "used_bytes": 5 << 20,
        "backlog_versions": 123456,
        "verified": 9999999,
        "repaired": 12345,
        "collected": 1234567,
        "poisonous": 3,
        "discarded": 1,
        "notify_received": 123456,
        "notify_sent": 654321,
        "pressure": True,
        "faults": ["node 4: corrupt fragment of block 0x1234567890abcdef at ts 1795633798" * 2] * 3,
    }
    return {
        "lmdb_bytes": 999 << 20,
        "used_bytes": 998 << 20,
        "requests": {"req.qu.request": 12345678, "rw.forgotten": 5},
        "rejected": {"frame_auth": 12, "frame_replay": 3, "oversized": 1},
        "limits": {
            "quota_bytes": 16 << 30,
            "throttled": 1234567,
            "inflight_waits": 123,
            "quota_refused": 4567,
            "principals": principals,
        },
        "progress": {
            "rw.verify": verify,
            "rejoin": {"state": "connected", "reachable": 5, "rejoins": 2},
            "rw.scrub": {"state": "done", "passes": 1, "damaged": 2, "last_ns": 1_795_633_798e9},
            **progress,
        },
    }


def test_the_whole_report_fits_a_normal_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 36: the table was 166 columns wide (a mount's options, a node's rejected
    frames and verifier faults, three principals on one row).  Every line fits 99 columns,
    even with long values everywhere (a 21-character address, a running catch-up)."""
    cfg = ClusterConfig.for_test()
    rw = {"state": "scanning", "candidates": 5000, "behind": 0, "done": 0, "seconds": 1.0}
    statuses = [
        NodeStatus(i, f"192.168.100.{100 + i}:65000", 4_000_000 + i, True, node_stats(i), None)
        for i in range(5)
    ]
    statuses[3].stats["progress"].update({"qu.catchup": running_qu(), "rw.catchup": rw})  # type: ignore[index]
    statuses.append(NodeStatus(5, "192.168.100.105:65000", None, False, None, "down"))
    mounts = [
        {
            "mountpoint": "/srv/bftfs/mnt",
            "client": "client0",
            "state": "dead",
            "pid": 4_123_456,
            "requests": 123456789,
            "eio": {"read": 3},
            "metrics": "127.0.0.1:45678",
            "options": "client=client0,rw,attr_timeout=1,entry_timeout=30,soft,timeo=10,"
            "nowsync,lease=30,commit=5,locklease=30,metrics_port=0,metrics_addr=127.0.0.1",
            "last_eio": [1_795_633_798.0, "read", "Unavailable: " + "fewer than q=5 " * 20],
            "oldest_request": ["unlink", 612.4],
        },
        {
            **{"mountpoint": "/mnt/b", "client": "client1", "state": "running", "pid": 7},
            "oldest_request": ["getattr", 0.002],
        },
    ]
    faults = {2: {"corrupt": 1234567, "timeout": 99}}
    record = health.Record(verify={2: 7}, verify_runs=2, last_verify=1_795_633_798.0)
    standing = {2: health.Standing(verify=7, reported={"corrupt": 3}, reporters={0, 1, 3, 4})}
    tables.print_nodes(statuses)
    tables.print_limits(statuses, cfg.client_names())
    tables.print_mounts(mounts, faults, cfg)
    tables.print_findings(cfg, record, standing, statuses)
    out = capsys.readouterr().out
    wide = [line for line in out.splitlines() if len(line) > tables.WIDTH]
    assert not wide, "\n".join(wide)
    assert "node 3 catch-up: rejoined 2x, qu 38/130 (10/s, 9 s left), rw scanning 0/0" in out
    assert "      t=5,locklease=30" not in out  # options are broken between options
    assert "options: client=client0,rw," in out  # on its own line, under the mount
    assert "2026-11-25" in out or "2026-11-26" in out  # the last scrub, in local time
    # A request waiting long is shown under its mount; a busy mount's short ones are not.
    assert "a request waiting: unlink, 612 s" in out
    assert "getattr" not in out


def test_a_dead_or_hung_mount_makes_the_cluster_degraded() -> None:
    """Issue 36: a dead mount was listed as a problem, yet status exited 0 (HEALTHY)."""
    cfg: Any = SimpleNamespace(t=1)
    up = [NodeStatus(i, f"127.0.0.1:{1000 + i}", 1, True, {}, None) for i in range(6)]
    alive = {"mountpoint": "/m", "state": "alive", "pid": 1, "mounted": True}
    assert cluster_health(cfg, up, [alive])[:3] == (STATUS_HEALTHY, "healthy", [])
    dead = {**alive, "state": "dead"}
    code, word, problems, _ = cluster_health(cfg, up, [alive, dead])
    assert (code, word) == (STATUS_DEGRADED, "degraded")
    assert problems == ["mount /m: its daemon is gone (still mounted: bftfs umount it)"]
    hung = {**alive, "state": "unresponsive"}
    assert cluster_health(cfg, up, [hung])[0] == STATUS_DEGRADED
    starting = {**alive, "state": "starting", "mounted": False}
    assert cluster_health(cfg, up, [starting])[0] == STATUS_HEALTHY


def test_nodes_and_mounts_of_different_versions_make_the_cluster_degraded() -> None:
    """Issue 67: the middle of a rolling upgrade (or a machine it left behind) is said, as
    Ceph warns of mixed daemon versions; one version everywhere is healthy."""
    cfg: Any = SimpleNamespace(t=1)

    def node(i: int, version: str) -> NodeStatus:
        stats = {"version": version, "wire": 5, "store_format": 1}
        return NodeStatus(i, f"127.0.0.1:{1000 + i}", 1, True, stats, None)

    mount = {"mountpoint": "/m", "state": "alive", "pid": 1, "mounted": True}
    same = [node(i, "0.2.0") for i in range(6)]
    assert cluster_health(cfg, same, [{**mount, "version": "0.2.0", "wire": 5}])[0] == (
        STATUS_HEALTHY
    )
    mixed = [node(i, "0.2.0" if i < 4 else "0.1.0") for i in range(6)]
    code, word, problems, _ = cluster_health(cfg, mixed, [{**mount, "version": "0.2.0", "wire": 5}])
    assert (code, word) == (STATUS_DEGRADED, "degraded")
    assert problems == [
        "mixed versions: 0.1.0 (wire 5) on node 4, node 5; 0.2.0 (wire 5) on node 0, node 1, "
        "node 2, node 3, mount /m (finish the upgrade: docs/operations.md)"
    ]


def test_a_revoked_clients_refusals_are_its_state_not_the_nodes_fault(expect_log: Any) -> None:
    """Issue 60 item 17: ``b + 1`` nodes refusing a client as revoked make it revoked (one
    of them is correct); ``b`` could be Byzantine nodes refusing a valid client.  Its
    mount's refusals are then not counted against the nodes."""
    from bftfs.ids import NodeId
    from bftfs.membership.client import ClientViews

    views = ClientViews(ClusterConfig.for_test())  # b = 1
    views.refused("current", NodeId(4), "node 4 refuses principal 7: revoked in view 3")
    views.refused("current", NodeId(2), "node 2 refuses principal 7: bad key")
    assert views.revoked_in is None
    with expect_log("bftfs.membership.client", match="client revoked in view 3", count=1):
        views.refused("current", NodeId(5), "node 5 refuses principal 7: revoked in view 3")
    assert views.revoked_in == 3
    cfg: Any = SimpleNamespace(t=1)
    up = [NodeStatus(i, f"127.0.0.1:{1000 + i}", 1, True, {}, None) for i in range(6)]
    refused = {str(i): {"refused": 13, "timeout": 2} for i in range(6)}
    mount = {"mountpoint": "/m", "client": "tmpc", "state": "alive", "faults": refused}
    code, _, problems, _ = cluster_health(cfg, up, [mount])
    assert code == STATUS_DEGRADED  # not known revoked: refusing a client is a fault
    assert len([p for p in problems if "misbehaving" in p]) == 6
    code, _, problems, _ = cluster_health(cfg, up, [{**mount, "revoked_in": 3}])
    assert code == STATUS_HEALTHY
    assert problems == [
        "mount /m: client tmpc revoked in view 3 (it answers EACCES; bftfs umount it)"
    ]


def test_metrics_configuration_is_read_written_and_checked(tmp_path: Path) -> None:
    cfg = local.init_cluster(tmp_path / "c", map_size=1 << 20)
    assert cfg.metrics == MetricsConfig() and "metrics" not in to_dict(cfg)  # off: not written
    doc = to_dict(cfg)
    doc["metrics"] = {"address": "0.0.0.0", "node_port": 9250}
    again = from_dict(doc, cfg.home)
    assert again.metrics == MetricsConfig("0.0.0.0", 9250, None)
    assert [again.metrics.node_port_of(i) for i in (0, 5)] == [9250, 9255]
    assert to_dict(again)["metrics"] == {"address": "0.0.0.0", "node_port": 9250}
    assert from_dict({**doc, "metrics": {"node_port": 0}}, cfg.home).metrics.node_port_of(3) == 0
    bad = [
        ({"node_port": 65531}, "node 5 would serve on 65536"),
        ({"mount_port": 70000}, r"\[metrics\] mount_port must be in 0..65535"),
        ({"node_port": "9250"}, r"\[metrics\] node_port must be an integer"),
        ({"port": 9250}, r"\[metrics\]: unknown key"),
        ({"address": ""}, "address must not be empty"),
    ]
    for table, why in bad:
        with pytest.raises(ConfigError, match=why):
            from_dict({**doc, "metrics": table}, cfg.home)


def test_a_node_serves_metrics_where_its_options_or_the_configuration_say(tmp_path: Path) -> None:
    cfg = local.init_cluster(
        tmp_path / "c", map_size=1 << 20, metrics=MetricsConfig("10.0.0.1", 9250, 0)
    )

    def args(**kw: Any) -> argparse.Namespace:
        return argparse.Namespace(**{"metrics_port": None, "metrics_addr": None, **kw})

    assert node_metrics_endpoint(cfg, 2, args()) == ("10.0.0.1", 9252)
    assert node_metrics_endpoint(cfg, 2, args(metrics_port=0)) == ("10.0.0.1", 0)
    assert node_metrics_endpoint(cfg, 2, args(metrics_addr="::1")) == ("::1", 9252)
    assert node_metrics_endpoint(cfg, 2, args(no_metrics=True)) is None
    off = local.init_cluster(tmp_path / "d", map_size=1 << 20)
    assert node_metrics_endpoint(off, 2, args()) is None
    assert node_metrics_endpoint(off, 2, args(metrics_port=9100)) == ("127.0.0.1", 9100)


def samples(families: list[Any]) -> dict[tuple[str, tuple[str, ...]], Any]:
    return {(f.name, labels): v for f in families for labels, v in f.samples}


def test_catch_up_scrub_and_peer_families_come_from_the_progress_records() -> None:
    got = samples(nodemetrics._catchup({"qu.catchup": running_qu(), "rw.verify": {}}))
    assert got[("bftfs_node_catchup_items", ("qu", "total"))] == 130
    assert got[("bftfs_node_catchup_items", ("qu", "checked"))] == 38
    assert got[("bftfs_node_catchup_items", ("qu", "failed"))] == 3
    assert got[("bftfs_node_catchup_state", ("qu", "running"))] == 1
    assert got[("bftfs_node_catchup_state", ("qu", "done"))] == 0
    assert got[("bftfs_node_catchup_items_per_second", ("qu",))] == pytest.approx(10.0)
    assert got[("bftfs_node_catchup_eta_seconds", ("qu",))] == pytest.approx(9.2)
    scrub = {"state": "done", "passes": 2, "checked": 50, "damaged": 1, "last_ns": 5 * 10**9}
    got = samples(nodemetrics._scrub(scrub))
    assert got[("bftfs_node_scrub_last_end_timestamp_seconds", ())] == 5.0
    assert got[("bftfs_node_scrub_versions", ("damaged",))] == 1
    assert got[("bftfs_node_scrub_state", ("done",))] == 1
    rejoin = {
        "state": "connected",
        "reachable": 4,
        "peers": {"2": {"reached": True, "last_heard": 7.5}, "1": {"reached": False}},
    }
    got = samples(nodemetrics._peers(rejoin))
    assert got[("bftfs_node_peers_reachable", ())] == 4
    assert got[("bftfs_node_peer_up", ("1",))] == 0
    assert got[("bftfs_node_peer_last_heard_timestamp_seconds", ("1",))] == 0
    assert got[("bftfs_node_peer_last_heard_timestamp_seconds", ("2",))] == 7.5


def test_the_history_each_node_keeps_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 36: the bytes of old block versions the thinning schedule keeps, per node."""
    statuses = [
        NodeStatus(i, f"127.0.0.1:{7000 + i}", 100 + i, True, node_stats(i), None) for i in range(3)
    ]
    statuses[1].stats["progress"]["rw.verify"]["history_bytes"] = 3 * 1024 * 1024  # type: ignore[index]
    tables.print_nodes(statuses)
    out = capsys.readouterr().out
    assert "history (old block versions kept): 0 0 B, 1 3.0 MiB, 2 0 B" in out


def test_the_q_u_history_each_node_keeps_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 36: the bytes of older Q/U versions and thinned records per node, as the
    node last measured them (``node/qu_space.py``); a node that has not measured yet is
    left out of the line."""
    statuses = [
        NodeStatus(i, f"127.0.0.1:{7000 + i}", 100 + i, True, node_stats(i), None) for i in range(3)
    ]
    for i, size in ((0, 2048), (2, 5 * 1024 * 1024)):
        statuses[i].stats["progress"]["qu.history"] = {"bytes": size}  # type: ignore[index]
    tables.print_nodes(statuses)
    out = capsys.readouterr().out
    assert "history (older Q/U versions kept): 0 2.0 KiB, 2 5.0 MiB\n" in out


def test_history_bytes_family_comes_from_the_verifier_and_the_q_u_measure() -> None:
    """Issue 36: ``bftfs_node_history_bytes{kind}``, the figures ``bftfs status`` shows."""
    progress = {"rw.verify": {"history_bytes": 3 << 20}, "qu.history": {"bytes": 5 << 10}}
    got = samples(nodemetrics._history(progress))
    assert got == {
        ("bftfs_node_history_bytes", ("blocks",)): 3 << 20,
        ("bftfs_node_history_bytes", ("qu",)): 5 << 10,
    }
    assert nodemetrics._history({}) == []  # nothing measured yet: no family
