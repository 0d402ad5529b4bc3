"""The campaign's hang diagnostics: a step past its deadline names what it waited in
(``campaign_stacks.watched``), and a failing schedule's text carries the protocol's last
INFO records (``campaign_workers.recent_info``), which worker processes do not send back."""

from __future__ import annotations

import logging

import pytest
import trio

from bftfs.testing.byzantine.switching import _withhold
from bftfs.testing.campaign_stacks import watched
from bftfs.testing.campaign_workers import recent_info


class Hung(Exception):
    pass


async def test_a_step_past_its_deadline_names_the_calls_it_waited_in() -> None:
    """A step hung in a package coroutine (a Byzantine node's withheld reply, in the step's
    own task and in a task it started) is named by its frames; tasks running before the
    step (the cluster's, here another withheld reply) are left out."""

    async def step() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_withhold, None, None, None)
            await _withhold(None, None, None)

    async with trio.open_nursery() as before:
        before.start_soon(_withhold, None, None, None)
        with pytest.raises(Hung) as e:
            async with watched(0.05, lambda stacks: Hung("\n".join(stacks))):
                await step()
        before.cancel_scope.cancel()
    lines = str(e.value).splitlines()
    # One line for the two tasks with the same stack, counted; the earlier task left out.
    assert len(lines) == 1, lines
    assert lines[0].startswith("2 x testing/byzantine/switching.py:"), lines
    assert lines[0].endswith(" _withhold"), lines
    async with watched(5.0, lambda stacks: Hung("never")):
        await trio.lowlevel.checkpoint()  # in time: nothing raised


def test_recent_info_keeps_the_protocols_info_records_and_restores_the_levels() -> None:
    logger = logging.getLogger("bftfs.rw.read")
    level = logging.getLogger("bftfs.rw").level
    with recent_info(keep=2) as recent:
        for i in range(3):
            logger.info("block %d: nodes [0] silent, asking them again", i)
        logging.getLogger("bftfs.other").info("not kept")
    lines = recent()
    assert len(lines) == 2 and "block 1" in lines[0] and "block 2" in lines[1], lines
    assert logging.getLogger("bftfs.rw").level == level
