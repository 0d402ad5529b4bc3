"""Which cluster a command works on when no ``--dir``/``--config`` names one.

Operators of Ceph (``CEPH_CONF``, ``/etc/ceph``) and etcd (``ETCDCTL_ENDPOINTS``) expect a
command to find its configuration without a flag, on a node host holding a bundle as well
as in the clone that made the cluster.  The rule, first match wins:

1. ``--config FILE`` or ``--dir DIR`` on the command line;
2. ``$BFTFS_CONFIG``: a ``cluster.toml`` file, or a directory holding one (an unpacked
   bundle);
3. ``$BFTFS_DIR``: a cluster directory (``cluster.toml`` in it);
4. the per-user directory ``${XDG_CONFIG_HOME:-~/.config}/bftfs``;
5. the system directories ``/etc/bftfs`` and ``/var/lib/bftfs`` (where a bundle is
   unpacked for the systemd units, ``bftfs/systemd``);
6. ``./nodes`` (where ``make up`` and ``bftfs init`` put a local cluster).

A place named explicitly (1-3) that holds no cluster is an error naming it, never a reason
to fall through to another cluster; places 4-6 are tried in turn and the error lists every
one.  Creating a cluster (``init``, ``up``) never searches: it uses ``--dir``, else
``$BFTFS_DIR`` (or ``$BFTFS_CONFIG``'s directory), else ``./nodes``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: The configuration file inside a cluster directory (``bftfs.local.CONFIG_NAME``).
CONFIG_NAME = "cluster.toml"

#: System-wide cluster directories, in search order (``bundle.py``: ``/var/lib/bftfs``).
SYSTEM_DIRS = (Path("/etc/bftfs"), Path("/var/lib/bftfs"))

#: The local cluster's directory, relative to the working directory.
LOCAL_DIR = Path("nodes")


class NotFound(Exception):
    """No cluster where the rule looked; the message names every place, in order."""


def user_dir(env: Mapping[str, str]) -> Path:
    """``${XDG_CONFIG_HOME:-$HOME/.config}/bftfs``."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "bftfs"


def _in(path: Path) -> Path:
    """``path`` itself when a file, else ``path/cluster.toml``."""
    return path if path.is_file() else path / CONFIG_NAME


def find_config(
    *,
    dir: Path | None = None,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    system_dirs: tuple[Path, ...] = SYSTEM_DIRS,
) -> Path:
    """The ``cluster.toml`` a command works on, by the rule of this module.

    Raises:
        NotFound: the place named (flag or variable) holds no cluster, or none of the
            searched places does; the message says where it looked and how to fix it.
    """
    env = os.environ if env is None else env
    if config is not None:
        if not config.is_file():
            raise NotFound(f"no cluster configuration {config} (from --config)")
        return config
    if dir is not None:
        return _named(dir / CONFIG_NAME, f"no cluster in {dir}", "--dir")
    if env.get("BFTFS_CONFIG"):
        given = Path(env["BFTFS_CONFIG"])
        if given.is_file() and given.name.endswith((".tar.gz", ".tgz")):
            raise NotFound(
                f"BFTFS_CONFIG={given} is a bundle archive: unpack it "
                f"(mkdir -p /var/lib/bftfs && tar -xzf {given} -C /var/lib/bftfs) and point "
                "BFTFS_CONFIG at the cluster.toml in it"
            )
        return _named(_in(given), f"no cluster configuration at {given}", "$BFTFS_CONFIG")
    if env.get("BFTFS_DIR"):
        given = Path(env["BFTFS_DIR"])
        return _named(given / CONFIG_NAME, f"no cluster in {given}", "$BFTFS_DIR")
    searched = [user_dir(env), *system_dirs, LOCAL_DIR]
    for place in searched:
        if (place / CONFIG_NAME).is_file():
            return place / CONFIG_NAME
    raise NotFound(
        "no cluster found; looked for --config/--dir (not given), $BFTFS_CONFIG and "
        "$BFTFS_DIR (unset), then "
        + ", ".join(str(p / CONFIG_NAME) for p in searched)
        + " (give --dir DIR, set BFTFS_DIR, or create one with `bftfs init`)"
    )


def _named(path: Path, message: str, source: str) -> Path:
    if not path.is_file():
        raise NotFound(f"{message} (from {source}; no {path})")
    return path


def home_to_create(dir: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Where ``init``/``up`` make (or find) the local cluster: ``--dir``, else
    ``$BFTFS_DIR``, else ``$BFTFS_CONFIG``'s directory, else ``./nodes`` (never a system
    or per-user directory: a checkout's ``make up`` must not start the nodes of a bundle
    unpacked on the same machine)."""
    env = os.environ if env is None else env
    if dir is not None:
        return dir
    if env.get("BFTFS_DIR"):
        return Path(env["BFTFS_DIR"])
    if env.get("BFTFS_CONFIG"):
        given = Path(env["BFTFS_CONFIG"])
        return given if given.is_dir() or given.suffix != ".toml" else given.parent
    return LOCAL_DIR
