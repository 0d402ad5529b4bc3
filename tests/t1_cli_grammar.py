"""One grammar for the ``bftfs`` command (issue 67), checked on the parser the command runs:
each action of a noun-verb command is its own parser (its own ``--help``, extra
arguments refused), the old ``bftfs node --config C --id I`` still runs a node, the
identity is ``--as CLIENT`` everywhere (``--client`` a hidden alias where it meant that),
every exit code is in ``bftfs --help`` and in the guide, a WHEN in the future is refused,
and ``--json`` output parses."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from bftfs import local
from bftfs.cli import common
from bftfs.cli.main import build_parser, main
from bftfs.cli.when import CLOCK_SKEW_NS, WhenError, parse_when

ROOT = Path(__file__).resolve().parent.parent


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What ``bftfs ARGV --help`` prints (argparse exits 0 after printing it)."""
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "shown", "not_shown"),
    [
        (("client", "add"), "--output", "--json"),
        (("client", "revoke"), "--offline", "--output"),
        (("client", "list"), "--json", "--offline"),
        (("generation", "show"), "--json", "--bytes-per-second"),
        (("generation", "move"), "--bytes-per-second", "--nodes"),
        (("generation", "finish"), "--force", "--nodes"),
        (("view", "push"), "--as", "--json"),
        (("view", "show"), "--json", "--offline"),
        (("node", "run"), "--test-objects", "--address"),
        (("node", "stop"), "--byzantine", "--test-objects"),
        (("node", "replace"), "--address", "--test-objects"),
        (("group", "add"), "--domain", "--force"),
        (("group", "finish"), "--force", "--domain"),
        (("group", "show"), "--json", "--offline"),
    ],
)
def test_each_action_has_its_own_help(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], shown: str, not_shown: str
) -> None:
    """``bftfs client add --help`` showed the whole group's options (list's, rotate's...);
    now each action's help has its own usage line and options only."""
    text = help_of(capsys, *argv)
    assert f"usage: bftfs {' '.join(argv)} " in text, text
    assert shown in text and not_shown not in text, text


