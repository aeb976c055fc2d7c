"""Prometheus metrics of one server process, through prometheus-client.

Each app has its own registry (several apps in one process, as in tests, do not collide).
The journal core reports fsync latency, lease waits and subscriber fallbacks through
``journal._observe``; the routes report appends and streams directly. With several worker
processes behind one port, each worker exposes its own figures.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from journal import _observe

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.append_seconds = Histogram(
            "journal_http_append_seconds", "Latency of HTTP appends, by outcome",
            ["outcome"], buckets=_FAST, registry=r)
        self.appended_events = Counter(
            "journal_http_appended_events", "Events appended over HTTP", registry=r)
        self.conflicts = Counter(
            "journal_sequence_conflicts", "Appends refused with a sequence conflict", registry=r)
        self.fsync_seconds = Histogram(
            "journal_fsync_seconds", "fdatasync latency of appends in this process",
            buckets=_FAST, registry=r)
        self.lease_waits = Counter(
            "journal_lease_waits", "Times an append found the session's lease busy and waited",
            registry=r)
        self.lease_wait_seconds = Counter(
            "journal_lease_wait_seconds", "Time spent waiting for busy leases", registry=r)
        self.active_streams = Gauge(
            "journal_http_active_streams", "Open SSE streams", ["feed"], registry=r)
        self.streams_opened = Counter(
            "journal_http_streams_opened", "SSE streams opened", ["feed"], registry=r)
        self.stream_send_timeouts = Counter(
            "journal_http_stream_cutoffs", "SSE streams cut off because the client stopped "
            "reading (send timeout)", registry=r)
        self.fallbacks = Counter(
            "journal_subscriber_fallbacks", "Subscribers that dropped their live buffer and "
            "read the file instead (slow consumers)", ["reason"], registry=r)
        for feed in ("session", "firehose"):
            self.active_streams.labels(feed)
            self.streams_opened.labels(feed)

    def observe(self, name: str, fields: dict[str, Any]) -> None:
        """The ``journal._observe`` listener."""
        if name == "fsync":
            self.fsync_seconds.observe(fields["seconds"])
        elif name == "lease_wait":
            self.lease_waits.inc()
            self.lease_wait_seconds.inc(fields["seconds"])
        elif name == "subscriber_fallback":
            self.fallbacks.labels(fields.get("reason", "overflow")).inc()

    def start(self) -> None:
        _observe.add_listener(self.observe)

    def stop(self) -> None:
        _observe.remove_listener(self.observe)

    def render(self) -> bytes:
        return generate_latest(self.registry)
