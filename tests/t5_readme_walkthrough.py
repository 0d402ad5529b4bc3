"""The README's walkthrough, run as written (issue 67): its expected outputs had gone stale
(``verify`` "152 blocks", ``log`` "created, written, written").  The test takes the shell
block under "A five-minute walkthrough" from README.md, runs it line by line in one shell
in a fresh directory laid out as a fresh clone (what git tracks under ``nodes/`` and
``mount/``; ``.venv`` linked to this checkout's, ``make up`` and ``make down`` as the
Makefile runs them), and checks what each comment promises.  A README tracked in
``mount/`` made ``make up`` refuse its own mount point on every fresh clone, unseen here
while the directory started empty."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from mount_helpers import REPO

from bftfs.testing.mounts import fuse_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]

#: What ``make up`` and ``make down`` run (the Makefile's recipes, without its set-up).
MAKE = {
    "make up": ".venv/bin/bftfs up --dir nodes",
    "make down": ".venv/bin/bftfs down --dir nodes",
}


def walkthrough() -> list[tuple[str, str]]:
    """The walkthrough's lines: (command, its comment)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## A five-minute walkthrough") :]
    block = section[section.index("```sh\n") + 6 :]
    block = block[: block.index("```")]
    lines = []
    for raw in block.splitlines():
        parts = re.split(r"\s{2,}#\s?", raw, maxsplit=1)
        command = parts[0].strip()
        comment = parts[1].strip() if len(parts) > 1 else ""
        if command:
            lines.append((MAKE.get(command, command), comment))
        elif comment and lines:  # a comment continued on the next line
            lines[-1] = (lines[-1][0], lines[-1][1] + " " + comment)
    return lines


def run(tmp: Path, lines: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """Run ``lines`` in one bash in ``tmp``; each line's exit code and output."""
    script = []
    for i, (command, _) in enumerate(lines):
        script.append(f"{{ {command} ; }} > out.{i} 2>&1; echo $? > rc.{i}")
    (tmp / ".venv").symlink_to(REPO / ".venv")
    as_cloned(tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFTFS")}
    subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp, env=env, timeout=900, check=False)
    return [
        (int((tmp / f"rc.{i}").read_text()), (tmp / f"out.{i}").read_text())
        for i in range(len(lines))
    ]


def as_cloned(tmp: Path) -> None:
    """Put in ``tmp`` what a fresh clone has in the directories ``make up`` uses."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "nodes", "mount"], cwd=REPO, capture_output=True, check=False
    ).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes((REPO / rel).read_bytes())


def test_the_readme_walkthrough_does_what_it_says(tmp_path: Path) -> None:
    lines = walkthrough()
    try:
        results = run(tmp_path, lines)
    finally:
        subprocess.run(
            [str(REPO / ".venv/bin/bftfs"), "down", "--dir", "nodes"],
            cwd=tmp_path,
            capture_output=True,
            check=False,
        )
    for (command, comment), (code, out) in zip(lines, results, strict=True):
        print(f"$ {command}   # {comment}\n[{code}] {out}")

    def outcome(prefix: str) -> list[tuple[int, str]]:
        return [r for (c, _), r in zip(lines, results, strict=True) if c.startswith(prefix)]

    assert [out for _, out in outcome("diff -r")] == ["all there\n"] * 2
    [(code, out)] = outcome("bftfs status")
    assert code == 1 and "DEGRADED (5/6 nodes up, 1 mount)" in out
    assert "node(s) 2 not answering" in out
    [(code, out)] = outcome("bftfs verify")
    assert code == 1
    verify = (REPO / "README.md").read_text().split("`bftfs verify` prints:")[1]
    shown = verify[verify.index("```\n") + 4 :].split("```")[0]
    pattern = re.sub(r"\d+(?:\\\.\d+)?", r"\\d+(?:\\.\\d+)?", re.escape(shown.strip()))
    assert re.fullmatch(pattern, out.strip()), (shown, out)
    [(_, out)] = outcome("bftfs log")
    said = next(comment for c, comment in lines if c.startswith("bftfs log")).split(": ", 1)[1]
    changes = [row.split()[-1] for row in out.splitlines()[1:]]
    assert ", ".join(reversed(changes)) == said or ", ".join(changes) == said, out
    [(_, out)] = outcome("bftfs cat")
    assert out.strip() and "# a comment" not in out
