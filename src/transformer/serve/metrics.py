"""Prometheus metrics of one server: requests, latencies, and what the dynamic batcher did.

Every application gets its own `CollectorRegistry` (not prometheus_client's global one), so
several apps in one process (tests) never collide. `GET /metrics` renders it in the Prometheus
text format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Paths reported under their own label; anything else is "other", so that clients probing random
# URLs cannot grow the number of time series.
KNOWN_PATHS = frozenset(
    {
        "/",
        "/health",
        "/metrics",
        "/v1/translate",
        "/v1/classify",
        "/v1/attention",
        "/docs",
        "/openapi.json",
    }
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class ServerMetrics:
    """The server's counters and histograms, in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "transformer_http_requests",
            "HTTP requests answered, by path, method and status code",
            ["path", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "transformer_http_request_duration_seconds",
            "Time from receiving a request to sending its response, by path",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sentences = Counter(
            "transformer_sentences",
            "Texts translated, parsed or classified (inputs, not hypotheses)",
            registry=r,
        )
        self.classified = Counter(
            "transformer_classified",
            "Texts classified by /v1/classify, by their most probable class",
            ["label"],
            registry=r,
        )
        self.batch_requests = Histogram(
            "transformer_batch_requests",
            "Requests gathered into one decoding (or classification) batch by the dynamic batcher",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.batch_sentences = Histogram(
            "transformer_batch_sentences",
            "Sentences in one decoding batch",
            buckets=COUNT_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "transformer_batch_tokens",
            "Source tokens (subwords + EOS) in one decoding batch",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "transformer_batch_decode_seconds",
            "Time the worker spent decoding one batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "transformer_queue_wait_seconds",
            "Time a request waited before its batch started decoding",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "transformer_pending_requests",
            "Requests waiting for or in decoding",
            registry=r,
        )
        self.ready = Gauge(
            "transformer_model_ready", "1 once the model is loaded and serving", registry=r
        )

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request (unknown paths pooled as "other")."""
        label = path if path in KNOWN_PATHS or path.startswith("/static/") else "other"
        if label.startswith("/static/"):
            label = "/static"
        self.requests.labels(label, method, str(status)).inc()
        self.latency.labels(label).observe(seconds)

    def render(self) -> bytes:
        """All metrics in the Prometheus text exposition format."""
        return generate_latest(self.registry)
