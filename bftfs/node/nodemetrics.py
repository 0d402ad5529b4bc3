"""A node's Prometheus metrics (``bftfs node --metrics-port``, ``[metrics] node_port``):
the families :func:`node_metrics` returns at each scrape, read in the node's trio loop from
the figures the node keeps anyway (``stats``, ``progress``, findings, the store's
accounting), so nothing is kept up to date for the metrics' sake.

Besides requests, frames and lazy verification, a node exports what an operator of a
cluster watches over months (issue 36): its catch-ups' progress, its scrub's last result,
the findings it keeps against each node, each client's use of its quota and the peers its
heartbeats reach.  Build information (``bftfs_build_info``) and the process's own figures
(``process_*``) come from ``bftfs/metrics.py`` for every program.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bftfs.ids import CLIENT_ID_BASE, is_node
from bftfs.metrics import Family, metric_word
from bftfs.node import contributions, limits
from bftfs.node.pace import catch_ups

if TYPE_CHECKING:
    from bftfs.node.service import Node

#: Lazy verification's counters, exported as ``bftfs_node_verifier_total{outcome}``.
VERIFIER_COUNTERS = (
    "verified",
    "repaired",
    "poisonous",
    "discarded",
    "collected",
    "failed",
    "notify_bad",
)
#: Catch-up states a node reports (``bftfs_node_catchup_state``).
CATCHUP_STATES = ("scanning", "running", "done", "incomplete", "failed")
#: Scrub states (``bftfs_node_scrub_state``).
SCRUB_STATES = ("waiting", "running", "done", "failed", "off")


def node_metrics(node: Node) -> list[Family]:
    """Every family of the node (called in its trio loop at each scrape)."""
    out = _requests(node)
    if node.store is not None:
        out.append(
            Family("bftfs_node_lmdb_bytes", "Size of the node's LMDB database", "gauge").add(
                node.store.size_bytes()
            )
        )
    out.append(
        Family("bftfs_node_start_time_seconds", "When the node started (Unix time)", "gauge").add(
            node.started
        )
    )
    out += _disk(node)
    out += _verifier(node)
    out += _catchup(node.progress)
    out += _scrub(node.progress.get("rw.scrub"))
    out += _findings(node)
    if node.store is not None:
        out += _quota(node)
    out += _peers(node.progress.get("rejoin"))
    out += _history(node.progress)
    out += contributions.families(node)  # issue 68: contributions and audits
    return out


def _history(progress: dict[str, Any]) -> list[Family]:
    """What history takes on the node (issue 36), as ``bftfs status`` shows it: old block
    versions retention keeps (the verifier's figure) and older Q/U versions with their
    thinned records (``node/qu_space.py``, as last measured); a kind not known yet is
    left out."""
    history = Family(
        "bftfs_node_history_bytes",
        "Bytes of history kept: old block versions (blocks), older Q/U versions and "
        "thinned records (qu, measured every 5 minutes)",
        "gauge",
        ("kind",),
    )
    blocks = (progress.get("rw.verify") or {}).get("history_bytes")
    if blocks is not None:
        history.add(blocks, "blocks")
    qu = (progress.get("qu.history") or {}).get("bytes")
    if qu is not None:
        history.add(qu, "qu")
    return [history] if history.samples else []


def _requests(node: Node) -> list[Family]:
    """Requests by kind with their latency, each other counter of the node as a family
    of its own (Prometheus's naming guide: one meaning per metric, not unrelated counters
    under one label), and frames refused by reason."""
    requests = Family(
        "bftfs_node_request_duration_seconds",
        "Seconds the node took to answer a request, by kind (its _count: requests answered)",
        "histogram",
        ("kind",),
    )
    for kind, histogram in sorted(node.server.durations.items()):
        requests.add(histogram, kind)
    out = [requests]
    for key, n in sorted(node.stats.items()):
        if not key.startswith("req."):
            out.append(
                Family(
                    f"bftfs_node_{metric_word(key)}_total", f"Node events: {key}", "counter"
                ).add(n)
            )
    rejected = Family(
        "bftfs_node_rejected_frames_total",
        "Frames and connections refused, by reason",
        "counter",
        ("reason",),
    )
    for reason, n in sorted(node.rejected.items()):
        rejected.add(n, reason)
    return [*out, rejected, *_methods(node)]


def _methods(node: Node) -> list[Family]:
    """What each Q/U method cost the node (``node/method_costs.py``): requests answered,
    seconds to answer them, CPU seconds of their transaction steps and the steps, by method."""
    if node.method_costs is None:
        return []
    families = {
        key: Family(f"bftfs_node_qu_method_{name}", doc, "counter", ("method",))
        for key, name, doc in (
            ("requests", "requests_total", "Q/U requests answered, by method"),
            ("seconds", "seconds_total", "Seconds from a Q/U request's start to its answer"),
            ("cpu_seconds", "cpu_seconds_total", "CPU seconds of Q/U transaction steps"),
            ("steps", "steps_total", "Q/U transaction steps run (re-runs after a sync too)"),
        )
    }
    for method, cost in node.method_costs.snapshot().items():
        for key, family in families.items():
            family.add(cost[key], method)
    return list(families.values())


def _disk(node: Node) -> list[Family]:
    """The disk under the node's data directory: what it can still take (``bftfs status``
    says nearfull and full from the same ``statvfs``)."""
    space = limits.disk_space(node.spec.data_dir)
    if space is None:
        return []
    return [
        Family(
            "bftfs_node_disk_free_bytes",
            "Bytes free on the disk holding the node's data (as an unprivileged writer sees it)",
            "gauge",
        ).add(space["free"]),
        Family(
            "bftfs_node_disk_size_bytes", "Size of the disk holding the node's data", "gauge"
        ).add(space["total"]),
        Family("bftfs_node_map_size_bytes", "The most the node's LMDB map may hold", "gauge").add(
            node.config.map_size
        ),
    ]


def _verifier(node: Node) -> list[Family]:
    verify = node.progress.get("rw.verify")
    if not verify:
        return []
    out = []
    gauges = {
        "used_bytes": "Bytes in use in the node's store (the verifier's figure)",
        "backlog_versions": "Unverified block versions (lazy verification backlog)",
        "backlog_blocks": "Blocks with unverified versions",
    }
    for key, doc in gauges.items():
        out.append(Family(f"bftfs_node_{key}", doc, "gauge").add(verify.get(key, 0)))
    work = Family(
        "bftfs_node_verifier_total",
        "Lazy verification: versions verified, repaired, found poisonous, ...; "
        "notify_bad: NOTIFY messages from other nodes that did not check",
        "counter",
        ("outcome",),
    )
    for key in VERIFIER_COUNTERS:
        work.add(verify.get(key, 0), key)
    out.append(work)
    return out


def _catchup(progress: dict[str, Any]) -> list[Family]:
    """The start-up catch-ups (Q/U objects, PASIS blocks) of the current or last pass."""
    items = Family(
        "bftfs_node_catchup_items",
        "Catch-up of the current or last pass: items to check (total), checked, brought up "
        "to date (done), failed, skipped, abandoned; Q/U objects or PASIS blocks",
        "gauge",
        ("protocol", "count"),
    )
    state = Family(
        "bftfs_node_catchup_state",
        "1 for the state the catch-up is in (scanning, running, done, incomplete, failed)",
        "gauge",
        ("protocol", "state"),
    )
    rate = Family(
        "bftfs_node_catchup_items_per_second",
        "Items the catch-up checks per second (its pass's average)",
        "gauge",
        ("protocol",),
    )
    eta = Family(
        "bftfs_node_catchup_eta_seconds",
        "Seconds the running catch-up should still take at its rate (0 when not running)",
        "gauge",
        ("protocol",),
    )
    passes = Family(
        "bftfs_node_catchup_passes_total",
        "Catch-up passes run since the node started (a pass that left items is retried)",
        "counter",
        ("protocol",),
    )
    for proto, p in catch_ups(progress).items():
        record = progress[f"{proto}.catchup"]
        items.add(p.total, proto, "total").add(p.checked, proto, "checked")
        for key in ("done", "failed", "skipped", "abandoned"):
            items.add(record.get(key, 0), proto, key)
        for s in CATCHUP_STATES:
            state.add(1 if p.state == s else 0, proto, s)
        rate.add(p.rate or 0.0, proto)
        eta.add(p.eta or 0.0, proto)
        passes.add(record.get("passes", 0), proto)
    return [items, state, rate, eta, passes] if items.samples else []


def _scrub(scrub: dict[str, Any] | None) -> list[Family]:
    """The node's own scrub (node/rw_scrubber.py): when its last pass ended, its state and
    the counts of the current or last pass."""
    if not scrub:
        return []
    last = scrub.get("last_ns")
    out = [
        Family(
            "bftfs_node_scrub_last_end_timestamp_seconds",
            "When the node's last scrub pass ended (Unix time; 0: never)",
            "gauge",
        ).add(0 if last is None else last / 1e9),
        Family(
            "bftfs_node_scrub_passes_total",
            "Scrub passes finished since the node started",
            "counter",
        ).add(scrub.get("passes", 0)),
    ]
    counts = Family(
        "bftfs_node_scrub_versions",
        "Versions the current or last scrub pass checked, found damaged, repaired, left damaged",
        "gauge",
        ("count",),
    )
    for key in ("checked", "damaged", "repaired", "left"):
        counts.add(scrub.get(key, 0), key)
    state = Family("bftfs_node_scrub_state", "1 for the state the scrub is in", "gauge", ("state",))
    for s in SCRUB_STATES:
        state.add(1 if scrub.get("state") == s else 0, s)
    seconds = Family(
        "bftfs_node_scrub_last_duration_seconds", "How long the last scrub pass took", "gauge"
    ).add(scrub.get("seconds", 0.0))
    return [*out, counts, state, seconds]


def _findings(node: Node) -> list[Family]:
    """What this node's verification and scrub found against each node, as stored
    (node/findings.py; totals that only grow, cleared only in ``bftfs status``'s view)."""
    found = Family(
        "bftfs_node_findings_total",
        "Findings of this node's verification and scrub, by the node they are against "
        "(subject) and kind (corrupt, refuted, malformed, time_ahead, damaged, repaired, left)",
        "counter",
        ("subject", "kind"),
    )
    for (subject, kind), count in sorted(node.findings.totals.items()):
        found.add(count, subject, kind)
    return [found]


def _principal(pid: int, names: dict[int, str]) -> str:
    if is_node(pid):
        return f"node{pid}"
    return names.get(pid) or f"client#{pid - CLIENT_ID_BASE}"


def _quota(node: Node) -> list[Family]:
    """``[limits]``: the quota, what each principal keeps here, and how often clients were
    slowed or refused (node/limits.py)."""
    stats = limits.statistics(node)
    names = node.config.client_names()
    stored = Family(
        "bftfs_node_stored_bytes",
        "Bytes a principal keeps on this node, charged to its quota: PASIS block versions "
        "(blocks) and Q/U records (metadata)",
        "gauge",
        ("principal", "kind"),
    )
    for pid, p in stats["principals"].items():
        name = _principal(int(pid), names)
        stored.add(p.get("stored_bytes", 0), name, "blocks")
        stored.add(p.get("meta_bytes", 0), name, "metadata")
    events = Family(
        "bftfs_node_limits_total",
        "Clients throttled, made to wait for an in-flight slot, refused for their quota",
        "counter",
        ("event",),
    )
    for key in ("throttled", "inflight_waits", "quota_refused"):
        events.add(stats[key], key)
    quota = Family(
        "bftfs_node_quota_bytes",
        "Bytes one client may keep on this node (blocks and metadata; map_size: no quota)",
        "gauge",
    ).add(stats["quota_bytes"])
    return [quota, stored, events]


def _peers(rejoin: dict[str, Any] | None) -> list[Family]:
    """The peers the node's heartbeats reach (node/rejoin.py)."""
    if not rejoin:
        return []
    up = Family(
        "bftfs_node_peer_up",
        "1 if the node's last heartbeat reached the peer",
        "gauge",
        ("peer",),
    )
    heard = Family(
        "bftfs_node_peer_last_heard_timestamp_seconds",
        "When a heartbeat last reached the peer (Unix time; 0: never since the node started)",
        "gauge",
        ("peer",),
    )
    for peer, p in sorted((rejoin.get("peers") or {}).items(), key=lambda kv: int(kv[0])):
        up.add(1 if p.get("reached") else 0, peer)
        heard.add(p.get("last_heard") or 0, peer)
    out = [
        Family(
            "bftfs_node_peers_reachable", "Peers the last round of heartbeats reached", "gauge"
        ).add(rejoin.get("reachable", 0)),
        Family(
            "bftfs_node_cut_off",
            "1 while the node reaches too few peers (it catches up when back)",
            "gauge",
        ).add(1 if rejoin.get("state") == "cut off" else 0),
        Family(
            "bftfs_node_rejoins_total", "Times the node came back from being cut off", "counter"
        ).add(rejoin.get("rejoins", 0)),
    ]
    return [*out, up, heard] if up.samples else out
