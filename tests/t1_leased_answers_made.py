"""Tier 1: the entries this mount's own updates made in a leased directory whose listing
it does not know whole (``LeasedAnswers.made``, ``fs/leases/answers.py``): kept only when
the lease was granted before the update was sent, and forgotten by anything that may have
changed them, so a lookup answered from them is never wrong."""

from __future__ import annotations

import pytest

from bftfs.fs.leases.answers import LeasedAnswers, made_entries
from bftfs.fsobjects import DIR_TYPE

D = 7
MKDIR = {"p": D, "o": 11, "name": b"a", "mode": 0o40755}


def made_a(answers: LeasedAnswers, *, leased_before: bool = True) -> None:
    """``mkdir D/a`` (object 11) taken."""
    names = frozenset((b"a",))
    answers.changed([D, 11], D, names)
    made = made_entries("fs.mkdir", MKDIR)
    answers.entry_done("fs.mkdir", D, names, "taken", made, leased_before=leased_before)


def test_a_name_made_under_the_lease_is_known_and_only_then() -> None:
    answers = LeasedAnswers()
    made_a(answers)
    assert answers.listed_entry(D, b"a") == [11, DIR_TYPE]
    assert answers.listed_entry(D, b"b") is None  # no listing: another name is not a miss
    assert not answers.listed_miss(D, b"b")
    later = LeasedAnswers()
    made_a(later, leased_before=False)  # the lease came after the update was sent
    assert later.listed_entry(D, b"a") is None


def test_what_may_change_a_made_name_forgets_it() -> None:
    cases = {
        "its removal": lambda s: s.entry_done("fs.rmdir", D, frozenset((b"a",)), "taken"),
        "an update of it, outcome unknown": lambda s: s.entry_done(
            "fs.unlink", D, frozenset((b"a",)), "unknown"
        ),
        "an update of its name about to be sent": lambda s: s.changed([D], D, frozenset((b"a",))),
        "a rename within the directory onto it": lambda s: s.entry_done(
            "fs.rename",
            D,
            frozenset((b"x", b"a")),
            "taken",
            made_entries("fs.rename", {"sp": D, "dp": D, "sn": b"x", "dn": b"a"}),
        ),
        "an update of the directory beyond its entries": lambda s: s.changed(
            [D], None, frozenset()
        ),
        "the lease's end": lambda s: s.drop(D),
    }
    for what, change in cases.items():
        answers = LeasedAnswers()
        made_a(answers)
        change(answers)
        assert answers.listed_entry(D, b"a") is None, what


def test_other_names_and_attribute_updates_keep_it() -> None:
    answers = LeasedAnswers()
    made_a(answers)
    answers.changed([D], D, frozenset())  # a chmod of the directory: no entry changes
    answers.entry_done("fs.unlink", D, frozenset((b"z",)), "taken")
    assert answers.listed_entry(D, b"a") == [11, DIR_TYPE]


def test_a_known_listing_answers_first() -> None:
    answers = LeasedAnswers()
    answers.keep([D], "fs.readdir", None, {"p": 1, "e": {}})
    made_a(answers)
    assert D not in answers.made  # the listing follows the update itself
    assert answers.listed_entry(D, b"a") == [11, DIR_TYPE]


def test_an_update_beyond_entries_forgets_the_extended_attribute_names_kept() -> None:
    """A ``setxattr`` (an update of the object beyond its entries) drops the names of
    its extended attributes kept under the lease; an entry update keeps them."""
    answers = LeasedAnswers()
    answers.keep([D], "fs.listxattr", None, [b"user.a"])
    assert answers.xattrs[D] == frozenset((b"user.a",))
    answers.changed([D], D, frozenset((b"x",)))  # one of its entries
    assert answers.xattrs[D] == frozenset((b"user.a",))
    answers.changed([D], None, frozenset())  # fs.setxattr
    assert D not in answers.xattrs


def test_past_its_bound_the_oldest_made_names_go_not_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory with more names made here than the bound keeps the newest ones (it
    was cleared whole: every name made here was then looked up at the servers again)."""
    from bftfs.fs.leases import answers as answers_module

    monkeypatch.setattr(answers_module, "MAX_MADE", 8)
    answers = LeasedAnswers()
    for k in range(12):
        name = b"f%d" % k
        arg = {"p": D, "o": 100 + k, "name": name, "mode": 0o100644}
        made = made_entries("fs.mkdir", arg)
        answers.entry_done("fs.mkdir", D, frozenset((name,)), "taken", made, leased_before=True)
    known = [k for k in range(12) if answers.listed_entry(D, b"f%d" % k) is not None]
    assert known == list(range(4, 12)), known
