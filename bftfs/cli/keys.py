"""``bftfs keys export|import``: a cluster directory's private keys in one archive sealed
under a passphrase, and back (issue 67; docs/guide.md, "Backing up keys").

``bftfs init`` keeps every private key in the cluster directory and nowhere else, and each
costs something different when lost (:data:`LOSSES`): the volume key, every sealed file's
contents; the administrator's key, every membership change from then on; a node's key,
that node (it must be replaced); a client's key, that client (revoke it, add another).
``export`` writes those present here, with the configuration and the signed view, as JSON
sealed by :func:`bftfs.crypto.seal_with_passphrase` (Argon2id, then ``SecretBox``);
``import`` puts back what is missing, leaves what is already there and the same, and
refuses a key that differs from one present (``--force`` replaces it) or that is not the
configuration's (a stale key, a rotated client's or another cluster's, is never written).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bftfs import config as cfgmod
from bftfs import local as localmod
from bftfs.cli import discover
from bftfs.cli.common import EXIT_KEY, QuietError, config_of, with_cluster
from bftfs.config import ClusterConfig
from bftfs.crypto import (
    AdminKey,
    Identity,
    PassphraseError,
    VolumeKey,
    open_with_passphrase,
    seal_with_passphrase,
)

#: What losing each kind of key costs (``bftfs init`` prints it; the guide repeats it).
LOSSES = {
    "volume": "every sealed file's contents, for good (no node holds it)",
    "admin": "membership never changes again (no client or node added or replaced)",
    "node": "that node must be replaced (bftfs node replace I)",
    "client": "that client must be revoked and another added",
}

#: Members restored only when absent: public, and newer ones than a backup's are usual.
PUBLIC = ("cluster.toml", "view.signed")
#: The administrator's copy of every node's view chain (docs/membership.md, "Per-view
#: keys"); with each node's own ``private/view-chain`` these have no public half to check
#: an archive's against, so they are restored only into a cluster a checked key identifies.
CHAINS = "admin/private/view-chains"
FORMAT = 1


def members(cfg: ClusterConfig) -> dict[str, Path]:
    """Each file of ``cfg``'s that a backup holds, by its name in the archive: node keys as
    ``nodes/<I>/private/key`` (their data directory may lie anywhere), the rest by their
    path under the cluster directory."""
    out: dict[str, Path] = {name: cfg.home / name for name in PUBLIC}
    out["admin/private/key"] = cfg.admin_key_path
    out[CHAINS] = cfg.admin_key_path.with_name("view-chains")
    out["volume/private/key"] = cfg.volume_key_path
    for key_id in cfg.previous_volume_key_ids:
        out[f"volume/private/previous/{key_id.hex()}"] = cfg.previous_volume_key_path(key_id)
    for c in cfg.clients:
        out[f"clients/{c.name}/private/key"] = cfg.client_key_path(c.name)
    for s in cfg.nodes:
        out[f"nodes/{int(s.id)}/private/key"] = s.key_path
        out[f"nodes/{int(s.id)}/private/view-chain"] = s.key_path.with_name("view-chain")
    return out


def backup_notes(cfg: ClusterConfig) -> list[str]:
    """What ``bftfs init`` says of the keys it made: each file, what losing it costs."""
    rows = []
    if cfg.sealed:
        rows.append((str(cfg.volume_key_path.relative_to(cfg.home)), LOSSES["volume"]))
    if cfg.admin_key is not None:
        rows.append((str(cfg.admin_key_path.relative_to(cfg.home)), LOSSES["admin"]))
    rows.append(("node<I>/private/key", LOSSES["node"]))
    rows.append(("clients/NAME/private/key", LOSSES["client"]))
    return [
        "  back up the private keys (`bftfs keys export FILE`: one passphrase-sealed archive);",
        "  what losing each costs:",
        *(f"    {path:25} {cost}" for path, cost in rows),
    ]


def _secret(data: bytes) -> bytes:
    """The 32 bytes of a key file's hex text (``crypto.save_secret``'s format)."""
    return bytes.fromhex(data.decode().strip())


def _checkable(name: str) -> bool:
    """Whether ``name`` is a key with a public half in the configuration."""
    return name not in PUBLIC and name != CHAINS and not name.endswith("/view-chain")


def _mismatch(cfg: ClusterConfig, name: str, data: bytes) -> str | None:
    """Why the key ``name`` of an archive is not ``cfg``'s (None: it is, or cannot be
    checked: public files and view chains)."""
    if not _checkable(name):
        return None
    try:
        secret = _secret(data)
    except (ValueError, UnicodeDecodeError):
        return "not a key file"
    parts = name.split("/")
    if parts[0] == "nodes":
        node = int(parts[1])
        if node not in cfg.node_ids:
            return f"the cluster has no node {node} now"
        ok = Identity(cfg.node(node).id, secret).public == cfg.node(node).public_key
    elif parts[0] == "clients":
        known = {c.name: c for c in cfg.clients}
        if parts[1] not in known:
            return f"the cluster has no client {parts[1]} now"
        ok = Identity(known[parts[1]].id, secret).public == known[parts[1]].public_key
    elif name == "admin/private/key":
        ok = cfg.admin_key is not None and AdminKey(secret).public == cfg.admin_key
    elif name == "volume/private/key":
        ok = VolumeKey(secret).key_id == cfg.volume_key_id
    else:  # volume/private/previous/<id>
        key_id = VolumeKey(secret).key_id
        ok = key_id.hex() == parts[-1] and key_id in cfg.previous_volume_key_ids
    return None if ok else "not the key the configuration names (a stale or another's)"


def passphrase(args: argparse.Namespace, *, confirm: bool) -> bytes:
    """The passphrase: ``--passphrase-file``'s first line, else asked on the terminal
    (twice when ``confirm``: a typo in a backup's passphrase loses the backup)."""
    if args.passphrase_file is not None:
        try:
            text = args.passphrase_file.read_text().splitlines()
        except OSError as e:
            raise QuietError(
                f"cannot read {args.passphrase_file}: {e.strerror}", EXIT_KEY
            ) from None
        phrase = text[0] if text else ""
    else:
        try:
            phrase = getpass.getpass("passphrase: ")
            if confirm and getpass.getpass("passphrase again: ") != phrase:
                raise QuietError("the passphrases differ: nothing written", EXIT_KEY)
        except EOFError:
            raise QuietError(
                "no passphrase given (no terminal to ask on): use --passphrase-file", EXIT_KEY
            ) from None
    if not phrase:
        raise QuietError("an empty passphrase protects nothing: give one", EXIT_KEY)
    return phrase.encode()


def cmd_export(args: argparse.Namespace) -> int:
    """``bftfs keys export FILE``."""
    path = config_of(args)
    cfg = cfgmod.load(path)
    files = {}
    for name, where in members(cfg).items():
        try:
            files[name] = where.read_bytes()
        except FileNotFoundError:
            continue  # a bundle's directory holds one key: back up what is here
        except OSError as e:
            raise QuietError(f"cannot read {where}: {e.strerror}", EXIT_KEY) from None
    keys = sorted(n for n in files if n not in PUBLIC)
    if not keys:
        raise QuietError(f"no private key in {cfg.home}: nothing to back up", EXIT_KEY)
    out: Path = args.file
    if out.exists() and not args.force:
        raise QuietError(f"{out} exists (--force replaces it)", EXIT_KEY)
    doc = {
        "format": FORMAT,
        "home": str(cfg.home),
        "created": int(time.time()),
        "files": {n: base64.b64encode(d).decode() for n, d in sorted(files.items())},
    }
    sealed = seal_with_passphrase(passphrase(args, confirm=True), json.dumps(doc).encode())
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(sealed)
    tmp.replace(out)
    print(f"wrote {out}: {len(keys)} private key(s) of {cfg.home}, sealed under the passphrase")
    for name in keys:
        print(f"  {name}")
    print("  keep it away from the cluster's machines; without the passphrase it is useless")
    return 0


def _open(args: argparse.Namespace) -> dict[str, bytes]:
    """The archive's files, by name.

    Raises:
        QuietError: unreadable, wrong passphrase, altered, or not an archive (exit 5).
    """
    try:
        sealed = args.file.read_bytes()
    except OSError as e:
        raise QuietError(f"cannot read {args.file}: {e.strerror}", EXIT_KEY) from None
    try:
        doc: Any = json.loads(open_with_passphrase(passphrase(args, confirm=False), sealed))
        if doc.get("format") != FORMAT:
            raise QuietError(f"{args.file}: archive format {doc.get('format')!r} unknown", 2)
        return {str(n): base64.b64decode(d) for n, d in doc["files"].items()}
    except PassphraseError as e:
        raise QuietError(f"cannot open {args.file}: {e}", EXIT_KEY) from None
    except (ValueError, KeyError, AttributeError, TypeError):
        raise QuietError(
            f"{args.file}: the sealed contents are not a key archive", EXIT_KEY
        ) from None


def _target(args: argparse.Namespace, files: dict[str, bytes]) -> ClusterConfig:
    """The cluster the keys go to: the one found as every command finds it, else (the
    whole directory lost) a new directory made from the archive's configuration."""
    try:
        return cfgmod.load(config_of(args))
    except localmod.ClusterError:
        if getattr(args, "config", None) is not None or "cluster.toml" not in files:
            raise
    home = discover.home_to_create(args.dir)
    home.mkdir(parents=True, exist_ok=True)
    for name in PUBLIC:
        if name in files:
            (home / name).write_bytes(files[name])
    print(f"restored the configuration into {home}")
    return localmod.load_cluster(home)


def cmd_import(args: argparse.Namespace) -> int:
    """``bftfs keys import FILE``: every change checked before any is written."""
    files = _open(args)
    cfg = _target(args, files)
    where = members(cfg)
    write, same, skipped, differ = [], [], [], []
    for name, data in sorted(files.items()):
        if name not in where:
            skipped.append(f"{name}: the cluster has no such file now")
            continue
        why = _mismatch(cfg, name, data)
        if why is not None:
            skipped.append(f"{name}: {why}")
            continue
        path = where[name]
        if not path.exists():
            write.append(name)
        elif path.read_bytes() == data:
            same.append(name)
        elif name in PUBLIC:
            same.append(name)  # a newer configuration or view stays
        else:
            differ.append(name)
    if not any(_checkable(n) for n in write + same + differ):
        raise QuietError(
            f"none of {args.file}'s keys is this cluster's ({cfg.home}): another cluster's "
            "archive? nothing written",
            EXIT_KEY,
        )
    if differ and not args.force:
        raise QuietError(
            "refused: these differ from the keys in place (--force replaces them): "
            + ", ".join(differ),
            EXIT_KEY,
        )
    for name in write + (differ if args.force else []):
        _write_key(where[name], files[name])
    kept = [n for n in same if n not in PUBLIC]
    print(
        f"keys of {cfg.home}: {len(write)} restored, {len(kept)} already in place"
        + (f", {len(differ)} replaced" if args.force and differ else "")
    )
    for name in write + (differ if args.force else []):
        print(f"  wrote {where[name]}")
    for line in skipped:
        print(f"  skipped {line}", file=sys.stderr)
    return 0


def _write_key(path: Path, data: bytes) -> None:
    """Write a key file as ``crypto.save_secret`` does (0600 in a 0700 directory),
    atomically; public files 0644."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    mode = 0o644 if path.name in PUBLIC else 0o600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def add_keys(sub: Any) -> None:
    """``bftfs keys export|import``."""
    sp = sub.add_parser(
        "keys", help="back up the cluster's private keys in one passphrase-sealed archive"
    )
    actions = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, helptext, func in (
        ("export", "write the private keys here into FILE, sealed under a passphrase", cmd_export),
        ("import", "restore the keys of FILE that are missing here", cmd_import),
    ):
        ap = actions.add_parser(name, help=helptext, description=helptext)
        ap.add_argument("file", type=Path, metavar="FILE", help="the archive")
        with_cluster(ap)
        ap.add_argument(
            "--passphrase-file",
            type=Path,
            metavar="PATH",
            help="read the passphrase from the first line of PATH (default: ask)",
        )
        ap.add_argument(
            "--force",
            action="store_true",
            help="export: replace FILE; import: replace keys that differ from the archive's",
        )
        ap.set_defaults(func=func)
