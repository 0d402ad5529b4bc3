"""The cluster configuration's TOML file: reading it strictly, writing it back.

Unknown keys are errors (STYLE.md section 5), each error names the table and key it is
about, and a file written before client ids were explicit still reads (each client then has
the number of its position).  The dataclasses and their rules are in ``config/model.py``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from bftfs.config.model import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_INLINE_LIMIT,
    DEFAULT_MAP_SIZE,
    ClientSpec,
    ClusterConfig,
    ConfigError,
    MetricsConfig,
    NodeSpec,
    RetiredClient,
)
from bftfs.ids import CLIENT_ID_BASE, ClientId, NodeId, client_id
from bftfs.policy import PolicyError, limits_from, retention_from, to_table, verification_from
from bftfs.thresholds import NARROW_OBJECTS

_CLUSTER_KEYS = {
    *("t", "b", "qc", "m", "block_size", "map_size", "durable", "inline_limit"),
    "big_block_size",
    "next_client",
    "volume_key_id",
    "previous_volume_key_ids",
    "admin_key",
    "engine",
    "max_objects",
}
_NODE_KEYS = {"id", "address", "public_key", "data_dir", "domain"}
_CLIENT_KEYS = {"id", "name", "public_key"}
_RETIRED_KEYS = {"id", "name"}
_METRICS_KEYS = {"address", "node_port", "mount_port"}


def _check_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    optional = {
        *("durable", "map_size", "block_size", "inline_limit", "big_block_size"),
        *("verification", "retention", "limits", "retired_clients", "next_client"),
        "volume_key_id",
        "previous_volume_key_ids",
        "admin_key",
        "engine",
        "max_objects",
        "metrics",
        "domain",
        *_METRICS_KEYS,
    }
    missing = allowed - set(table) - optional
    if missing:
        raise ConfigError(f"{where}: missing key(s) {sorted(missing)}")


def _int(where: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"{where} must be an integer, got {v!r}")
    return v


def _hexkey(where: str, v: Any) -> bytes:
    try:
        key = bytes.fromhex(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be 64 hex digits") from None
    if len(key) != 32:
        raise ConfigError(f"{where} must be 64 hex digits, got {len(key) * 2}")
    return key


def parse_address(where: str, v: Any) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 hosts in brackets), naming ``where`` on error."""
    if not isinstance(v, str) or ":" not in v:
        raise ConfigError(f"{where} must be 'host:port', got {v!r}")
    host, _, port = v.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"{where} must be 'host:port' with a port in 1..65535, got {v!r}")
    return host, int(port)


def from_dict(doc: Mapping[str, Any], home: Path) -> ClusterConfig:
    """Build and validate a configuration from parsed TOML (paths relative to ``home``)."""
    _check_keys(
        "top level",
        doc,
        {
            *("cluster", "nodes", "clients", "retired_clients"),
            *("verification", "retention", "limits", "metrics"),
        },
    )
    c = doc["cluster"]
    if not isinstance(c, dict):
        raise ConfigError("[cluster] must be a table")
    _check_keys("[cluster]", c, _CLUSTER_KEYS)
    durable = c.get("durable", True)
    if not isinstance(durable, bool):
        raise ConfigError(f"[cluster] durable must be true or false, got {durable!r}")
    engine = c.get("engine", "qu")
    if not isinstance(engine, str):
        raise ConfigError(f"[cluster] engine must be a string, got {engine!r}")
    nodes = [_node_from(f"[[nodes]] #{i}", nd, home) for i, nd in enumerate(doc["nodes"])]
    clients = _clients_from(doc["clients"])
    retired = _retired_from(doc.get("retired_clients", []))
    try:
        verification = verification_from(doc.get("verification"))
        retention = retention_from(doc.get("retention"))
        limits = limits_from(doc.get("limits"))
    except PolicyError as e:
        raise ConfigError(str(e)) from None
    return ClusterConfig(
        t=_int("[cluster] t", c["t"]),
        b=_int("[cluster] b", c["b"]),
        qc=_int("[cluster] qc", c["qc"]),
        m=_int("[cluster] m", c["m"]),
        block_size=_int("[cluster] block_size", c.get("block_size", DEFAULT_BLOCK_SIZE)),
        map_size=_int("[cluster] map_size", c.get("map_size", DEFAULT_MAP_SIZE)),
        durable=durable,
        engine=engine,
        # absent: a cluster made before nodes accepted more (config/model.py)
        max_objects=_int("[cluster] max_objects", c.get("max_objects", NARROW_OBJECTS)),
        nodes=tuple(nodes),
        clients=tuple(clients),
        home=home,
        inline_limit=_int("[cluster] inline_limit", c.get("inline_limit", DEFAULT_INLINE_LIMIT)),
        big_block_size=(
            None
            if c.get("big_block_size") is None
            else _int("[cluster] big_block_size", c["big_block_size"])
        ),
        verification=verification,
        retention=retention,
        limits=limits,
        retired_clients=retired,
        next_client=(
            None
            if c.get("next_client") is None
            else _int("[cluster] next_client", c["next_client"])
        ),
        volume_key_id=_key_id(c.get("volume_key_id")),
        previous_volume_key_ids=_key_ids(c.get("previous_volume_key_ids", [])),
        metrics=_metrics_from(doc.get("metrics")),
        admin_key=(
            None if c.get("admin_key") is None else _hexkey("[cluster] admin_key", c["admin_key"])
        ),
    ).validate()


