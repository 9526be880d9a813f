"""Prometheus metrics of this process: counters and histograms the parts update as things
happen, and gauges read from the running service when `/metrics` is scraped."""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from twisted.web.resource import Resource

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

messages_received = Counter(
    "eformws_messages_received", "Client messages received", ["transport"], registry=REGISTRY
)
messages_sent = Counter(
    "eformws_messages_sent", "Messages delivered to clients, one per recipient", registry=REGISTRY
)
delivery_latency = Histogram(
    "eformws_delivery_latency_seconds", "From a message's creation to its delivery by this process",
    buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
ping_rtt = Histogram(
    "eformws_ping_rtt_seconds", "Round trip of the server's WebSocket pings", buckets=RTT_BUCKETS, registry=REGISTRY
)
replays = Counter("eformws_replays", "Replays of recent events on connect", registry=REGISTRY)
resumes = Counter("eformws_resumes", "Resumes, by whether nothing was missed", ["recovered"], registry=REGISTRY)
slow_consumer_closes = Counter(
    "eformws_slow_consumer_closes", "Connections closed 1013 for leaving too much unread", ["transport"],
    registry=REGISTRY,
)
session_expiry_closes = Counter(
    "eformws_session_expiry_closes", "Connections closed 1008 because their session expired or was revoked",
    registry=REGISTRY,
)
auth_failures = Counter(
    "eformws_auth_failures", "Refused credentials, by reason (missing, invalid, forbidden, store_unavailable)",
    ["transport", "reason"], registry=REGISTRY,
)
wamp_refused_publications = Counter(
    "eformws_wamp_refused_publications", "WAMP PUBLISHes refused without an answer (not acknowledged), by ERROR URI",
    ["error"], registry=REGISTRY,
)
events_emitted = Counter("eformws_events_emitted", "Structured events stored and published", ["type"], registry=REGISTRY)
store_latency = Histogram(
    "eformws_store_latency_seconds", "Time a store took to answer", ["store", "operation"],
    buckets=LATENCY_BUCKETS, registry=REGISTRY,
)

WEBSOCKET, WAMP, HTTP = "websocket", "wamp", "http"


_store_latency_children: dict = {}


def timed(d, store: str, operation: str):
    """`d` (a Deferred from a store), observing how long it took to answer."""
    started = time.perf_counter()
    child = _store_latency_children.get((store, operation))
    if child is None:
        child = _store_latency_children[(store, operation)] = store_latency.labels(store, operation)

    def observe(result):
        child.observe(time.perf_counter() - started)
        return result

    return d.addBoth(observe)


class ServiceCollector:
    """Gauges read from the live service at scrape time: connections per namespace and
    transport, rooms in use, and the state of each Redis connection."""

    def __init__(self, hub, redis_connections=()):
        self.hub = hub
        self.redis_connections = list(redis_connections)

    def collect(self):
        connections = GaugeMetricFamily(
            "eformws_connections", "Open connections of this process", labels=["namespace", "transport"]
        )
        rooms = GaugeMetricFamily("eformws_rooms", "Rooms with at least one member", labels=["namespace"])
        counts = self.hub.counts()
        for path, count in counts.namespaces.items():
            connections.add_metric([path, WEBSOCKET], count)
        for path, namespace in self.hub.namespaces.items():
            rooms.add_metric([path], len(namespace.rooms))
        for path, count in counts.endpoints.items():
            connections.add_metric([path, WAMP], count)
        yield connections
        yield rooms
        if self.redis_connections:
            up = GaugeMetricFamily("eformws_redis_up", "1 when this Redis connection is up", labels=["connection"])
            for connection in self.redis_connections:
                up.add_metric([connection.name], 1.0 if connection.connected else 0.0)
            yield up

    def describe(self):
        return []


class MetricsResource(Resource):
    """`GET /metrics`: the text exposition of every metric (only that path, only GET)."""

    isLeaf = True

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"Not Found\n"
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return generate_latest(REGISTRY)
