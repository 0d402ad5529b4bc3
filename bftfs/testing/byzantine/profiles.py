"""Byzantine node profiles: a real node process that lies, for fault-tolerance tests.

``bftfs node --byzantine PROFILE`` runs an otherwise normal node whose answers are
rewritten by the named profile, built from the same behaviours the in-process tests use
(:mod:`bftfs.testing.byzantine.qu`, :mod:`bftfs.testing.byzantine.rw`).  The profiles are
what the papers promise to survive (up to ``b`` such nodes); they are never enabled unless
asked for on the command line.

========================  ===============================================================
profile                   behaviour
========================  ===============================================================
``corrupt-fragments``     PASIS ``corrupt-fragment``: every fragment the node serves has
                          one byte flipped (its cross checksum no longer matches: readers
                          must notice and use the other nodes)
``reject-everything``     Q/U ``reject_everything`` for every request kind: each is refused
                          with an error
``lie-about-history``     history reads (issue 17): every other version it reports has a
                          forged state digest, every one a time ten years ahead, every
                          state it hands out is altered, and its fragments are corrupt (as
                          ``corrupt-fragments``): readers must believe only what ``b + 1``
                          nodes vouch for and check states against agreed digests
``withhold-history``      answers every history read with an empty chain
``misdate-history``       history reads (issue 31): every version it reports, true digest
                          and link, is dated 1970 (``stored_ns`` 1): where retention let
                          the other nodes drop an old version, its time must be unknown,
                          never the liar's
``withhold-recalls``      leases (issue 33): takes every ``fs.recall`` as a correct node
                          does but pushes no recall to the holders: the recall must still
                          arrive (``b + 1`` correct nodes push it)
``forge-recalls``         leases (issue 33): pushes every client that sends it a request
                          a recall of the objects the request names: a holder must not
                          give up a lease on one node's word
``power-cut-in-update``   a crash, not a lie: inside the LMDB write transaction of the
                          third Q/U update it stores, right after that update's first
                          put, the process ends at once (``os._exit``, no commit, no
                          clean-up), as a power cut would; restart it without the profile
                          and its store must hold all of that update or none of it
``power-cut-in-gc``       a crash, not a lie: inside the ``GC_CUT_AT_STEP``-th LMDB write
                          transaction that collects PASIS block versions (lazy
                          verification's garbage collection), right after its first
                          delete, the process ends at once; restarted, nothing a reader
                          needs may be missing
``flood-client``          buffers (issue 39): before answering a client it pushes it 8 MiB
                          of nonsense as fast as the client reads, then answers with
                          nonsense of almost the frame limit or just past it, alternately
                          (``byzantine/flood.py``): the client's memory must stay bounded
``stop-reading``          buffers (issue 39): at the first frame from a client the node
                          process stands still for two minutes, so that the TCP window
                          closes on every client (a network stack withholding its
                          acknowledgements, seed 002 L14-19)
``rational``              BAR (issue 68, ``byzantine/rational.py``): skips lazy
                          verification, scrub, audits and catch-up, drops one block in two of the
                          fragments it is sent while answering OK, answers audits with
                          stale or made-up fragments: audits must catch it
``fab-silent``            an ``engine = "fab"`` node whose FaB engine sends nothing
                          (``byzantine/fab.py``; node 0 leads regency 0)
``fab-lying-leader``      FaB ``lying_leader`` and ``lying_replies``: equivocates as
                          leader, claims accepts and REPs it never made, answers clients
                          with made-up results
``fab-lying-acceptor``    FaB ``lying_acceptor`` and ``lying_replies``
``fab-forge-history``     FaB history reads (``byzantine/fabhistory.py``): every version
                          it reports has its state altered or is dated an hour early
``fab-truncate-history``  FaB history reads: histories cut short and claimed whole
``fab-older-history``     FaB history reads: incomplete histories with made-up versions
                          before the true first one
``listeners-liar``        Listeners registers (issue 68, ``byzantine/listeners.py``): each
                          answer and echo stale, forged or equivocating; on Byzantine
                          Listeners (``bl.*``) made-up answers under bad MACs, STOREs
                          acknowledged but neither stored nor forwarded, made-up writes
========================  ===============================================================
"""

