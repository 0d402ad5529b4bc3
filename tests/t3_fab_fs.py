"""Tier 3 under the FaB engine (issue 39): the file-system suites of the in-process cluster
run again with ``engine = "fab"`` - every metadata method ordered by FaB Paxos
(``node/fab_server.py``) and called through ``fab/metaclient.py`` - with their invariant
checks (``fs_helpers.check_all``, over the FaB client).

The suites' own tests run unchanged (:func:`fs_helpers.engine`), but those that are about
Q/U or about what FaB does not do yet (docs/fab.md, "Not yet"), each named with why in
:data:`NOT_UNDER_FAB` and skipped here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fs_helpers
import pytest
import t3_fs_contention
import t3_fs_faults
import t3_fs_fileblocks
import t3_fs_files
import t3_fs_namespace
import t3_fs_reclaim
import t3_fs_sealed
import t3_fs_streaming
import t3_fs_writebehind

SUITES = [
    t3_fs_namespace,
    t3_fs_files,
    t3_fs_fileblocks,
    t3_fs_reclaim,
    t3_fs_streaming,
    t3_fs_sealed,
    t3_fs_writebehind,
    t3_fs_contention,
    t3_fs_faults,
]

#: The suites ``make test`` runs under FaB (8 s); the others (50 s more) with the slow ones.
FAST = [t3_fs_namespace, t3_fs_files]

NOT_UNDER_FAB = {
    "test_a_create_refused_for_quota_at_close_can_be_created_again": (
        "the quota of metadata records is charged by the Q/U server"
    ),
    "test_a_create_that_cannot_be_sent_does_not_hold_up_its_directory": (
        "waits out the FaB client's timeout, not Q/U's per-round one"
    ),
    "test_a_create_whose_close_said_eio_and_that_then_fails_for_good": (
        "waits out the FaB client's timeout, not Q/U's per-round one"
    ),
    "test_a_collision_that_cannot_take_the_data_fails_the_close": (
        "declares its expected log records with a marker this runner does not carry"
    ),
    "test_journal_loop_with_contention_costing_more_than_the_patience_never_fails": (
        "Q/U contention: FaB orders the journal's updates, it has no backoff to measure"
    ),
    "test_a_file_created_to_be_written_is_leased_to_its_creator_until_it_closes": (
        "runs its own trio loop"
    ),
}


def _cases() -> list[Any]:
    out = []
    for suite in SUITES:
        for name, fn in vars(suite).items():
            if not (name.startswith("test_") and inspect.isfunction(fn)):
                continue
            if list(inspect.signature(fn).parameters) != ["tmp_path"]:
                continue
            if inspect.iscoroutinefunction(fn):  # (history tests: Q/U's version history)
                continue
            why = NOT_UNDER_FAB.get(name)
            marks = [pytest.mark.skip(reason=f"not under FaB: {why}")] if why else []
            if suite not in FAST:
                marks.append(pytest.mark.slow)
            out.append(pytest.param(fn, id=f"{suite.__name__[3:]}.{name[5:]}", marks=marks))
    return out


@pytest.mark.parametrize("case", _cases())
def test_under_fab(case: Callable[[Path], None], tmp_path: Path) -> None:
    with fs_helpers.engine("fab"):
        case(tmp_path)
