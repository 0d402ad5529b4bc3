"""Findings against nodes that stand until an operator clears them (issue 31, item 7).

Two sources, each kept where it survives restarts of the nodes and of ``bftfs status``:

- ``bftfs verify`` (a client's scrub, ``bftfs/fs/scrub.py``) checks every node's fragment
  of every block and rewrites missing or damaged ones: how many it rewrote on each node is
  added up in the cluster directory, ``<cluster>/findings.json`` (the operator ran it there);
- each node's own checks (lazy verification's reads of its peers, its scrub of its own
  store) keep their totals in the node's LMDB (``bftfs/node/findings.py``), and ``stats``
  reports them as ``progress["findings"]``: ``{subject node: {kind: count}}``.

``bftfs status --clear`` empties the first and records the node totals it sees as a
baseline in the same file; findings are what lies above it.  A node's totals only grow, so
a total below the baseline means its store was replaced: then all of it counts.  Nothing
is asked of the nodes to clear, so no client can wipe the evidence from them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_NAME = "findings.json"
#: Kinds a node reports about a peer (faults its reads met in the peer's replies; audits
#: of its storage it failed, ``node/audits.py``).
AUDIT_FAILED = "audit_failed"
PEER_KINDS = ("corrupt", "refuted", "malformed", "time_ahead", AUDIT_FAILED)
#: Kinds a node reports about itself (its scrub: damaged versions, of them repaired, left).
SCRUB_KINDS = ("damaged", "repaired", "left")


@dataclass
class Record:
    """``findings.json``: verify's rewrites per node since the last clear, and the baseline
    of the nodes' totals the last clear saw."""

    #: Node -> fragments ``bftfs verify`` rewrote on it (missing or damaged).
    verify: dict[int, int] = field(default_factory=dict)
    verify_runs: int = 0
    last_verify: float | None = None
    #: Reporter node -> ``{"subject:kind": total}`` when last cleared.
    baseline: dict[int, dict[str, int]] = field(default_factory=dict)
    cleared_at: float | None = None


@dataclass
class Standing:
    """What stands against one node."""

    verify: int = 0
    #: Faults other nodes' verification met in its replies, by kind.
    reported: dict[str, int] = field(default_factory=dict)
    reporters: set[int] = field(default_factory=set)
    #: Its own scrub's findings about its store, by kind.
    scrub: dict[str, int] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.verify or sum(self.reported.values()) or self.scrub.get("damaged"))

    def to_json(self) -> dict[str, Any]:
        return {
            "verify_rewritten": self.verify,
            "reported": self.reported,
            "reported_by": sorted(self.reporters),
            "scrub": self.scrub,
        }


def path_of(home: Path) -> Path:
    return home / FILE_NAME


def load(home: Path) -> Record:
    """The record of the cluster in ``home`` (empty when there is none or it is unreadable:
    a damaged file must not stop ``bftfs status``)."""
    try:
        doc = json.loads(path_of(home).read_text())
        return Record(
            verify={int(k): int(v) for k, v in doc.get("verify", {}).items()},
            verify_runs=int(doc.get("verify_runs", 0)),
            last_verify=doc.get("last_verify"),
            baseline={
                int(r): {str(k): int(v) for k, v in kinds.items()}
                for r, kinds in doc.get("baseline", {}).items()
            },
            cleared_at=doc.get("cleared_at"),
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return Record()


def save(home: Path, rec: Record) -> None:
    """Write ``rec`` atomically (a reader never sees half a file)."""
    doc = {
        "verify": {str(k): v for k, v in sorted(rec.verify.items())},
        "verify_runs": rec.verify_runs,
        "last_verify": rec.last_verify,
        "baseline": {str(r): kinds for r, kinds in sorted(rec.baseline.items())},
        "cleared_at": rec.cleared_at,
    }
    tmp = path_of(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path_of(home))


def add_verify(home: Path, repaired_by_node: dict[str, int]) -> Record:
    """Add one ``bftfs verify`` run's rewrites per node to the record."""
    rec = load(home)
    for node, count in repaired_by_node.items():
        if count:
            rec.verify[int(node)] = rec.verify.get(int(node), 0) + int(count)
    rec.verify_runs += 1
    rec.last_verify = time.time()
    save(home, rec)
    return rec


def node_totals(stats: dict[str, Any] | None) -> dict[str, int]:
    """A node's stored totals from its ``stats``, as ``{"subject:kind": count}``."""
    table = ((stats or {}).get("progress") or {}).get("findings") or {}
    return {
        f"{subject}:{kind}": int(count)
        for subject, kinds in table.items()
        for kind, count in kinds.items()
    }


def standing(rec: Record, totals: dict[int, dict[str, int]]) -> dict[int, Standing]:
    """What stands against each node: ``rec``'s verify rewrites and, from each reporter's
    ``totals`` (the nodes that answered), what lies above the baseline."""
    out: dict[int, Standing] = {}
    for node, count in rec.verify.items():
        out.setdefault(node, Standing()).verify = count
    for reporter, counts in totals.items():
        base = rec.baseline.get(reporter, {})
        for key, total in counts.items():
            subject_text, _, kind = key.partition(":")
            subject = int(subject_text)
            new = total - base.get(key, 0) if total >= base.get(key, 0) else total
            if new <= 0:
                continue
            st = out.setdefault(subject, Standing())
            if subject == reporter and kind in SCRUB_KINDS:
                st.scrub[kind] = st.scrub.get(kind, 0) + new
            elif subject != reporter and kind in PEER_KINDS:
                st.reported[kind] = st.reported.get(kind, 0) + new
                st.reporters.add(reporter)
    return {n: s for n, s in sorted(out.items()) if s.any}


def clear(home: Path, totals: dict[int, dict[str, int]]) -> Record:
    """Clear every finding: verify's rewrites go, and the totals of the nodes that answered
    become the baseline (a node that did not answer keeps its old baseline)."""
    rec = load(home)
    rec.verify = {}
    rec.baseline.update({r: dict(counts) for r, counts in totals.items()})
    rec.cleared_at = time.time()
    save(home, rec)
    return rec


def describe(node: int, st: Standing) -> str:
    """One problem line for ``bftfs status``."""
    parts = []
    if st.verify:
        parts.append(f"bftfs verify rewrote {st.verify} of its fragments (missing or damaged)")
    who = ", ".join(map(str, sorted(st.reporters)))
    replies = {k: v for k, v in st.reported.items() if k != AUDIT_FAILED}
    if replies:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(replies.items()))
        parts.append(f"other nodes' verification found bad replies ({kinds}; by node(s) {who})")
    if st.reported.get(AUDIT_FAILED):
        parts.append(
            f"failed {st.reported[AUDIT_FAILED]} storage audit(s): a fragment it claims to "
            f"hold not produced (by node(s) {who}; docs/bar.md)"
        )
    if st.scrub.get("damaged"):
        fixed = st.scrub.get("repaired", 0)
        parts.append(f"its scrub found {st.scrub['damaged']} damaged version(s), repaired {fixed}")
    return f"node {node}: " + "; ".join(parts) + " (`bftfs status --clear` once dealt with)"
