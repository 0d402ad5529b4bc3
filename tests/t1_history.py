"""Tier 1: the pure parts of version history (issue 17): agreement over servers' reports,
chain-page validation, what changed between two states, WHEN parsing and path mapping."""

from __future__ import annotations

import datetime
import hashlib
import io
from pathlib import Path

import pytest

from bftfs.cli.when import WhenError, exact_time, first_error, fs_path, parse_when
from bftfs.fs.history import ObjectHistory, Reclaimed, Undecided, Version, changes, plan_revert
from bftfs.fsobjects.dirents import Entries
from bftfs.qu.messages import MessageError
from bftfs.qu.past import (
    ChainEntry,
    agree,
    agreed_time,
    current_at,
    parse_versions_reply,
    state_digest,
)
from bftfs.qu.timestamp import Timestamp

B = 1


def ts(t: int, client: int = 7) -> Timestamp:
    return Timestamp(t, False, client, hashlib.blake2b(str(t).encode(), digest_size=32).digest())


def entry(t: int, state: bytes | None, stored: int, co: int | None = None) -> ChainEntry:
    return ChainEntry(ts(t), None if co is None else ts(co), state_digest(state), stored)


def test_a_version_needs_b_plus_1_matching_digests() -> None:
    honest = entry(5, b"state", 100, co=4)
    forged = entry(5, b"forged", 100, co=4)
    assert agree(ts(5), {0: honest, 1: forged}, B) is None  # one report of each: no belief
    got = agree(ts(5), {0: honest, 1: forged, 2: honest}, B)
    assert got is not None and got.digest == state_digest(b"state") and got.hosts == (0, 2)
    assert got.co == ts(4)


def test_conditioned_on_needs_b_plus_1_too_and_synced_reports_do_not_count() -> None:
    reports = {0: entry(5, b"s", 1, co=4), 1: entry(5, b"s", 1, co=None), 2: entry(5, b"s", 1)}
    got = agree(ts(5), reports, B)
    assert got is not None and got.co is None  # the walk cannot go on from here yet
    reports[3] = entry(5, b"s", 1, co=4)
    got = agree(ts(5), reports, B)
    assert got is not None and got.co == ts(4)


@pytest.mark.parametrize("lie", [0, 10**18])
def test_b_lying_clocks_cannot_move_a_time_outside_the_honest_range(lie: int) -> None:
    honest = [1000, 1010, 1020]
    reports = {i: entry(5, b"s", t, co=4) for i, t in enumerate(honest)}
    reports[9] = entry(5, b"s", lie, co=4)  # a host that reports the true digest, a false time
    got = agree(ts(5), reports, B)
    assert got is not None and min(honest) <= got.time_ns <= max(honest)


@pytest.mark.parametrize("lie", [1, 10**19])
def test_a_time_fewer_than_2b_plus_1_nodes_give_is_unknown(lie: int) -> None:
    """Issue 31: a version only ``b + 1`` nodes still report, one of them lying, has no
    time the liar could not have set (the lower median of two is the lower report)."""
    reports = {0: entry(5, b"s", 1000, co=4), 9: entry(5, b"s", lie, co=4)}
    got = agree(ts(5), reports, B)
    assert got is not None and got.co == ts(4) and got.time_ns is None
    # Reports without a time (0) do not count towards the 2b + 1.
    assert agreed_time([1000, 0, 0, 1010], B) is None
    assert agreed_time([1000, 0, 1005, 1010], B) == 1005
    # With b = 2, five reports of which two lie either way still land in the honest range.
    assert agreed_time([1, 2, 1000, 1010, 10**19], 2) == 1000
    assert agreed_time([1, 1000, 1010, 1020], 2) is None


def test_an_unknown_time_never_answers_for_an_earlier_moment() -> None:
    """Newest first: a version of unknown time is never taken as current at a moment; newer
    than a version known to be after the moment it is after it too; older, it could be
    the current one, and the answer is undecided."""
    got = current_at([300, None, 100], 200)
    assert got.index == 2 and got.undecided  # the unknown one may be before 200
    got = current_at([None, 300, 100], 200)
    assert got.index == 2 and not got.undecided  # it is newer than 300: after 200
    got = current_at([300, None, None], 50)
    assert got.index is None and got.undecided  # the object may have existed at 50
    got = current_at([300, 250], 50)
    assert got.index is None and not got.undecided  # it did not exist at 50
    assert current_at([300, 100], 100).index == 1
    hist = ObjectHistory(1, complete=True)
    hist.versions = [
        Version(1, ts(3), 300, 7, {"k": "f"}, ("written",)),
        Version(1, ts(1), None, 7, {"k": "f"}, ("created",)),
    ]
    assert hist.at(400) is hist.versions[0]
    with pytest.raises(Undecided):
        hist.at(50)  # before the file existed? its creation's time is not known


