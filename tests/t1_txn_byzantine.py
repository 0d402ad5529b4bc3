"""A Byzantine client or node against the cross-group commit (issue 66): forged and
mismatched certificates, a decide without every yes, a finish without a decision, a
replayed finish, another client's prepare, malformed arguments, a node that does not
sign.  Steps are driven one by one through real ``QUClient``s (``t1_txn.Groups``).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from t1_txn import Groups, put, read, rename, virtual

from bftfs.fsobjects.txn import GroupKeys, digest
from bftfs.fsobjects.txnmethods import make_txn_type
from bftfs.layout.txn import certificate
from bftfs.qu.messages import KIND_REQUEST
from bftfs.qu.objects import MethodRefused, Registry
from bftfs.testing.testobjects import COUNTER, KV

LT = 0  # the steps' declared time: virtual time starts at 0


class Steps:
    """One transaction of ``rename("a", "b", 1)``, step by step, by client ``k``."""

    def __init__(self, g: Groups, k: int = 0) -> None:
        self.g = g
        self.d = g.driver(k)
        self.desc = self.d.descriptor(rename("a", "b", 1), 0, g.record())

    async def begin(self) -> None:
        c = self.desc["c"]
        a, lt, sigs = await self.d.groups[c].update_signed(self.desc["r"], "txn.begin", self.arg())
        self.began = certificate(lt, a, sigs)

    async def prepare(self, i: int) -> dict:
        g, objs = self.desc["p"][i][0], self.desc["p"][i][1]
        arg = self.arg(i=i, bc=self.began)
        a, lt, sigs = await self.d.groups[g].update_signed(objs, "txn.prepare", arg)
        return certificate(lt, a, sigs)

    async def decide(self, v: str, certs: list, group: int = 0) -> dict:
        arg = self.arg(v=v, c=certs)
        a, lt, sigs = await self.d.groups[group].update_signed(self.desc["r"], "txn.decide", arg)
        return certificate(lt, a, sigs)

    async def finish(self, i: int, dc: Any) -> Any:
        g, objs = self.desc["p"][i][0], self.desc["p"][i][1]
        return await self.d.groups[g].update(objs, "txn.finish", self.arg(i=i, dc=dc))

    def arg(self, **kw: Any) -> dict:
        return {"T": self.desc, "lt": LT, **kw}


async def _refused(code: str, coro: Any) -> None:
    with pytest.raises(MethodRefused) as e:
        await coro
    assert e.value.code == code, e.value.code


def test_forged_and_mismatched_certificates_are_refused() -> None:
    g = Groups()

    async def main() -> None:
        await put(g, 0, 1, "a", 1)
        s = Steps(g)
        await s.begin()
        yes = [await s.prepare(0), await s.prepare(1)]
        forged = [dict(c, s=[[n, random.Random(n).randbytes(64)] for n, _ in c["s"]]) for c in yes]
        await _refused("txn-proof", s.decide("commit", forged))
        # A certificate of another transaction (its answer names another digest).
        other = Steps(g, 1)
        await _refused(
            "txn-proof", s.decide("commit", [yes[0], dict(yes[1], a=["yes", b"x" * 32, 1])])
        )
        # Group 1's yes shown as group 0's: the statement names other objects.
        await _refused("txn-proof", s.decide("commit", [yes[1], yes[1]]))
        # q - 1 valid signatures, one of them twice.
        short = dict(yes[0], s=yes[0]["s"][:4] + yes[0]["s"][:1])
        await _refused("txn-proof", s.decide("commit", [short, yes[1]]))
        # A decide without every yes.
        await _refused("txn-proof", s.decide("commit", [yes[0]]))
        # Another client cannot abort it before its deadline without a no.
        arg = {"T": s.desc, "lt": LT, "v": "abort", "c": []}
        await _refused("txn-proof", other.d.groups[0].update(s.desc["r"], "txn.decide", arg))
        # And every refusal left T pending: the true certificates commit it.
        dc = await s.decide("commit", yes)
        await s.finish(0, dc)
        await s.finish(1, dc)
        assert await read(g, 1, 2, "b") == 1 and await read(g, 0, 1, "a") is None

    virtual(main)


def test_a_finish_without_a_decision_is_refused_and_a_replayed_one_is_harmless() -> None:
    g = Groups()

    async def main() -> None:
        await put(g, 0, 1, "a", 1)
        s = Steps(g)
        await s.begin()
        yes = [await s.prepare(0), await s.prepare(1)]
        await _refused("txn-certificate", s.finish(0, yes[0]))  # a vote is no decision
        await _refused(
            "txn-certificate",
            s.finish(0, dict(yes[0], a=["decided", s.d.keys and digest(s.desc), "commit"])),
        )
        await _refused("txn-certificate", s.finish(1, None))
        with pytest.raises(MethodRefused, match="intent"):  # still locked
            await g.client(3, 0).update(1, "kv.put", ["q", 1])
        dc = await s.decide("commit", yes)
        await s.finish(0, dc)
        await s.finish(1, dc)
        await put(g, 1, 2, "b", 99)  # a later update of the target
        assert (await s.finish(1, dc))[0] == "finished"  # replayed: harmless
        assert await read(g, 1, 2, "b") == 99
        # Replayed on an object that carries another transaction's intent: that intent
        # stays (a finish applies only its own T's).
        t2 = Steps(g, 1)
        t2.desc["p"] = [[1, [2], "kv.put", ["c", 3]]]
        t2.desc["c"], t2.desc["r"] = 1, g.record()
        await t2.begin()
        await t2.prepare(0)
        await s.finish(1, dc)
        with pytest.raises(MethodRefused, match="intent " + digest(t2.desc).hex()):
            await read(g, 1, 2, "c")
        # A decided transaction answers its decision again and never changes it.
        dc2 = await s.decide("abort", [])
        assert dc2["a"][2] == "commit"

    virtual(main)


def test_only_t_s_client_prepares_it() -> None:
    g = Groups()

    async def main() -> None:
        await put(g, 0, 1, "a", 1)
        s = Steps(g)
        await s.begin()
        other = Steps(g, 1)
        arg = {"T": s.desc, "lt": LT, "i": 0, "bc": s.began}
        await _refused("txn-caller", other.d.groups[0].update([1], "txn.prepare", arg))
        late = {**arg, "lt": s.desc["dl"] + 1}
        await _refused("txn-deadline", s.d.groups[0].update([1], "txn.prepare", late))


def test_a_prepare_needs_a_begin_certificate() -> None:
    """Without one, a client could leave intents naming a record that is no record
    (or another object): nobody could decide T, its objects locked for good."""
    g = Groups()

    async def main() -> None:
        await put(g, 0, 1, "a", 1)
        s = Steps(g)
        await s.begin()
        other = Steps(g)
        await other.begin()
        for bc in (None, {}, other.began, dict(s.began, s=s.began["s"][:4])):
            arg = {"T": s.desc, "lt": LT, "i": 0, "bc": bc}
            await _refused("txn-certificate", s.d.groups[0].update([1], "txn.prepare", arg))
        await put(g, 0, 1, "b", 2)  # nothing was locked
        assert (await s.prepare(0))["a"][0] == "yes"

    virtual(main)


def test_a_record_is_changed_by_the_commit_s_methods_alone() -> None:
    g = Groups()

    async def main() -> None:
        s = Steps(g)
        await s.begin()
        await _refused("txn-record", g.client(3, 0).update(s.desc["r"], "kv.put", ["st", "commit"]))
        await _refused("txn-record", g.client(3, 0).query(s.desc["r"], "kv.get", "st"))
        rec = await g.client(3, 0).query(s.desc["r"], "txn.record")
        assert rec["st"] == "pending"

    virtual(main)

    virtual(main)


def _strip(server: int, sender: int, kind: str, payload: Any, honest: Any) -> Any:
    rep = honest()
    if kind == KIND_REQUEST and isinstance(rep, dict):
        rep.pop("sg", None)
    return rep


def _bad_sig(server: int, sender: int, kind: str, payload: Any, honest: Any) -> Any:
    rep = honest()
    if kind == KIND_REQUEST and isinstance(rep, dict) and "sg" in rep:
        rep["sg"] = bytes(64)
    return rep


@pytest.mark.parametrize("lie", [_strip, _bad_sig])
def test_a_node_that_does_not_sign_is_passed_over(lie: Any) -> None:
    """Each group's preferred quorum holds a node whose signatures are missing or bad:
    its OK replies do not count, the round asks the sixth node, every certificate holds
    q valid signatures and the transaction commits."""
    g = Groups()
    for c in g.clusters:
        c.byzantine[2] = lie

    async def main() -> None:
        await put(g, 0, 1, "a", 1)
        d = g.driver(0)
        out = await d.run(rename("a", "b", 1), 0, g.record)
        assert out.committed
        assert sum(v for (n, kind), v in d.groups[0].faults.items() if kind == "unsigned") > 0

    virtual(main)


def test_without_the_signature_check_a_silent_node_leaves_a_certificate_short() -> None:
    """The other side of the test above: a client that counts unsigned replies gets a
    certificate of q - 1 valid signatures, which the coordinator refuses."""
    g = Groups()
    for c in g.clusters:
        c.byzantine[2] = _strip

    async def main() -> None:
        await put(g, 0, 1, "a", 1)
        s = Steps(g)
        s.d.groups = [g.client(0, 0, vouch=False), g.client(0, 1, vouch=False)]
        await s.begin()
        yes = [await s.prepare(0), await s.prepare(1)]
        assert min(len(c["s"]) for c in yes) < 5
        await _refused("txn-proof", s.decide("commit", yes))

    virtual(main)


def _mutations(desc: dict) -> list[Any]:
    """Malformed arguments a Byzantine client may send, derived from a valid one."""
    bad: list[Any] = [None, 1, "x", [], {"T": None}, {"T": desc}, {"T": desc, "lt": -1}]
    for key, vals in {
        "id": [b"", 5, None],
        "cl": [-1, 1 << 70, "c", True],
        "c": [99, -1, None],
        "r": [None, 1.5],
        "dl": ["soon", None],
        "lv": [8, None],
        "p": [
            [],
            None,
            [[0]],
            [[0, [1], "kv.delete", "a"]] * 2,
            [[9, [1], "m", 0]],
            [[0, [2, 1], "kv.delete", "a"]],
            [[0, [], "kv.delete", "a"]],
            [[0, [1], "", "a"]],
            [[0, [1], "x" * 99, "a"]],
            [[0, list(range(9)), "m", 0]],
            [[0, [1], "txn.prepare", {}]],
            [[0, [1], "kv.get", "a"]],
            [[0, [1], "kv.delete", "a" * 20000]],
        ],
    }.items():
        for v in vals:
            bad.append({"T": {**desc, key: v}, "lt": LT, "i": 0})
    bad.append({"T": {**desc, "extra": 1}, "lt": LT, "i": 0})
    return bad


def _for(method: str, arg: dict) -> dict:
    """A prepare's argument made one of ``method``'s."""
    cert = {"a": ["decided", b"", "commit"], "lt": b"", "s": [[0, b""]]}
    if method in ("txn.begin", "txn.decide"):
        arg = {k: v for k, v in arg.items() if k != "i"}
        return {**arg, "v": "commit", "c": []} if method == "txn.decide" else arg
    if method == "txn.finish":
        return {**arg, "dc": cert}
    return {**arg, "bc": cert}


def test_malformed_arguments_are_refused_cleanly() -> None:
    """Every method refuses each malformed argument with a ``txn-*`` (or its inner
    method's) code, never an exception of its own (``method-error``)."""
    keys = GroupKeys(7, ((bytes(32),) * 6, (bytes(32),) * 6), (5, 5))
    reg = Registry([COUNTER, KV, make_txn_type(Registry([COUNTER, KV]), keys)])
    desc = {
        "id": bytes(16),
        "cl": 5,
        "c": 0,
        "r": 9,
        "dl": 10,
        "lv": 7,
        "p": [[0, [1], "kv.delete", "a"], [1, [2], "kv.put", ["b", 1]]],
    }
    for method, objs in (
        ("txn.begin", [9]),
        ("txn.prepare", [1]),
        ("txn.decide", [9]),
        ("txn.finish", [1]),
    ):
        for arg in _mutations(desc):
            if isinstance(arg, dict) and "i" in arg:
                arg = _for(method, arg)
            with pytest.raises(MethodRefused) as e:
                reg.update(method, dict.fromkeys(objs, {"a": 1}), arg, 5)
            assert e.value.code != "method-error", (method, arg)


def test_a_prepare_replayed_after_the_commit_is_never_applied_twice() -> None:
    """T's own client prepares T again after T committed (before its deadline): a new
    intent, in a new version.  Finishing T drops it: a decision applies only the
    intents its yes certificates named."""
    g = Groups()

    async def main() -> None:
        s = Steps(g)
        s.desc["p"] = [[0, [3], "counter.increment", 1], [1, [4], "counter.increment", 1]]
        await s.begin()
        yes = [await s.prepare(0), await s.prepare(1)]
        dc = await s.decide("commit", yes)
        await s.finish(0, dc)
        await s.finish(1, dc)
        assert await g.client(3, 1).query(4, "counter.fetch") == 1
        again = await s.prepare(1)
        assert again["a"][0] == "yes" and again["a"][3] != yes[1]["a"][3]
        with pytest.raises(MethodRefused, match="intent"):
            await g.client(3, 1).query(4, "counter.fetch")
        await s.finish(1, dc)
        assert await g.client(3, 1).query(4, "counter.fetch") == 1
        await g.client(3, 1).update(4, "counter.increment", 1)  # free again

    virtual(main)
