"""An earlier release of bftfs, built from this clone's history into a virtualenv of its
own, for the tests that check a rolling upgrade's two versions talk (issue 67,
docs/operations.md).

No network is needed: the release's source comes out of git (``git archive``, which
leaves no worktree registered behind a test that is killed), and its virtualenv reuses
the dependencies of the running one (a ``.pth`` file naming its site-packages, after
the release's own tree, so that the release's ``bftfs`` is the one imported).  The
release runs as its own processes: ``python -P -m bftfs`` of that virtualenv, and the
nodes its ``bftfs up`` starts are of that interpreter too (``local.start_node`` spawns
``sys.executable``).
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import bftfs

#: Where the releases and their commits are recorded (its "Releases" table): a clone
#: without tags still finds a release by its recorded commit.
RELEASE_TABLE = Path("docs") / "operations.md"
#: The last commit of wire version 4 (before the per-view key proofs), to check that a
#: speaker two versions back is refused with a clear error.
WIRE4_COMMIT = "90fa255ffbd40be767d6f07da838dfb75774c060"


def repository() -> Path:
    """The clone this bftfs is imported from (its parent directory)."""
    return Path(bftfs.__file__).resolve().parent.parent


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(repository()), *args], capture_output=True)


def recorded_commits() -> dict[str, str]:
    """Release -> full commit hash, from :data:`RELEASE_TABLE`'s rows
    (``| 0.1.0 | `57607b5...` | ...``)."""
    try:
        text = (repository() / RELEASE_TABLE).read_text()
    except OSError:
        return {}
    row = re.compile(r"^\|\s*`?(\d+\.\d+\.\d+)`?\s*\|\s*`?([0-9a-f]{40})`?\s*\|", re.M)
    return dict(row.findall(text))


def commit_of(version: str) -> tuple[str | None, str]:
    """The commit of release ``version``: its tag ``vVERSION``, else the commit recorded
    in :data:`RELEASE_TABLE` if this clone's history holds it; (None, why) when neither."""
    tagged = _git("rev-parse", "--verify", "--quiet", f"v{version}^{{commit}}")
    if tagged.returncode == 0:
        return tagged.stdout.decode().strip(), f"tag v{version}"
    recorded = recorded_commits().get(version)
    if recorded is None:
        return None, f"no tag v{version} and no commit recorded for {version}"
    if _git("cat-file", "-e", f"{recorded}^{{commit}}").returncode == 0:
        return recorded, f"recorded commit of {version}"
    return None, (
        f"release {version}: no tag v{version} and its commit {recorded} is not in this "
        "clone's history (a shallow clone?)"
    )


def has_commit(commit: str) -> bool:
    """Whether this clone's history holds ``commit``."""
    return _git("cat-file", "-e", f"{commit}^{{commit}}").returncode == 0


def extract(commit: str, dest: Path) -> Path:
    """The ``bftfs`` package of ``commit`` written under ``dest`` (``dest/bftfs``)."""
    archive = _git("archive", "--format=tar", commit, "bftfs")
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {commit}: {archive.stderr.decode().strip()}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def build(commit: str, dest: Path) -> Path:
    """A virtualenv at ``dest`` running the bftfs of ``commit`` on this virtualenv's
    dependencies; its python (module docstring)."""
    tree = extract(commit, dest / "src")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest / "venv")], check=True)
    python = dest / "venv" / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # .pth files are read in name order: the release's tree before the dependencies.
    (Path(site) / "00-bftfs-release.pth").write_text(f"{tree}\n")
    (Path(site) / "50-dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return python