from __future__ import annotations

import contextvars
import functools
import os
import random
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bftfs.ids import PrincipalId, client_id, is_node
from bftfs.qu.request import Request
from bftfs.rw.schema import DB_VERSIONS
from bftfs.testing.byzantine import fab, fabhistory, flood, history, listeners, qu, rational, rw

if TYPE_CHECKING:
    from bftfs.config import ClusterConfig
    from bftfs.fab.messages import Message
    from bftfs.fab.replica import Replica, Send
    from bftfs.testing.byzantine import NodeWrapper


class ByzantineProfile:
    """Implements the node's ``FaultHooks`` with handler overrides and nothing else."""

    def __init__(
        self, overrides: dict[str, NodeWrapper], default: NodeWrapper | None = None
    ) -> None:
        self.overrides = overrides
        self.default = default
        #: Sees every raw frame first (``stop-reading``); None: frames pass as they are.
        self.frame_hook: Callable[[PrincipalId | None, bytes], bytes] | None = None

    def on_frame(self, sender: PrincipalId | None, frame: bytes) -> bytes:
        if self.frame_hook is not None:
            return self.frame_hook(sender, frame)
        return frame

    def plan(self, sender: PrincipalId) -> list[float]:
        return [0.0]

    def drop_reply(self, sender: PrincipalId) -> bool:
        return False

    def handler(self, kind: str) -> NodeWrapper | None:
        if kind in ("ping", "stats"):
            return None  # stay visible in `bftfs status`
        return self.overrides.get(kind, self.default)


def _corrupt_fragments(config: ClusterConfig, node: int) -> ByzantineProfile:
    return ByzantineProfile(rw.corrupt_fragment(config, node, random.Random(node)))


def _reject_everything(config: ClusterConfig, node: int) -> ByzantineProfile:
    # The kind only matters to behaviours that look at it; this one refuses them all.
    return ByzantineProfile({}, default=qu.on_node(qu.reject_everything, "*"))


def _lie_about_history(config: ClusterConfig, node: int) -> ByzantineProfile:
    overrides = dict(rw.corrupt_fragment(config, node, random.Random(node)))
    overrides[history.KIND_VERSIONS] = history.forge_chain
    overrides[history.KIND_STATES] = history.forge_states
    overrides[history.KIND_CHAINS] = history.chains_forge_chain
    return ByzantineProfile(overrides)


def _withhold_history(config: ClusterConfig, node: int) -> ByzantineProfile:
    return ByzantineProfile(dict(history.BEHAVIOURS["empty-chain"]))


def _misdate_history(config: ClusterConfig, node: int) -> ByzantineProfile:
    return ByzantineProfile(dict(history.BEHAVIOURS["misdate"]))


def _withhold_recalls(config: ClusterConfig, node: int) -> ByzantineProfile:
    async def request(ctx: Any, payload: Any, honest: Any) -> Any:
        ctx.node.recalls.enabled = False  # takes recalls, pushes none (node/recalls.py)
        return await honest(ctx, payload)

    return ByzantineProfile({}, default=request)


def _forge_recalls(config: ClusterConfig, node: int) -> ByzantineProfile:
    n = len(config.nodes)

    async def request(ctx: Any, payload: Any, honest: Any) -> Any:
        if not is_node(ctx.sender):  # every client is told its leases are recalled
            ctx.node.server.push(ctx.sender, {"recall": objects_of(payload, n)})
        return await honest(ctx, payload)

    return ByzantineProfile({}, default=request)


#: Set while a Q/U request runs its honest handler on a ``power-cut-in-update`` node: only
#: the store writes that request makes are cut (not the verifier's or PASIS writes).
_IN_QU_REQUEST: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "in_qu_request", default=False
)

