"""The tables ``bftfs status`` prints, each at most :data:`WIDTH` columns wide so that the
whole report reads in a normal terminal (issue 36: it was 166 wide).  Details that made
rows long go on lines of their own under the table: a catch-up's progress with its rate
and time left, the lazy verifier's faults, a mount's options; ``--json`` has everything.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

from bftfs import local as localmod
from bftfs.cli.common import human
from bftfs.config import ClusterConfig
from bftfs.ids import CLIENT_ID_BASE, is_node
from bftfs.node.pace import Pace, catch_ups

#: The widest line the tables aim for (long mount points and addresses may exceed it).
WIDTH = 99

#: Fault kinds (``Session.faults``) that are evidence against a node, as ``bftfs status``
#: shows them: (column, kinds).  Timeouts and unreachable nodes are shown but are no
#: evidence (a crashed or restarted node causes them), nor are Q/U servers reported as
#: culled by others (a Byzantine server could report a correct one: more than ``b`` reports
#: prove it, ``malevolent``); everything else is.
FAULT_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("corrupt", ("corrupt", "refuted")),
    ("culled", ("culled",)),
    ("malevolent", ("malevolent",)),
    ("malformed", ("malformed", "time_ahead")),
    ("bad frames", ("frame_*",)),
    ("timeouts", ("timeout", "unreachable")),
)

#: Principals ``bftfs status`` names per node, the largest first.
TOP_PRINCIPALS = 3
#: A mount's oldest request in flight is shown from this many seconds on (a busy mount's
#: requests take milliseconds; one waiting this long is waiting on the cluster).
SHOWN_WAIT = 10.0


def duration(seconds: float) -> str:
    """``8 s``, ``3 min 20 s``, ``2 h 05 min``, ``under 1 s``: a time left, as a person
    reads it."""
    s = max(0, round(seconds))
    if seconds < 1:
        return "under 1 s"
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _rate(per_s: float) -> str:
    return f"{per_s:.0f}/s" if per_s >= 10 else f"{per_s:.1f}/s"


def _pace_note(p: Pace) -> str:
    """`` (12/s, 8 s left)`` for a running catch-up whose rate is known, else empty."""
    if p.state != "running" or p.rate is None:
        return ""
    left = f", {duration(p.eta)} left" if p.eta is not None else ""
    data = f", {p.bytes_rate / (1 << 20):.1f} MiB/s" if p.bytes_rate else ""
    return f" ({_rate(p.rate)}{data}{left})"


def catch_up_summary(progress: dict[str, dict]) -> str:
    """Background catch-up of a node, short: ``qu done 12/12, rw done 3/40`` (objects or
    blocks it found behind and brought up to date), with what it could not bring up to
    date (``qu incomplete 8/197 (189 failed)``: the node is still behind on those, and one
    more failure elsewhere costs readers repairs); while one runs, how far it is through
    what it checks, its rate (blocks: and the data read) and the time left (``qu 38/130
    (12/s, 8 s left)``, ``rw 40/900, 40 behind (30/s, 12.5 MiB/s, 29 s left)``), ``-``
    when none runs."""
    parts = []
    paces = catch_ups(progress)
    for name, p in sorted(progress.items()):
        if not name.endswith(".catchup"):
            continue
        state = p.get("state", "?")
        proto = name.split(".")[0]
        pace = paces[proto]
        if state == "running":
            behind = f", {p.get('behind', 0)} behind" if name == "rw.catchup" else ""
            parts.append(f"{proto} {pace.checked}/{pace.total}{behind}{_pace_note(pace)}")
            continue
        left = [f"{p[k]} {k}" for k in ("failed", "skipped", "abandoned") if p.get(k)]
        note = f" ({', '.join(left)})" if left else ""
        parts.append(f"{proto} {state} {p.get('done', 0)}/{p.get('behind', 0)}{note}")
    rejoin = progress.get("rejoin") or {}  # node/rejoin.py: cut off from its peers, or back
    if rejoin.get("state") == "cut off":
        parts.insert(0, f"cut off (reaches {rejoin.get('reachable', 0)} peers)")
    elif rejoin.get("rejoins"):
        parts.insert(0, f"rejoined {rejoin['rejoins']}x")
    return ", ".join(parts) or "-"


def _catch_up_word(progress: dict[str, Any]) -> str:
    """The node table's short catch-up column: ``done``, ``running``, ``scanning``,
    ``left N`` (a pass ended leaving N behind), ``failed``, ``cut off`` or ``-``."""
    records = {k: v for k, v in progress.items() if k.endswith(".catchup")}
    if (progress.get("rejoin") or {}).get("state") == "cut off":
        return "cut off"
    if not records:
        return "-"
    states = {str(p.get("state")) for p in records.values()}
    for word in ("running", "scanning"):
        if word in states:
            return word
    left = sum(int(p.get("failed", 0)) + int(p.get("abandoned", 0)) for p in records.values())
    if "failed" in states:
        return "failed"
    return f"left {left}" if left else "done"


def _worth_a_line(progress: dict[str, Any]) -> bool:
    """Whether a node's catch-up says more than "done, nothing was behind"."""
    for name, p in progress.items():
        if name.endswith(".catchup") and (
            p.get("state") != "done"
            or p.get("behind")
            or p.get("failed")
            or p.get("skipped")
            or p.get("abandoned")
        ):
            return True
    rejoin = progress.get("rejoin") or {}
    return bool(rejoin.get("state") == "cut off" or rejoin.get("rejoins"))