def test_a_chain_page_must_follow_conditioned_on_links_from_the_asked_version() -> None:
    good = [entry(5, b"a", 1, co=4).to_wire(), entry(4, b"b", 1, co=2).to_wire()]
    assert [e.lt for e in parse_versions_reply(good, ts(5))] == [ts(5), ts(4)]
    with pytest.raises(MessageError):
        parse_versions_reply(good, ts(6))  # does not start where asked
    broken = [entry(5, b"a", 1, co=4).to_wire(), entry(3, b"b", 1, co=2).to_wire()]
    with pytest.raises(MessageError):
        parse_versions_reply(broken, ts(5))
    with pytest.raises(MessageError):
        parse_versions_reply([[b"x", None, None, 0]], ts(5))


def _file(**kw: object) -> dict:
    base = {
        "k": "f",
        "mode": 0o100644,
        "uid": 0,
        "gid": 0,
        "nl": 1,
        "size": 3,
        "d": 9,
        "i": b"abc",
        "x": {},
        "mt": 1,
        "at": 1,
        "ct": 1,
        "v": 1,
        "alloc": 0,
    }
    base.update(kw)
    return base


def test_what_changed_in_a_file() -> None:
    f = _file()
    assert changes(None, f) == ("created",)
    assert changes(f, _file(i=b"abd", v=2)) == ("written",)
    assert changes(f, _file(i=b"ab", size=2)) == ("truncated",)
    assert changes(f, _file(i=b"", size=0, d=10)) == ("truncated",)
    assert changes(f, _file(mode=0o100600)) == ("chmod",)
    assert changes(f, _file(uid=5)) == ("chown",)
    assert changes(f, _file(nl=0)) == ("removed",)
    assert changes(f, _file(ct=2)) == ("renamed",)
    assert changes(f, _file(wl=[1, 2], alloc=4096, v=2)) == ()  # a write lease: bookkeeping
    assert changes(f, _file(i=None, bt=77, size=70000)) == ("written",)


def _dir(names: dict[bytes, int]) -> dict:
    e = Entries({})
    for name, oid in names.items():
        e[name] = [oid, 8]
    return {
        "k": "d",
        "e": e.packed(),
        "mode": 0o40755,
        "uid": 0,
        "gid": 0,
        "dead": False,
        "x": {},
        "mt": 1,
        "at": 1,
        "ct": 1,
    }


def test_what_changed_in_a_directory() -> None:
    a = _dir({b"a": 11})
    assert changes(a, _dir({b"a": 11, b"c": 12})) == ("added c",)
    assert changes(a, _dir({b"b": 11})) == ("renamed a -> b",)
    assert changes(a, _dir({})) == ("removed a",)
    assert changes(a, _dir({b"a": 13})) == ("replaced a",)


def test_when_forms() -> None:
    now = 1_796_000_000 * 10**9  # 2026-11-29, after every time below (a later one is refused)
    assert parse_when("now", now) == now
    assert parse_when("-10m", now) == now - 600 * 10**9
    assert parse_when("-1.5h", now) == now - 5400 * 10**9
    assert parse_when("@1763900000.5", now) == 1_763_900_000_500_000_000
    assert parse_when("2026-11-23T14:05:00+00:00", now) == 1_795_442_700 * 10**9
    assert parse_when("2026-11-23T14:05:00.25+00:00", now) == 1_795_442_700_250_000_000
    assert parse_when("a1b2c3", now) == "a1b2c3"
    # A word is a snapshot name or a version id, looked up against the cluster later.
    assert parse_when("before-upgrade", now) == "before-upgrade"
    for bad in ("two words", "-10x", "@soon", "a/b"):
        with pytest.raises(WhenError):
            parse_when(bad, now)


def _local(ns: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ns / 1e9).astimezone()