#: The exit status of a node ended by ``power-cut-in-update`` (as if killed by SIGKILL).
POWER_CUT_STATUS = 137


#: Which Q/U update step the power cut interrupts: not the first, so that the store
#: already holds committed updates a half-applied one could be mixed up with.
POWER_CUT_AT_STEP = 3


class _CutAfterFirstPut:
    """A write step's key-value view whose first ``put`` is made and then the process
    dies: the transaction is open and uncommitted, so what survives is whatever LMDB
    committed before (nothing of this transaction)."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    def put(self, *args: Any, **kwargs: Any) -> Any:
        self._kv.put(*args, **kwargs)
        sys.stderr.write("power-cut-in-update: process ends inside a write transaction\n")
        sys.stderr.flush()
        os._exit(POWER_CUT_STATUS)


def _power_cut_in_update(config: ClusterConfig, node: int) -> ByzantineProfile:
    armed = [True]
    steps = [0]

    def step(fn: Callable[[Any], Any], kv: Any) -> Any:
        # From the POWER_CUT_AT_STEP-th step on, not at it only: a step may write nothing
        # (an update waiting for a version this node lacks), and the power never went
        # when that one was the third (t2_power_cut, once in 7 runs).
        steps[0] += 1
        return fn(_CutAfterFirstPut(kv) if steps[0] >= POWER_CUT_AT_STEP else kv)

    def arm(store: Any) -> None:
        """Wrap ``store.write`` once: the write steps made on behalf of Q/U requests are
        counted, and from the ``POWER_CUT_AT_STEP``-th on each runs on a view that cuts
        the power after its first put."""
        real_write = store.write

        async def write(fn: Callable[[Any], Any], **options: Any) -> Any:
            if not _IN_QU_REQUEST.get():
                return await real_write(fn, **options)
            return await real_write(functools.partial(step, fn), **options)

        store.write = write  # an instance attribute shadows the method for this store only

    async def request(ctx: Any, payload: Any, honest: Any) -> Any:
        if armed[0]:
            armed[0] = False
            arm(ctx.node.store)
        token = _IN_QU_REQUEST.set(True)
        try:
            return await honest(ctx, payload)
        finally:
            _IN_QU_REQUEST.reset(token)

    return ByzantineProfile({"qu.request": request})


#: Which collecting transaction ``power-cut-in-gc`` interrupts: not the first, so that
#: earlier collections are committed and a half-done one could be mixed up with them.
GC_CUT_AT_STEP = 3


class _CutAtFirstCollect:
    """A write step's key-value view that counts deletes of PASIS block versions; in the
    ``GC_CUT_AT_STEP``-th step that deletes any, the first delete is made and then the
    process dies inside the open transaction."""

    def __init__(self, kv: Any, steps: list[int]) -> None:
        self._kv = kv
        self._steps = steps
        self._counted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    def delete(self, db: str, key: bytes) -> Any:
        done = self._kv.delete(db, key)
        if db == DB_VERSIONS and not self._counted:
            self._counted = True
            self._steps[0] += 1
            if self._steps[0] == GC_CUT_AT_STEP:
                sys.stderr.write("power-cut-in-gc: process ends inside a collection\n")
                sys.stderr.flush()
                os._exit(POWER_CUT_STATUS)
        return done


def _power_cut_in_gc(config: ClusterConfig, node: int) -> ByzantineProfile:
    armed = [True]
    steps = [0]

    def arm(store: Any) -> None:
        """Wrap ``store.write`` once: every write step (a request's or the verifier's) runs
        on a view that counts the steps that delete block versions."""
        real_write = store.write

        async def write(fn: Callable[[Any], Any], **options: Any) -> Any:
            return await real_write(lambda kv: fn(_CutAtFirstCollect(kv, steps)), **options)

        store.write = write

    async def request(ctx: Any, payload: Any, honest: Any) -> Any:
        if armed[0]:
            armed[0] = False
            arm(ctx.node.store)
        return await honest(ctx, payload)

    return ByzantineProfile({}, default=request)


def objects_of(payload: Any, n: int) -> list[int]:
    """The objects a Q/U request names (the root directory for anything else): what a
    ``forge-recalls`` node says the sender's leases on are recalled."""
    try:
        req = (Request.from_bytes if isinstance(payload, bytes) else Request.from_wire)(payload, n)
    except Exception:  # noqa: BLE001 - not a Q/U request: any object will do
        return [1]
    return list(req.objects)