def _peers(st: dict[str, Any], n: int) -> str:
    rejoin = (st.get("progress") or {}).get("rejoin")
    if not rejoin:
        return "-"
    # Its peers as the node counts them: in a cluster of groups, its group's (layout.md).
    peers = rejoin.get("peers")
    return f"{rejoin.get('reachable', 0)}/{len(peers) if isinstance(peers, dict) else n - 1}"


def print_nodes(statuses: list[localmod.NodeStatus]) -> None:
    """Each node in one row (its catch-up, when it has more to say, on a line below), then
    what lazy verification did on it."""
    wide = max([len("address"), *(len(s.address) for s in statuses)])
    n = len(statuses)
    print(
        f"  {'node':>4}  {'state':5}  {'address':{wide}}  {'pid':>7}  {'lmdb':>10}  "
        f"{'requests':>9}  {'peers':>5}  {'rejected':>8}  catch-up"
    )
    details = []
    for s in statuses:
        st = s.stats or {}
        progress = st.get("progress") or {}
        reqs = sum(v for k, v in st.get("requests", {}).items() if k.startswith("req."))
        rejected = sum(st.get("rejected", {}).values())
        print(
            f"  {s.id:>4}  {'up' if s.up else 'down':5}  {s.address:{wide}}  "
            f"{s.pid if s.pid else '-':>7}  "
            f"{human(st['lmdb_bytes']) if s.up else '-':>10}  "
            f"{reqs if s.up else '-':>9}  {_peers(st, n) if s.up else '-':>5}  "
            f"{rejected if s.up else '-':>8}  {_catch_up_word(progress) if s.up else '-'}"
        )
        if s.up and _worth_a_line(progress):
            details.append(f"    node {s.id} catch-up: {catch_up_summary(progress)}")
        if s.up and st.get("rejected"):
            frames = ", ".join(f"{k}={v}" for k, v in sorted(st["rejected"].items()))
            details.append(f"    node {s.id} rejected frames: {frames}")
    if details:
        for line in details:
            print(_fit(line, 8))
    print(view_line(statuses))
    where = {s.id: (s.stats or {}).get("metrics") for s in statuses if s.up}
    serving = [f"{i} {address}" for i, address in where.items() if address]
    if serving:
        print(_wrap_items("  metrics (node address): ", serving, ", ", 4))
    _print_verification(statuses)


def print_capacity(fills: list[Any]) -> None:
    """Each answering node's map and disk use (``cli/capacity.py``: nearfull at 85%, full
    at 95%), on one wrapped line: ``0 map 3% disk 41%``."""
    items = []
    for f in fills:
        disk = "-" if f.disk_fraction is None else f"{f.disk_fraction:.0%}"
        items.append(f"{f.node} map {f.map_fraction:.0%} disk {disk}")
    if items:
        print(_wrap_items("  capacity (used): ", items, ", ", 4))


