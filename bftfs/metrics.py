"""Prometheus metrics over HTTP, opt-in, for nodes (``bftfs node --metrics-port``) and
mounts (``-o metrics_port=``): the standard ``prometheus_client`` library serves them from
its own thread; each scrape asks the trio loop for a snapshot (``trio.from_thread``), so the
figures are read where they are kept, with no lock and no copy kept up to date in between.

The program gives a function returning the snapshot as :class:`Family` values (plain data,
built in the trio thread); this module turns them into the library's metric families, and
adds what every bftfs program exports alike: ``bftfs_build_info`` (the version and wire
version, to tell which machines still run an old one) and the library's own process and
platform collectors (``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_start_time_seconds``, ``python_info``), which read ``/proc`` at each scrape.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from bftfs import WIRE_VERSION, __version__

log = logging.getLogger(__name__)


@dataclass
class Family:
    """One metric family: ``kind`` is ``counter``, ``gauge`` or ``summary``; each sample
    is ``(labels, value)``, a summary's value a ``(count, sum)`` pair."""

    name: str
    doc: str
    kind: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], Any]] = field(default_factory=list)

    def add(self, value: Any, *labels: object) -> Family:
        self.samples.append((tuple(str(x) for x in labels), value))
        return self


class _Collector:
    def __init__(self, snapshot: Callable[[], Iterable[Family]], token: trio.lowlevel.TrioToken):
        self.snapshot = snapshot
        self.token = token

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            SummaryMetricFamily,
        )

        try:
            families = list(trio.from_thread.run_sync(self.snapshot, trio_token=self.token))
        except trio.RunFinishedError:
            return
        families.insert(0, build_info())
        for f in families:
            labels = list(f.labels)
            m: Any
            if f.kind == "counter":
                m = CounterMetricFamily(f.name, f.doc, labels=labels)
                for lv, v in f.samples:
                    m.add_metric(list(lv), float(v))
            elif f.kind == "gauge":
                m = GaugeMetricFamily(f.name, f.doc, labels=labels)
                for lv, v in f.samples:
                    m.add_metric(list(lv), float(v))
            else:
                m = SummaryMetricFamily(f.name, f.doc, labels=labels)
                for lv, (count, total) in f.samples:
                    m.add_metric(list(lv), count_value=int(count), sum_value=float(total))
            yield m

    def describe(self) -> list[Any]:
        return []  # no describe at registration: collect() needs the trio loop running


def build_info() -> Family:
    """``bftfs_build_info{version,wire,python} 1``: which bftfs a process runs."""
    python = ".".join(str(x) for x in sys.version_info[:3])
    return Family(
        "bftfs_build_info",
        "The bftfs version, wire version and Python version this process runs (always 1)",
        "gauge",
        ("version", "wire", "python"),
    ).add(1, __version__, WIRE_VERSION, python)


class MetricsServer:
    """An HTTP server answering ``GET /metrics`` (and any path) in a daemon thread."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.address: str = httpd.server_address[0]
        self.port: int = httpd.server_address[1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve(addr: str, port: int, snapshot: Callable[[], Iterable[Family]]) -> MetricsServer:
    """Serve the families ``snapshot()`` returns (called in this trio loop at each scrape)
    on ``addr:port`` (0: a free port; :attr:`MetricsServer.port` says which).  Call from
    the trio thread.

    Raises:
        OSError: the port cannot be bound.
    """
    from prometheus_client import (
        CollectorRegistry,
        PlatformCollector,
        ProcessCollector,
        start_http_server,
    )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot, trio.lowlevel.current_trio_token()))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    httpd, thread = start_http_server(port, addr=addr, registry=registry)
    server = MetricsServer(httpd, thread)
    log.info("Prometheus metrics on http://%s:%d/metrics", server.address, server.port)
    return server
