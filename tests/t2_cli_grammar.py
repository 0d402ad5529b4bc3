"""The grammar of issue 67 through the real command (``python -m bftfs`` in a child
process, as an operator's shell runs it): per-action help and refusals, ``--as`` and the
hidden ``--client``, a future WHEN refused with exit 2, ``--json`` that parses, and Tab
completion (``bftfs completion bash|zsh`` and what the shell code then asks the command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bftfs import local


def bftfs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bftfs", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_action_help_and_refusals_through_the_real_command() -> None:
    add = bftfs("client", "add", "laptop", "--help")
    assert add.returncode == 0 and add.stdout.startswith("usage: bftfs client add ")
    assert "--output" in add.stdout and "list" not in add.stdout
    extra = bftfs("client", "list", "extra")
    assert extra.returncode == 2 and "unrecognized arguments: extra" in extra.stderr


def test_a_future_at_is_refused_with_exit_2() -> None:
    """``bftfs cat PATH --at tomorrow`` printed today's content."""
    got = bftfs("cat", "fs:/a", "--at", "tomorrow", "--dir", "/nonexistent-cluster")
    assert got.returncode == 2, got
    assert "'tomorrow' is" in got.stderr and "in the future" in got.stderr, got.stderr


def test_client_list_and_quorums_json_parse(tmp_path: Path) -> None:
    home = tmp_path / "c"
    local.init_cluster(home, t=1, b=1, n=6, map_size=1 << 24)
    listed = bftfs("client", "list", "--json", "--dir", str(home))
    assert listed.returncode == 0, listed.stderr
    assert [c["name"] for c in json.loads(listed.stdout)["clients"]] == ["client0", "client1"]
    quorums = bftfs("quorums", "--json", "--t", "2", "--b", "1")
    assert quorums.returncode == 0, quorums.stderr
    assert json.loads(quorums.stdout)["n"] == 9


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_prints_a_script_for_bftfs(shell: str) -> None:
    got = bftfs("completion", shell)
    assert got.returncode == 0, got.stderr
    assert "bftfs" in got.stdout and "_ARGCOMPLETE" in got.stdout
    if shell == "bash":
        assert "complete " in got.stdout  # bash's builtin registering the function
    else:
        assert got.stdout.startswith("#compdef bftfs")


def _tab(line: str) -> list[str]:
    """What the shell code offers on Tab at the end of ``line``: it runs the command with
    argcomplete's variables set and reads the words from file descriptor 8."""
    env = dict(os.environ, _ARGCOMPLETE="1", _ARGCOMPLETE_IFS="\n")
    env.update(COMP_LINE=line, COMP_POINT=str(len(line)), _ARGCOMPLETE_SUPPRESS_SPACE="1")
    script = f"{sys.executable} -m bftfs 8>&1 9>/dev/null"
    got = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert got.returncode == 0, got.stderr
    return [w.strip() for w in got.stdout.split("\n") if w.strip()]


def test_tab_completes_commands_actions_and_options() -> None:
    assert "client" in _tab("bftfs cli")
    assert set(_tab("bftfs client ")) >= {"add", "revoke", "rotate", "list"}
    assert "--bytes-per-second" in _tab("bftfs generation move --by")
    assert "--as" in _tab("bftfs mount m --a")