def view_line(statuses: list[localmod.NodeStatus]) -> str:
    """The views the nodes that are up hold (docs/membership.md): one number when they
    agree, each node's when a node is behind (it fetches the newer one from a peer)."""
    held = {s.id: (s.stats or {}).get("view", 1) for s in statuses if s.up}
    if not held:
        return "  view: - (no node up)"
    if len(set(held.values())) == 1:
        return f"  view {next(iter(held.values()))} on every node that is up"
    each = ", ".join(f"node {i} {v}" for i, v in sorted(held.items()))
    return f"  views differ (a node behind fetches the newest from a peer): {each}"


def _print_verification(statuses: list[localmod.NodeStatus]) -> None:
    print(
        f"  {'node':>4}  {'in use':>9}  {'unverified':>10}  {'verified':>8}  "
        f"{'repaired':>8}  {'collected':>9}  {'forgotten':>9}  {'poisonous':>9}  "
        f"{'NOTIFY in/out':>13}"
    )
    faults_seen = []
    for s in statuses:
        v = ((s.stats or {}).get("progress") or {}).get("rw.verify") if s.up else None
        if not v:
            print(f"  {s.id:>4}  {'-':>9}  verification {'off' if s.up else '-'}")
            continue
        notify = f"{v['notify_received']}/{v['notify_sent']}"
        counters = (s.stats or {}).get("requests") or {}
        # Removed files' last records dropped: given-back blocks and Q/U objects.
        forgotten = counters.get("rw.forgotten", 0) + counters.get("qu.forgotten", 0)
        used = (s.stats or {}).get("used_bytes", v["used_bytes"])
        print(
            f"  {s.id:>4}  {human(used):>9}  {v['backlog_versions']:>10}  "
            f"{v['verified']:>8}  {v['repaired']:>8}  {v['collected']:>9}  {forgotten:>9}  "
            f"{v['poisonous'] + v['discarded']:>9}  {notify:>13}"
        )
        faults = "; ".join(v["faults"][-2:])
        if faults or v["pressure"]:
            pool = "(history pool short) " if v["pressure"] else ""
            faults_seen.append(f"    node {s.id}: {pool}{faults}")
    # Issue 36: what the thinning schedule keeps of old block versions, per node.
    history = [
        f"{s.id} {human(v.get('history_bytes', 0))}"
        for s in statuses
        if s.up and (v := ((s.stats or {}).get("progress") or {}).get("rw.verify"))
    ]
    if history:
        print(_wrap_items("  history (old block versions kept): ", history, ", ", 4))
    # ... and of Q/U objects (older versions and thinned records), as last measured.
    qu_history = [
        f"{s.id} {human(h['bytes'])}"
        for s in statuses
        if s.up and (h := ((s.stats or {}).get("progress") or {}).get("qu.history"))
    ]
    if qu_history:
        print(_wrap_items("  history (older Q/U versions kept): ", qu_history, ", ", 4))
    if faults_seen:
        print("  lazy verification's latest faults:")
        for line in faults_seen:
            print(_fit(line, 8))


def _fit(line: str, indent: int) -> str:
    """``line`` wrapped at :data:`WIDTH`, its continuation lines indented ``indent``."""
    return "\n".join(
        textwrap.wrap(line, WIDTH, subsequent_indent=" " * indent, break_on_hyphens=False)
    )


def _wrap_items(prefix: str, items: list[str], sep: str, indent: int) -> str:
    """``prefix`` then ``items`` joined by ``sep``, broken between items (never inside
    one) so that lines fit :data:`WIDTH`; continuation lines indented ``indent``."""
    lines, line = [], prefix
    for i, item in enumerate(items):
        piece = item + (sep if i < len(items) - 1 else "")
        if len(line) + len(piece) > WIDTH and line.strip() and len(line) > indent:
            lines.append(line.rstrip())
            line = " " * indent
        line += piece
    lines.append(line)
    return "\n".join(lines)


def _principal(pid: int, names: dict[int, str] | None = None) -> str:
    """``node2``, a client's configured name, ``client#N`` for an id the configuration no
    longer has (``clientN`` when no names are known)."""
    if is_node(pid):
        return f"node{pid}"
    if names is None:
        return f"client{pid - CLIENT_ID_BASE}"
    return names.get(pid) or f"client#{pid - CLIENT_ID_BASE}"


