"""Re-authenticating a node's stored Q/U replica histories after a view gave a node a new
key (node replacement, docs/membership.md).

A Q/U server stores each object's replica history with its authenticator: one MAC per
server, under the pairwise key of this server and that one (seed L2174-2179).  A view that
replaces node ``I`` changes every pairwise key with ``I``: the entries for ``I`` in the
authenticators stored before it were made with the old machine's key, so the new machine
culls every history other servers send it for objects not updated since (``replica.cull``)
and could neither catch up nor serve them.  Each node therefore rewrites its stored
authenticators under its current key ring once it takes such a view: a pass over the
replica-history table, a batch of objects per write transaction (each object's history and
authenticator change together, so a concurrent update is never undone), yielding between
batches.

The node-key digest the stored authenticators were last made under is kept in
``node<I>/qu-auth.keys``; a node that starts, or takes a view, with other node keys runs
the pass (again, if a pass was cut short).  Progress: ``node.progress["qu.rekey"]``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from bftfs.ids import PrincipalId
from bftfs.membership.configview import write_signed
from bftfs.membership.view import View
from bftfs.qu import schema
from bftfs.qu.canon import pack
from bftfs.qu.history import make_authenticator, rh_wire

if TYPE_CHECKING:
    from bftfs.node.service import Node

log = logging.getLogger(__name__)

#: The file holding the digest of the node keys the stored authenticators are made under.
AUTH_KEYS_FILE = "qu-auth.keys"
#: Replica histories rewritten per write transaction.
BATCH = 256


def keys_digest(view: View) -> str:
    """The digest of ``view``'s node keys, in id order."""
    h = hashlib.sha256(b"bftfs-qu-auth-keys\0")
    for n in view.nodes:
        h.update(n.public_key)
    return h.hexdigest()


class Rekey:
    """The re-authentication of one node's stored histories (module docstring)."""

    def __init__(self, node: Node, data_dir: Path) -> None:
        self.node = node
        self.path = data_dir / AUTH_KEYS_FILE
        self._running = False
        self._again: View | None = None

    def needed(self, view: View) -> bool:
        try:
            return self.path.read_text().strip() != keys_digest(view)
        except FileNotFoundError:
            return True

    def start(self, view: View) -> None:
        """Run a pass for ``view`` in the background if its node keys are not the ones the
        stored authenticators were made under (one pass at a time; a view taken during a
        pass runs another after it)."""
        if not self.needed(view):
            return
        if self._running:
            self._again = view
            return
        self._running = True
        self.node.endpoint.spawn(self._run, view)

    async def _run(self, view: View) -> None:
        try:
            while True:
                await self.rewrite(view)
                again, self._again = self._again, None
                if again is None or not self.needed(again):
                    return
                view = again
        finally:
            self._running = False

    async def rewrite(self, view: View) -> int:
        """One pass: every stored authenticator made anew under the key ring; how many
        changed.  Never raises but for cancellation (a failed pass runs at the next start)."""
        node = self.node
        n = len(view.nodes)
        ring = node.keyring

        def key_for(s: int) -> bytes:
            k = ring.key(PrincipalId(s))
            if k is None:
                raise KeyError(f"no key for node {s}")
            return k

        progress: dict[str, Any] = {"state": "running", "done": 0, "changed": 0, "seconds": 0.0}
        node.progress["qu.rekey"] = progress
        started = time.monotonic()

        def batch(kv: Any, after: bytes) -> tuple[int, int, bytes | None]:
            seen = changed = 0
            last = None
            rows = []
            for key, raw in kv.scan(schema.DB_RH, after, schema.OID_END):
                rows.append((bytes(key), bytes(raw)))
                if len(rows) >= BATCH:
                    break
            for key, raw in rows:
                seen += 1
                last = key
                rh, auth = schema.load_rh_raw(raw)
                if auth is None:
                    continue
                new = make_authenticator(int.from_bytes(key, "big"), rh, n, key_for)
                if tuple(new) != tuple(auth):
                    kv.put(schema.DB_RH, key, pack([rh_wire(rh), new]))
                    changed += 1
            nxt = None if last is None or len(rows) < BATCH else last + b"\x00"
            return seen, changed, nxt

        after: bytes | None = schema.oid_key(0)
        try:
            while after is not None:
                seen, changed, after = await node.store.write(
                    functools.partial(batch, after=after), background=True
                )
                progress["done"] += seen
                progress["changed"] += changed
                progress["seconds"] = round(time.monotonic() - started, 3)
                await trio.lowlevel.checkpoint()
            await trio.to_thread.run_sync(write_signed, self.path, keys_digest(view).encode())
        except trio.Cancelled:
            raise
        except Exception:  # the node keeps serving; the pass runs again at the next start
            log.exception("node %s: re-authenticating Q/U histories failed", node.id)
            progress["state"] = "failed"
            return int(progress["changed"])
        progress["state"] = "done"
        if progress["changed"]:
            log.info("node %s: Q/U histories re-authenticated: %s", node.id, progress)
        return int(progress["changed"])