def _node_from(where: str, nd: Any, home: Path) -> NodeSpec:
    """One ``[[nodes]]`` entry (its data directory relative to ``home``)."""
    if not isinstance(nd, dict):
        raise ConfigError(f"{where} must be a table")
    _check_keys(where, nd, _NODE_KEYS)
    host, port = parse_address(f"{where} address", nd["address"])
    data_dir = Path(str(nd["data_dir"]))
    domain = nd.get("domain", "")
    if not isinstance(domain, str):
        raise ConfigError(f"{where} domain must be a string, got {domain!r}")
    return NodeSpec(
        NodeId(_int(f"{where} id", nd["id"])),
        host,
        port,
        _hexkey(f"{where} public_key", nd["public_key"]),
        data_dir if data_dir.is_absolute() else home / data_dir,
        domain,
    )


def _metrics_from(table: Any) -> MetricsConfig:
    """``[metrics]`` (absent: metrics off); the ports are checked by ``validate``."""
    if table is None:
        return MetricsConfig()
    if not isinstance(table, dict):
        raise ConfigError("[metrics] must be a table")
    _check_keys("[metrics]", table, _METRICS_KEYS)
    address = table.get("address", MetricsConfig.address)
    if not isinstance(address, str):
        raise ConfigError(f"[metrics] address must be a string, got {address!r}")
    ports = {
        key: None if table.get(key) is None else _int(f"[metrics] {key}", table[key])
        for key in ("node_port", "mount_port")
    }
    return MetricsConfig(address=address, **ports)


def _key_ids(v: Any) -> tuple[bytes, ...]:
    """``[cluster] previous_volume_key_ids``: a list of hex ids."""
    if not isinstance(v, list):
        raise ConfigError(f"[cluster] previous_volume_key_ids must be a list, got {v!r}")
    return tuple(k for k in (_key_id(x) for x in v) if k is not None)


def _key_id(v: Any) -> bytes | None:
    """``[cluster] volume_key_id``: hex, or absent (an unencrypted cluster)."""
    if v is None:
        return None
    try:
        return bytes.fromhex(v)
    except (TypeError, ValueError):
        raise ConfigError(f"[cluster] volume_key_id must be hex digits, got {v!r}") from None


def _client_number(where: str, v: Any) -> ClientId:
    n = _int(where, v)
    if not 0 <= n < 2**32:
        raise ConfigError(f"{where} must be in 0..{2**32 - 1}, got {n}")
    return client_id(n)


def _clients_from(entries: Any) -> list[ClientSpec]:
    """``[[clients]]``: each with its ``id``, or - a file written before ids were explicit -
    none with one, each then the number of its position (what it always meant there)."""
    if not isinstance(entries, list) or not all(isinstance(cd, dict) for cd in entries):
        raise ConfigError("[[clients]] must be a list of tables")
    with_ids = sum("id" in cd for cd in entries)
    if 0 < with_ids < len(entries):
        raise ConfigError(
            "[[clients]]: some entries have an id and some do not; give every client its id "
            "(an old file's clients have the ids of their positions: 0, 1, 2, ...)"
        )
    clients = []
    for i, cd in enumerate(entries):
        where = f"[[clients]] #{i}"
        _check_keys(where, cd, _CLIENT_KEYS if with_ids else _CLIENT_KEYS - {"id"})
        cid = _client_number(f"{where} id", cd["id"]) if with_ids else client_id(i)
        clients.append(
            ClientSpec(cid, str(cd["name"]), _hexkey(f"{where} public_key", cd["public_key"]))
        )
    return clients