def print_limits(statuses: list[localmod.NodeStatus], names: dict[int, str] | None = None) -> None:
    """``[limits]`` per node in one row: throttling, quota refusals and the principals
    storing most there, as ``blocks+metadata`` (one quota counts both), wrapped under
    their column when they do not fit."""
    print("limits per client (the quota counts blocks+metadata):")
    head = f"  {'node':>4}  {'quota':>10}  {'throttled':>9}  {'waits':>7}  {'refused':>7}  "
    print(f"{head}stored most")
    for s in statuses:
        lim = (s.stats or {}).get("limits") if s.up else None
        if not lim:
            print(f"  {s.id:>4}  {'-':>10}  {'-':>9}  {'-':>7}  {'-':>7}  -")
            continue
        row = (
            f"  {s.id:>4}  {human(lim['quota_bytes']):>10}  {lim['throttled']:>9}  "
            f"{lim['inflight_waits']:>7}  {lim['quota_refused']:>7}  "
        )
        print(
            _wrap_items(row, _top_stored(lim["principals"], names) or ["nothing"], ", ", len(head))
        )


def _top_stored(
    principals: dict[str, dict[str, int]], names: dict[int, str] | None = None
) -> list[str]:
    """``client0 1.2 MiB+40.0 KiB (3 refused)``, ... for the largest few, then ``+N more``."""
    rows = sorted(
        principals.items(),
        key=lambda kv: -(kv[1].get("stored_bytes", 0) + kv[1].get("meta_bytes", 0)),
    )
    parts = []
    for pid, p in rows[:TOP_PRINCIPALS]:
        blocks, meta = p.get("stored_bytes", 0), p.get("meta_bytes", 0)
        if not blocks + meta:
            break
        refused = p.get("quota_refused", 0)
        note = f" ({refused} refused)" if refused else ""
        parts.append(f"{_principal(int(pid), names)} {human(blocks)}+{human(meta)}{note}")
    more = sum(1 for _, p in rows[TOP_PRINCIPALS:] if p.get("stored_bytes") or p.get("meta_bytes"))
    return parts + ([f"+{more} more"] if more else [])


def _fault_sum(kinds: dict[str, int], wanted: tuple[str, ...]) -> int:
    """The counts of ``kinds`` named in ``wanted`` (``prefix*`` matches a prefix)."""
    return sum(
        v
        for k, v in kinds.items()
        if any(k == w or (w.endswith("*") and k.startswith(w[:-1])) for w in wanted)
    )


def print_mounts(mounts: list[dict], faults: dict[int, dict[str, int]], cfg: ClusterConfig) -> None:
    """Each mount in a row, its options on the line below; then the faults the mounts
    detected per node."""
    if not mounts:
        print("mounts: none known (mounts started from this cluster directory are listed)")
    else:
        wide = max(len("mount point"), *(len(m["mountpoint"]) for m in mounts))
        print(
            f"  {'mount point':{wide}}  {'client':8}  {'state':12}  {'pid':>7}  "
            f"{'requests':>8}  {'EIO':>5}  metrics"
        )
        for m in mounts:
            eio = sum((m.get("eio") or {}).values())
            print(
                f"  {m['mountpoint']:{wide}}  {m.get('client', '?'):8}  {m['state']:12}  "
                f"{m['pid']:>7}  {m.get('requests', '-')!s:>8}  {eio:>5}  "
                f"{m.get('metrics') or '-'}"
            )
            options = str(m.get("options", "-")).split(",")
            print(_wrap_items("    options: ", options, ",", 6))
            print(_fit(f"    {_version_and_backlog(m)}", 6))
            oldest = m.get("oldest_request")
            if oldest and oldest[1] >= SHOWN_WAIT:
                print(_fit(f"    a request waiting: {oldest[0]}, {oldest[1]:.0f} s", 6))
            if m.get("last_eio"):
                when, op, cause = m["last_eio"]
                stamp = time.strftime("%H:%M:%S", time.localtime(when))
                print(_fit(f"    last EIO {stamp} {op}: {cause[:200]}", 6))
    print("faults the mounts detected, per node (since each mount started):")
    head = "  ".join(f"{name:>10}" for name, _ in FAULT_COLUMNS)
    print(f"  {'node':>4}  {head}")
    for spec in cfg.nodes:
        kinds = faults.get(spec.id, {})
        cells = "  ".join(f"{_fault_sum(kinds, ks):>10}" for _, ks in FAULT_COLUMNS)
        print(f"  {spec.id:>4}  {cells}")


