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
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import trio

from bftfs import WIRE_VERSION, __version__

log = logging.getLogger(__name__)


#: Upper bounds (seconds) of a request-duration histogram's buckets: from a cached answer
#: (under a millisecond) through a Q/U round on a busy machine (tens of milliseconds) to a
#: request waiting out a slow quorum (seconds).
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram:
    """Observations counted into fixed buckets, as Prometheus histograms are: plain data
    kept where the observations happen (the trio thread), read at each scrape."""

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # per bucket, not cumulative; beyond the last: +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                return

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs, ``+Inf`` last, as the exposition format wants them."""
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            out.append((repr(bound), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


@dataclass
class Family:
    """One metric family: ``kind`` is ``counter``, ``gauge``, ``summary`` or
    ``histogram``; each sample is ``(labels, value)``, a summary's value a ``(count, sum)``
    pair, a histogram's a :class:`Histogram`."""

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
            HistogramMetricFamily,
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
            elif f.kind == "histogram":
                m = HistogramMetricFamily(f.name, f.doc, labels=labels)
                for lv, h in f.samples:
                    m.add_metric(list(lv), buckets=h.cumulative(), sum_value=h.sum)
            else:
                m = SummaryMetricFamily(f.name, f.doc, labels=labels)
                for lv, (count, total) in f.samples:
                    m.add_metric(list(lv), count_value=int(count), sum_value=float(total))
            yield m

    def describe(self) -> list[Any]:
        return []  # no describe at registration: collect() needs the trio loop running


def metric_word(key: str) -> str:
    """``key`` as a metric name's word: lower case, letters, digits and underscores."""
    return re.sub(r"[^a-z0-9_]+", "_", key.lower()).strip("_") or "unnamed"


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
    """An HTTP server answering ``GET /metrics`` in a daemon thread (any other path: 404,
    so a typo in a scrape configuration shows instead of scraping nothing quietly)."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.address: str = httpd.server_address[0]
        self.port: int = httpd.server_address[1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape (a slow scraper does not hold up another)."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        """Scrapes are not logged: one every few seconds would fill the log."""


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
        make_wsgi_app,
    )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot, trio.lowlevel.current_trio_token()))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    metrics_app = make_wsgi_app(registry)

    def only_metrics(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: the metrics are at /metrics\n"]
        return metrics_app(environ, start_response)

    httpd = make_server(addr, port, only_metrics, _ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    thread.start()
    server = MetricsServer(httpd, thread)
    log.info("Prometheus metrics on http://%s:%d/metrics", server.address, server.port)
    return server