def _retired_from(entries: Any) -> tuple[RetiredClient, ...]:
    if not isinstance(entries, list) or not all(isinstance(rd, dict) for rd in entries):
        raise ConfigError("[[retired_clients]] must be a list of tables")
    out = []
    for i, rd in enumerate(entries):
        where = f"[[retired_clients]] #{i}"
        _check_keys(where, rd, _RETIRED_KEYS)
        out.append(RetiredClient(_client_number(f"{where} id", rd["id"]), str(rd["name"])))
    return tuple(out)


def load(path: Path) -> ClusterConfig:
    """Read and validate a cluster configuration file.

    Raises:
        ConfigError: unreadable, not TOML, or breaking a rule (the message says which).
    """
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read configuration {path}: {e.strerror}") from e
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    try:
        return from_dict(doc, path.resolve().parent)
    except KeyError as e:
        raise ConfigError(f"{path}: missing {e.args[0]!r}") from e
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def to_dict(cfg: ClusterConfig) -> dict[str, Any]:
    """The TOML document for ``cfg`` (data dirs relative to ``cfg.home`` when inside it)."""

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(cfg.home))
        except ValueError:
            return str(p)

    return {
        "cluster": {
            "t": cfg.t,
            "b": cfg.b,
            "qc": cfg.qc,
            "m": cfg.m,
            "block_size": cfg.block_size,
            "map_size": cfg.map_size,
            "durable": cfg.durable,
            **({} if cfg.engine == "qu" else {"engine": cfg.engine}),
            **({} if cfg.max_objects == NARROW_OBJECTS else {"max_objects": cfg.max_objects}),
            "inline_limit": cfg.inline_limit,
            **({} if cfg.big_block_size is None else {"big_block_size": cfg.big_block_size}),
            "next_client": cfg.next_client_number,
            **({} if cfg.volume_key_id is None else {"volume_key_id": cfg.volume_key_id.hex()}),
            **(
                {"previous_volume_key_ids": [k.hex() for k in cfg.previous_volume_key_ids]}
                if cfg.previous_volume_key_ids
                else {}
            ),
            **({} if cfg.admin_key is None else {"admin_key": cfg.admin_key.hex()}),
        },
        "nodes": [
            {
                "id": s.id,
                "address": s.address,
                "public_key": s.public_key.hex(),
                "data_dir": rel(s.data_dir),
                **({"domain": s.domain} if s.domain else {}),
            }
            for s in cfg.nodes
        ],
        "clients": [
            {"id": c.id - CLIENT_ID_BASE, "name": c.name, "public_key": c.public_key.hex()}
            for c in cfg.clients
        ],
        **(
            {
                "retired_clients": [
                    {"id": r.id - CLIENT_ID_BASE, "name": r.name} for r in cfg.retired_clients
                ]
            }
            if cfg.retired_clients
            else {}
        ),
        "verification": to_table(cfg.verification),
        "retention": to_table(cfg.retention),
        "limits": to_table(cfg.limits),
        **({"metrics": _metrics_table(cfg.metrics)} if cfg.metrics != MetricsConfig() else {}),
    }


def _metrics_table(m: MetricsConfig) -> dict[str, Any]:
    """``[metrics]`` as written: the address and the ports that are set."""
    out: dict[str, Any] = {"address": m.address}
    out.update(
        {
            k: v
            for k, v in (("node_port", m.node_port), ("mount_port", m.mount_port))
            if v is not None
        }
    )
    return out


def dumps(cfg: ClusterConfig) -> str:
    """``cfg`` as TOML (paths relative to ``cfg.home`` where they lie under it)."""
    return tomli_w.dumps(to_dict(cfg))


def save(cfg: ClusterConfig, path: Path) -> None:
    """Write ``cfg`` as TOML to ``path`` (atomically: a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        "# bftfs cluster configuration (written by `bftfs init`; see README.md)\n" + dumps(cfg)
    )
    tmp.replace(path)
