"""Prometheus metrics. One registry per server, so that several servers in one process (tests,
benchmarks) do not share counters."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.events import Assigned, Ended, Event, Ring, Withdrawn
from broker.model import Role

_LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300)
_PUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_MEDIA_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connected = Gauge(
            "vabroker_connected_users", "Open WebSocket sessions", ["role"], registry=r
        )
        self.rings = Counter("vabroker_rings_total", "Rings sent to helpers", registry=r)
        self.withdrawn = Counter(
            "vabroker_rings_withdrawn_total", "Rings withdrawn", ["reason"], registry=r
        )
        self.calls_requested = Counter(
            "vabroker_calls_requested_total", "Calls asked for", registry=r
        )
        self.calls_assigned = Counter("vabroker_calls_assigned_total", "Calls answered", registry=r)
        self.calls_ended = Counter(
            "vabroker_calls_ended_total", "Calls ended, by reason", ["reason"], registry=r
        )
        self.answer_time = Histogram(
            "vabroker_answer_seconds", "Request to accept", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.time_to_media = Histogram(
            "vabroker_time_to_media_seconds",
            "Accept to media connected",
            buckets=_MEDIA_BUCKETS,
            registry=r,
        )
        self.relayed = Counter(
            "vabroker_signals_relayed_total", "Signalling messages relayed", registry=r
        )
        self.messages = Counter(
            "vabroker_messages_total", "Client messages received", ["type"], registry=r
        )
        self._by_type: dict[str, Counter] = {}
        self.errors = Counter(
            "vabroker_errors_total", "Errors sent to clients", ["code"], registry=r
        )
        self.pushes = Counter(
            "vabroker_push_total",
            "Push notifications, by platform and result",
            ["platform", "result"],
            registry=r,
        )
        # Results: sent, retried (one per retry), failed, pruned (device removed), dropped.
        self.push_seconds = Histogram(
            "vabroker_push_seconds",
            "From planning a push to the push service accepting it, retries included",
            ["platform"],
            buckets=_PUSH_BUCKETS,
            registry=r,
        )

        self.nodes = Gauge(
            "vabroker_nodes",
            "Broker nodes alive (beating within node_ttl_s), as this node last counted them",
            registry=r,
        )
        self.nodes.set(1)  # this one; a shared store's count replaces it (``count_nodes``)
        self.store_errors = StoreErrors()
        r.register(self.store_errors)

    def count_message(self, kind: str) -> None:
        """One client message of type ``kind`` (a validated type: a bounded set)."""
        counter = self._by_type.get(kind)
        if counter is None:
            # ``labels()`` looks the child up under a lock each time: four times the cost of
            # the increment, on every frame.
            counter = self._by_type[kind] = self.messages.labels(kind)
        counter.inc()

    def count_events(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Ring):
                self.rings.inc()
            elif isinstance(event, Withdrawn):
                self.withdrawn.labels(event.reason.value).inc()
            elif isinstance(event, Ended) and event.party is Role.RECIPIENT:
                self.calls_ended.labels(event.reason.value).inc()  # once per call
            elif isinstance(event, Assigned) and event.offerer and not event.resumed:
                self.calls_assigned.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StoreErrors(Collector):
    """``vabroker_store_errors_total{operation}``: store operations that failed because the
    store could not be reached, read at each scrape from the store's own tally (a store without
    one, in memory or embedded, has none to report)."""

    def __init__(self) -> None:
        self.tally: Tally[str] | None = None

    def watch(self, tally: Tally[str] | None) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "vabroker_store_errors",
            "Store operations that failed because the store was unreachable, by operation",
            labels=["operation"],
        )
        for operation, count in sorted((self.tally or {}).items()):
            family.add_metric([operation], count)
        yield family