def _version_and_backlog(m: dict[str, Any]) -> str:
    """``bftfs 0.2.0 (wire 6); held back: 3 creates, 1.2K, the oldest 4.1 s``: what the
    mount runs and what its directory write-back holds back from the servers."""
    version = f"bftfs {m.get('version') or '?'} (wire {m.get('wire') or '?'})"
    held = m.get("heldback")
    if not held:  # a mount of an earlier release does not say
        return version
    if not held.get("creates"):
        return f"{version}; held back: nothing"
    return (
        f"{version}; held back: {held['creates']} creates, {human(held.get('bytes', 0))}, "
        f"the oldest {held.get('oldest_seconds', 0):.1f} s"
    )


def _last_scrub(st: dict[str, Any] | None) -> str:
    """``2026-11-25 14:02, 3 damaged``, ``..., clean``, ``running``, ``never``, ``off``."""
    scrub = ((st or {}).get("progress") or {}).get("rw.scrub")
    if not scrub:
        return "-"
    if scrub.get("state") == "off":
        return "off"
    if scrub.get("state") == "running":
        return f"running ({scrub.get('checked', 0)} checked)"
    last = scrub.get("last_ns")
    if last is None:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(last / 1e9))
    if scrub.get("state") == "failed":
        return f"{stamp}, failed"
    if not scrub.get("passes"):
        return stamp  # ended before this start: the counts went with the old process
    damaged = scrub.get("damaged", 0)
    return f"{stamp}, {f'{damaged} damaged' if damaged else 'clean'}"


def print_findings(
    cfg: ClusterConfig,
    record: Any,
    findings: dict[int, Any],
    statuses: list[localmod.NodeStatus] | None = None,
) -> None:
    """Per node, like zpool's CKSUM column: what ``bftfs verify`` rewrote on it, the bad
    replies other nodes' verification met from it, what its own scrub found damaged, and
    when it last scrubbed."""
    stats = {s.id: s.stats for s in statuses or () if s.up}
    since = (
        f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.cleared_at))}"
        if record.cleared_at
        else "since the cluster began"
    )
    print(f"findings of scrub and verification, per node ({since}; `bftfs status --clear`):")
    head = f"  {'node':>4}  {'verify':>8}  {'reported':>8}  {'scrub':>8}  {'last scrub':28}"
    print(f"{head}  reported by")
    for spec in cfg.nodes:
        st = findings.get(spec.id)
        last = _last_scrub(stats.get(spec.id))
        if st is None:
            print(f"  {spec.id:>4}  {0:>8}  {0:>8}  {0:>8}  {last:28}  -")
            continue
        by = ", ".join(f"node {r}" for r in sorted(st.reporters)) or "-"
        print(
            f"  {spec.id:>4}  {st.verify:>8}  {sum(st.reported.values()):>8}  "
            f"{st.scrub.get('damaged', 0):>8}  {last:28}  {by}"
        )
    if record.verify_runs:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.last_verify or 0))
        total = sum(record.verify.values())
        print(
            f"  bftfs verify: {record.verify_runs} run(s), last {stamp}; rewrote {total} "
            "fragment(s) since cleared"
        )


def print_groups(layout: dict[str, Any], health: list[dict[str, Any]]) -> None:
    """The layout (``cli/groups.layout_json``) and each group's health, one row a group."""
    print(
        f"layout {layout['version']}: {len(layout['groups'])} groups, "
        f"{layout['partitions']} partitions, t={layout['t']} b={layout['b']}"
        + (", partitions moving (bftfs group show)" if layout.get("moving") else "")
    )
    print(
        f"  {'group':>5}  {'state':11}  {'up':>5}  {'objects':>7}  {'blocks':>6}  nodes (domains)"
    )
    for g, h in zip(layout["groups"], health, strict=True):
        nodes = ", ".join(
            f"{n}" + ("" if d == f"node{n}" else f" ({d})")
            for n, d in zip(g["nodes"], g["domains"], strict=True)
        )
        print(
            f"  {g['group']:>5}  {h['state']:11}  {h['up']:>2}/{h['n']:<2}  "
            f"{g['object_partitions']:>7}  {g['block_partitions']:>6}  {nodes}"
        )