@pytest.mark.parametrize(
    "argv",
    [
        ("client", "list", "extra"),
        ("client", "add", "a", "b"),
        ("generation", "show", "extra"),
        ("view", "show", "extra"),
        ("view", "adopt", "--json"),
        ("node", "stop", "2", "3"),
        ("node", "run", "extra"),
        ("client",),  # an action is needed
        ("generation",),
    ],
)
def test_an_argument_no_action_takes_is_refused(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    """``bftfs client list extra`` was accepted (the extra word taken for a NAME list
    ignores); an argument the action does not take is a usage error, exit 2."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_the_old_node_form_still_runs_a_node() -> None:
    """``bftfs node --config C --id I`` is what ``bftfs up`` (bftfs/local.py) and the
    shipped systemd unit run: it stays a ``run``, with every option they pass."""
    old = parse(
        "node", "--config", "c.toml", "--id", "3", "--byzantine", "corrupt-fragments",
        "--metrics-port", "0", "--batch-sched",
    )  # fmt: skip
    assert old.action is None and old.id == 3 and old.config == Path("c.toml")
    assert (old.byzantine, old.metrics_port, old.batch_sched) == ("corrupt-fragments", 0, True)
    new = parse("node", "run", "--config", "c.toml", "--id", "3", "--no-metrics")
    assert new.action == "run" and new.id == 3 and new.no_metrics and new.func is old.func
    unit = (ROOT / "bftfs" / "systemd" / "bftfs-node@.service").read_text()
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart=").replace("%i", "4"))[1:]
    from_unit = parse(*argv)
    assert from_unit.action is None and from_unit.id == 4


def test_options_given_before_the_action_are_kept() -> None:
    """argparse copies an action's defaults over what the command's own parser read: the
    cluster named before the action must not be dropped for another one found later."""
    assert parse("view", "--dir", "X", "push").dir == Path("X")
    assert parse("view", "--json").json and parse("view").action == "show"
    stop = parse("node", "--dir", "X", "stop", "2")
    assert (stop.action, stop.index, stop.dir) == ("stop", 2, Path("X"))
    assert parse("node", "stop", "2", "--dir", "Y").dir == Path("Y")


def _parsers(p: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Any]:
    """Every parser of the command, with its words (``("client", "add")``)."""
    out = [(path, p)]
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                if sub is not p and (path + (name,), sub) not in out:
                    out += _parsers(sub, path + (name,))
    return out


#: The commands that act as a client identity (every one must spell it ``--as``).
ACTING = [
    "mount", "up", "verify", "log", "cat", "restore", "diff", "changes", "revert",
    "snapshot create", "snapshot list", "snapshot delete", "snapshot auto",
    "client add", "client revoke", "client rotate", "view push", "view keys",
    "generation new", "generation show", "generation move", "generation finish",
    "node replace", "node add", "node remove", "group add", "group finish",
]  # fmt: skip


def test_the_identity_is_as_client_everywhere() -> None:
    """``--client`` was the identity on mount, up and verify and a writer filter on log,
    changes and revert; ``--as`` is the identity on every command that acts as one."""
    parsers = {" ".join(path): p for path, p in _parsers(build_parser())}
    for words in ACTING:
        options = {s: a for a in parsers[words]._actions for s in a.option_strings}
        assert "--as" in options and options["--as"].dest == "as_client", words
        assert options["--as"].metavar == "CLIENT", words
    for words, p in parsers.items():
        for a in p._actions:
            if "--client" in a.option_strings and a.dest == "as_client":
                assert a.help == argparse.SUPPRESS, f"{words}: --client shown as the identity"


def test_client_still_works_where_it_meant_the_identity_and_filters_where_it_filtered() -> None:
    """fstab lines and scripts say ``--client``: kept, hidden, meaning ``--as``."""
    assert parse("mount", "m", "--client", "client1").as_client == "client1"
    assert parse("mount", "m", "--as", "client1").as_client == "client1"
    assert parse("up", "--client", "client2").as_client == "client2"
    assert parse("verify", "--client", "client2").as_client == "client2"
    assert parse("verify").as_client == "client0"
    log = parse("log", "fs:/", "--client", "client1")
    assert (log.client, log.as_client) == ("client1", "client0")
    revert = parse("revert", "fs:/", "--client", "c", "--since=-1h", "--as", "client1")
    assert (revert.client, revert.as_client) == ("c", "client1")


def _exit_constants() -> dict[str, int]:
    return {k: v for k, v in vars(common).items() if k.startswith("EXIT_") and isinstance(v, int)}


def test_every_exit_code_is_in_the_help_and_the_guide(capsys: pytest.CaptureFixture[str]) -> None:
    """``bftfs --help`` listed 0-6 while the CLI also exits 7, 8, 32 and 130."""
    constants = _exit_constants()
    assert {0, 1, 2, 3, 4, 5, 6, 7, 8, 32, 130} <= set(constants.values())
    text = help_of(capsys)
    listed = {int(m) for m in re.findall(r"^\s+(\d+)  \S", text, re.MULTILINE)}
    missing = {k: v for k, v in constants.items() if v not in listed}
    assert not missing, (missing, text)
    guide = (ROOT / "docs" / "guide.md").read_text()
    section = guide[guide.index("### Exit codes") :]
    section = section[: section.index("\n#", 1)]
    in_guide = {int(m) for m in re.findall(r"^\| (\d+) +\|", section, re.MULTILINE)}
    assert in_guide == set(constants.values()), (in_guide, sorted(constants.values()))


def test_a_when_in_the_future_is_refused() -> None:
    """``bftfs cat PATH --at tomorrow`` printed today's content as tomorrow's."""
    now = 1_796_000_000 * 10**9
    for future in ("tomorrow", "in 2 hours", "2099-01-01", f"@{now // 10**9 + 60}"):
        with pytest.raises(WhenError, match="in the future"):
            parse_when(future, now)
    # A few seconds of clock skew between machines is no mistake.
    assert parse_when(f"@{(now + CLOCK_SKEW_NS) // 10**9}", now) == now + CLOCK_SKEW_NS
    assert parse_when("now", now) == now and parse_when("-1m", now) == now - 60 * 10**9
    # Whether a snapshot name reads as a time asks without the check.
    assert isinstance(parse_when("tomorrow", now, future_ok=True), int)


@pytest.mark.parametrize(
    "argv",
    [
        ("cat", "fs:/a", "--at", "tomorrow"),
        ("restore", "fs:/a", "--at", "tomorrow"),
        ("log", "fs:/a", "--since", "tomorrow"),
        ("diff", "fs:/a", "--from", "-1h", "--to", "tomorrow"),
        ("changes", "fs:/", "--since", "in 3 days"),
        ("mount", "m", "--at", "tomorrow"),
        ("snapshot", "create", "s", "--at", "tomorrow"),
    ],
)
def test_every_when_option_refuses_the_future(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    """Refused while parsing (exit 2), before any cluster is looked for or asked."""
    with pytest.raises(SystemExit) as e:
        main([*argv, "--dir", "/nonexistent-cluster"])
    assert e.value.code == 2
    assert "in the future" in capsys.readouterr().err


def test_quorums_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quorums", "--json", "--n", "6"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["t"], got["b"], got["n"]) == (1, 1, 6)
    assert [p["runs"] for p in got["protocols"]] == [True, True]
    assert got["protocols"][0]["quorum"] == 5 and got["protocols"][0]["at_one_more_fault"]
    assert main(["quorums", "--json", "--n", "5"]) == common.EXIT_CONFIG
    broken = json.loads(capsys.readouterr().out)
    assert broken["protocols"][0]["runs"] is False and broken["protocols"][0]["broken"]
    assert main(["quorums", "--json", "--t", "1", "--b", "2"]) == common.EXIT_CONFIG
    assert "error" in json.loads(capsys.readouterr().out)


def test_client_list_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "c"
    local.init_cluster(home, t=1, b=1, n=6, clients=3, map_size=1 << 24)
    capsys.readouterr()
    assert main(["client", "revoke", "client2", "--offline", "--dir", str(home)]) == 0
    capsys.readouterr()
    assert main(["client", "list", "--json", "--dir", str(home)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == {
        "clients": [{"id": 0, "name": "client0"}, {"id": 1, "name": "client1"}],
        "removed": [{"id": 2, "name": "client2"}],
    }
