"""Tier 1: the node's generic batch handler (``node/batching.py``) without a network.

The synchronous path answers what it can in the read loop and hands the rest on, and
no item runs twice; refusals and failures stay with their item.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from checklogs import ExpectLog

from bftfs.net.server import DEFER, HandlerError
from bftfs.node.batching import BatchHandler


@dataclass
class StubNode:
    stats: Counter[str] = field(default_factory=Counter)
    faults: Any = None
    log: logging.Logger = logging.getLogger("stub")
    id: int = 0


def make(ran: Counter[str]) -> tuple[StubNode, BatchHandler]:
    node = StubNode()

    def fast_echo(ctx: Any, payload: Any) -> Any:
        ran["fast"] += 1
        if payload == "wait":
            return DEFER
        if payload == "refuse":
            raise HandlerError("no", "refused")
        if payload == "crash":
            raise ZeroDivisionError
        return ["fast", payload]

    async def echo(ctx: Any, payload: Any) -> Any:
        ran["slow"] += 1
        return ["slow", payload]

    handler = BatchHandler(
        node,  # type: ignore[arg-type]
        {"p.echo": echo, "p.other": echo},
        protocol="p",
        max_items=4,
        fast={"p.echo": fast_echo},
    )
    return node, handler


def test_all_fast_items_answered_in_the_read_loop(expect_log: ExpectLog) -> None:
    ran: Counter[str] = Counter()
    node, h = make(ran)
    # The crashing item is logged with its traceback (once), and answered "internal".
    with expect_log("stub", "ERROR", match="p batch item p.echo failed", count=1):
        out = h.fast(None, [["p.echo", 1], ["p.echo", "refuse"], ["p.echo", "crash"]])
    assert out == [[0, ["fast", 1]], [1, ["no", "refused"]], [1, ["internal", "ZeroDivisionError"]]]
    assert ran == Counter(fast=3)
    assert node.stats["p.batch.items"] == 3
    assert node.stats["internal_errors"] == 1


async def test_waiting_items_are_handed_on_and_run_once() -> None:
    ran: Counter[str] = Counter()
    node, h = make(ran)
    payload = [["p.echo", 1], ["p.echo", "wait"], ["p.other", 2]]
    assert h.fast(None, payload) is DEFER
    out = await h(None, payload)
    assert out == [[0, ["fast", 1]], [0, ["slow", "wait"]], [0, ["slow", 2]]]
    assert ran == Counter(fast=2, slow=2)  # the first item did not run again
    assert node.stats["p.batch.items"] == 3


@pytest.mark.parametrize(
    "payload", ["x", [["p.echo", 1]] * 5, [["p.unknown", 1]], [["p.echo"]], [[3, 1]]]
)
def test_malformed_batches_are_refused(payload: Any) -> None:
    node, h = make(Counter())
    with pytest.raises(HandlerError) as info:
        h.fast(None, payload)
    assert info.value.code == "malformed"
    assert node.stats["p.refused.malformed"] == 1