def _ns_of(dt: datetime.datetime) -> int:
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def test_times_in_words_count_from_the_given_now_in_local_time() -> None:
    """Issue 36: "yesterday 14:00" and "2 hours ago" were refused."""
    now = 1_795_616_431_219_471_681  # 2026-11-25 around 14:20 UTC
    here = _local(now)
    yesterday_2pm = (here - datetime.timedelta(days=1)).replace(
        hour=14, minute=0, second=0, microsecond=0
    )
    assert parse_when("yesterday 14:00", now) == _ns_of(yesterday_2pm)
    # Counted from ``now`` to the microsecond (dateparser's resolution), not from the clock.
    assert abs(parse_when("2 hours ago", now) - (now - 7200 * 10**9)) < 1000  # type: ignore[operator]
    assert abs(parse_when("10 minutes ago", now) - (now - 600 * 10**9)) < 1000  # type: ignore[operator]
    monday = here - datetime.timedelta(days=(here.weekday() or 7))
    assert parse_when("last monday 9:30", now) == _ns_of(
        monday.replace(hour=9, minute=30, second=0, microsecond=0)
    )
    # A bare number is no guess at a date: it may be a snapshot's name.
    assert parse_when("2024", now) == "2024"
    for bad in ("2 hourz ago", "yesterday 25:00", "the day before"):
        with pytest.raises(WhenError, match="not a time"):
            parse_when(bad, now)


def test_an_exact_time_names_the_same_moment_in_a_later_run() -> None:
    """What a dry run prints (issue 36): read back, the very same nanosecond."""
    for ns in (1_795_616_431_219_471_681, 1_795_616_431_000_000_000, 7):
        assert parse_when(exact_time(ns), ns + 10**12) == ns


def test_a_bad_time_is_refused_before_the_configuration_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 36: a nonsense time took 1.4-2.7 s to be refused, the cluster asked first.  Now
    argparse refuses it (exit 2, the forms in the message): the directory named here holds
    no cluster at all, which would be exit 4 had anything looked."""
    from bftfs.cli.main import main

    for argv in (
        ["diff", "fs:/", "--from", "2 hourz ago"],
        ["changes", "fs:/", "--since", "yesterday 25:00"],
        ["restore", "fs:/", "--at", "a/b", "--to", str(tmp_path / "out")],
        ["revert", "fs:/", "--client", "c", "--since", "-10x"],
    ):
        with pytest.raises(SystemExit) as exited:
            main([*argv, "--dir", str(tmp_path / "no-cluster")])
        assert exited.value.code == 2, argv
        err = capsys.readouterr().err
        assert "not a time" in err and "2 hours ago" in err, err
    assert not (tmp_path / "out").exists()


def test_a_history_error_from_concurrent_reads_comes_out_as_itself() -> None:
    """Trees and restores read 16 objects at a time in trio nurseries, whose errors come
    as exception groups: the command must still end with the history error's message and
    exit 7, not a traceback of the group (issue 36)."""
    undecided = Undecided("which version was current cannot be told")
    group = ExceptionGroup(
        "nursery", [OSError("a write"), ExceptionGroup("inner", [undecided, Reclaimed("x")])]
    )
    assert first_error(group) is undecided
    plain = OSError("disk full")
    assert first_error(ExceptionGroup("nursery", [plain])) is plain
    assert first_error(plain) is plain


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_drawn_on_a_terminal_only() -> None:
    """Issue 36: the long history commands printed nothing for a minute; a script reading
    their output must not get a progress bar either."""
    from bftfs.cli.progress import progress

    for stream, shown in ((io.StringIO(), False), (_Terminal(), True)):
        with progress("reading /tree", stream) as update:
            for done in range(1, 51):
                update(done, 100)
        text = stream.getvalue()
        assert ("reading /tree" in text and "50/100" in text and "left" in text) == shown, text


def test_paths_map_from_a_mount_or_stay_inside_the_file_system(tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    assert fs_path(str(mp / "docs" / "a.txt"), [mp]) == "/docs/a.txt"
    assert fs_path(str(mp), [mp]) == "/"
    assert fs_path("/docs/a.txt", [mp]) == "/docs/a.txt"
    with pytest.raises(ValueError):
        fs_path("relative/not/under/a/mount", [mp])


def test_a_path_of_this_machine_outside_every_mount_is_refused(tmp_path: Path) -> None:
    """Issue 31: ``bftfs log /etc/passwd`` read the history of ``/etc/passwd`` inside the
    cluster; a path whose top directory exists here names this machine's file."""
    mp = tmp_path / "mnt"
    for local in ("/etc/passwd", str(tmp_path / "elsewhere.txt"), "/etc"):
        with pytest.raises(ValueError, match=f"outside every mount.*fs:{local}"):
            fs_path(local, [mp])
    assert fs_path("fs:/etc/passwd", [mp]) == "/etc/passwd"
    assert fs_path("fs:/", [mp]) == "/"
    assert fs_path("/", [mp]) == "/"
    with pytest.raises(ValueError, match="starts with /"):
        fs_path("fs:docs", [mp])