def _flood_client(config: ClusterConfig, node: int) -> ByzantineProfile:
    return ByzantineProfile({}, default=flood.flood_wrapper())


def _stop_reading(config: ClusterConfig, node: int) -> ByzantineProfile:
    prof = ByzantineProfile({})
    prof.frame_hook = flood.FreezeOnClientFrame()
    return prof


class RationalProfile(ByzantineProfile):
    """A ``rational`` node (``byzantine/rational.py``): its wrappers, and the background
    work it skips (``skips``, read by the node's start-up)."""

    skips = rational.SKIPS

    def __init__(self, config: ClusterConfig, node: int) -> None:
        super().__init__(rational.Rational(config, node).wrappers())


class FabProfile(ByzantineProfile):
    """A node whose FaB engine rewrites what its core sends (``fab_rewrite``, the hook
    ``node/fab_server.py`` asks for) with ``behaviour``; its other answers are honest."""

    def __init__(self, behaviour: fab.Behaviour, node: int) -> None:
        super().__init__({})
        self.behaviour = behaviour
        self.rng = random.Random(node)

    def fab_rewrite(self, replica: Replica) -> Callable[[Send], list[tuple[int, Message]]]:
        liar = fab.Liar(replica, self.rng, int(client_id(0)))
        return functools.partial(self.behaviour, liar)


def _fab(behaviour: fab.Behaviour) -> Callable[[ClusterConfig, int], ByzantineProfile]:
    return lambda config, node: FabProfile(behaviour, node)


def _fab_history(name: str) -> Callable[[ClusterConfig, int], ByzantineProfile]:
    return lambda config, node: ByzantineProfile({fabhistory.KIND: fabhistory.BEHAVIOURS[name]})


#: Profile builders by name: ``builder(config, node id)``.
PROFILES: dict[str, Callable[[ClusterConfig, int], ByzantineProfile]] = {
    "corrupt-fragments": _corrupt_fragments,
    "reject-everything": _reject_everything,
    "lie-about-history": _lie_about_history,
    "withhold-history": _withhold_history,
    "misdate-history": _misdate_history,
    "withhold-recalls": _withhold_recalls,
    "forge-recalls": _forge_recalls,
    "power-cut-in-update": _power_cut_in_update,
    "power-cut-in-gc": _power_cut_in_gc,
    "flood-client": _flood_client,
    "stop-reading": _stop_reading,
    "rational": RationalProfile,
    "fab-silent": _fab(fab.silent),
    "fab-lying-leader": _fab(fab.compose(fab.lying_leader, fab.lying_replies)),
    "fab-lying-acceptor": _fab(fab.compose(fab.lying_acceptor, fab.lying_replies)),
    "fab-forge-history": _fab_history("forge"),
    "fab-truncate-history": _fab_history("truncate"),
    "fab-older-history": _fab_history("older-start"),
    "listeners-liar": listeners.profile,
}


def profile(name: str, config: ClusterConfig, node: int) -> ByzantineProfile:
    """The profile called ``name`` for node ``node`` (its id) of ``config``.

    Raises:
        KeyError: no such profile (the message names the known ones).
    """
    try:
        build = PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown Byzantine profile {name!r}; known: {sorted(PROFILES)}") from None
    return build(config, node)
