"""Bundles: what one machine of a cluster needs, as a file to copy there.

A cluster made by ``bftfs init`` keeps every private key in one directory.  Nodes on
several machines must not: each host gets the configuration (every public key, every
address) and its own node's private key only, and a client machine the configuration and
one client's key.  ``bftfs bundle`` writes that as a gzipped tar file (mode 0600: it holds a
private key) laid out as a cluster directory, so on the host

    mkdir -p /var/lib/bftfs && tar -xzf node3.tar.gz -C /var/lib/bftfs
    bftfs node --config /var/lib/bftfs/cluster.toml --id 3

runs node 3 with its data in ``/var/lib/bftfs/node3`` (paths in ``cluster.toml`` are
relative to the file).  The systemd units in ``bftfs/systemd`` (``bftfs unit``) expect that layout.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from dataclasses import replace
from pathlib import Path

from bftfs import config as cfgmod
from bftfs.config import ClusterConfig, ConfigError


def _relative(cfg: ClusterConfig, home: Path) -> ClusterConfig:
    """``cfg`` as seen from a cluster directory ``home`` laid out as ``bftfs init`` does
    (``node<i>`` beside ``cluster.toml``), whatever data directories the original uses."""
    nodes = tuple(replace(s, data_dir=home / f"node{int(s.id)}") for s in cfg.nodes)
    return replace(cfg, home=home, nodes=nodes)


def members(
    cfg: ClusterConfig, *, node: int | None = None, client: str | None = None
) -> dict[str, bytes]:
    """The files of a bundle by their path inside it: ``cluster.toml``, the signed view
    (``view.signed``, when the cluster has views) and one private key;
    a client's of a sealed cluster also the volume key and those it had before rotations
    (docs/confidentiality.md), which a node's never holds.

    Raises:
        ConfigError: neither or both of ``node`` and ``client``, or no such node or client.
        OSError: the private key cannot be read.
    """
    if (node is None) == (client is None):
        raise ConfigError("a bundle is for one node (--node I) or one client (--client NAME)")
    home = Path("/bundle")
    rel = _relative(cfg, home)
    if node is not None:
        if not 0 <= node < cfg.n:
            raise ConfigError(f"no node {node}: the cluster has nodes 0..{cfg.n - 1}")
        key_src = cfg.node(node).key_path
        key_dst = rel.node(node).key_path
    else:
        assert client is not None
        cfg.client(client)  # ConfigError names the known clients
        key_src = cfg.client_key_path(client)
        key_dst = rel.client_key_path(client)
    text = "# bftfs cluster configuration (from `bftfs bundle`; see README.md)\n" + cfgmod.dumps(
        rel
    )
    files = {
        "cluster.toml": text.encode(),
        str(key_dst.relative_to(home)): key_src.read_bytes(),
    }
    if node is not None:  # its view chain (docs/membership.md, "Per-view keys"), if any
        chain = cfg.node(node).data_dir / "private" / "view-chain"
        if chain.exists():
            files[str((rel.node(node).data_dir / "private" / "view-chain").relative_to(home))] = (
                chain.read_bytes()
            )
    if cfg.view_path.exists():  # public, believed for its signature; never the admin key
        files[cfg.view_path.name] = cfg.view_path.read_bytes()
    layout = cfg.home / "layout.signed"  # likewise: a cluster of groups' (docs/layout.md)
    if layout.exists():
        files[layout.name] = layout.read_bytes()
    if client is not None and cfg.sealed:
        volume_dst = rel.volume_key_path.relative_to(home)
        files[str(volume_dst)] = cfg.volume_key_path.read_bytes()
        for key_id in cfg.previous_volume_key_ids:  # what was written before rotations
            dst = rel.previous_volume_key_path(key_id).relative_to(home)
            files[str(dst)] = cfg.previous_volume_key_path(key_id).read_bytes()
    return files


def write(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` as a gzipped tar at ``out`` (created 0600; directories 0700, keys
    0600, the configuration 0644), atomically."""
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    now = int(time.time())
    dirs: set[str] = set()
    with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
        for name, data in files.items():
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, now
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), now
            public = name in ("cluster.toml", "view.signed")
            info.mode = 0o644 if public else 0o600  # keys, the volume key
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)