# Revert planning -------------------------------------------------------------------------

VANDAL, OTHER = 9, 3


def ver(oid: int, t: int, client: int, state: dict | None, *changes: str) -> Version:
    return Version(oid, ts(t, client), t, client, state, changes)


def test_a_revert_undoes_only_what_the_client_alone_changed() -> None:
    d_root, f_keep, f_over, f_gone, f_moved, f_new, f_later = 1, 10, 11, 12, 13, 14, 15
    root = ver(d_root, 1, OTHER, _dir({}))
    old = {oid: ver(oid, 1, OTHER, _file(i=b"old", ct=1)) for oid in range(10, 16)}
    before = {
        "": root,
        "keep": old[f_keep],
        "over": old[f_over],
        "gone": old[f_gone],
        "moved": old[f_moved],
        "later": old[f_later],
    }
    over2 = ver(f_over, 5, VANDAL, _file(i=b"junk"), "written")
    moved2 = ver(f_moved, 6, VANDAL, _file(i=b"old", ct=6), "renamed")
    new = ver(f_new, 7, VANDAL, _file(i=b"junk"), "created")
    later2 = ver(f_later, 5, VANDAL, _file(i=b"junk"), "written")
    later3 = ver(f_later, 8, OTHER, _file(i=b"mine"), "written")
    after = {
        "": root,
        "keep": old[f_keep],
        "over": over2,
        "elsewhere": moved2,
        "new": new,
        "later": later3,
    }
    versions = {
        f_over: [over2, old[f_over]],
        f_gone: [ver(f_gone, 6, VANDAL, _file(nl=0), "removed"), old[f_gone]],
        f_moved: [moved2, old[f_moved]],
        f_new: [new],
        f_later: [later3, later2, old[f_later]],
    }
    plan = plan_revert(VANDAL, before, after, versions, since_ns=2, until_ns=100)
    got = [(a.kind, a.path, a.to) for a in plan.actions]
    # Removals first, then moves back, then contents (a moved file's content after its move).
    assert got == [
        ("remove", "new", ""),
        ("move", "elsewhere", "moved"),
        ("restore", "gone", ""),
        ("restore", "over", ""),
    ], got
    assert plan.conflicts == [("later", "changed later by another client")]
    restored = {a.path: a.version for a in plan.actions if a.kind == "restore"}
    assert restored["over"] is old[f_over] and restored["gone"] is old[f_gone]


def test_a_directory_the_client_made_stays_when_others_put_files_in_it() -> None:
    root = ver(1, 1, OTHER, _dir({}))
    made = ver(20, 5, VANDAL, _dir({b"x": 21}), "created")
    theirs = ver(21, 6, OTHER, _file(), "created")
    after = {"": root, "made": made, "made/x": theirs}
    plan = plan_revert(
        VANDAL, {"": root}, after, {20: [made], 21: [theirs]}, since_ns=2, until_ns=100
    )
    assert plan.actions == [] and plan.conflicts == [("made", "holds entries others made")]


def test_an_age_after_a_when_option_is_its_value() -> None:
    from bftfs.cli.main import _join_ages

    assert _join_ages(["cat", "f", "--at", "-10m"]) == ["cat", "f", "--at=-10m"]
    assert _join_ages(["diff", "d", "--from", "-1h", "--to", "-5m", "-p"]) == [
        "diff",
        "d",
        "--from=-1h",
        "--to=-5m",
        "-p",
    ]
    assert _join_ages(["log", "f", "--json"]) == ["log", "f", "--json"]
