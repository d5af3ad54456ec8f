"""Prometheus metrics, on their own registry so several servers can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

_MS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # protocol: embedder.v1, openai or kserve-v2; method: the RPC or route
        self.requests = Counter(
            "embedder_requests", "requests handled", ["protocol", "method"],
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "embedder_errors", "requests that ended in an error", ["protocol", "method", "code"],
            registry=self.registry,
        )  # fmt: skip
        self.items = Counter("embedder_items", "items embedded", ["model"], registry=self.registry)
        self.batch_size = Histogram(
            "embedder_batch_items", "items per inference batch", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )  # fmt: skip
        self.inference_cpu = Counter(
            "embedder_inference_cpu_seconds", "CPU time of inference runs (the run's thread)",
            ["model"], registry=self.registry,
        )  # fmt: skip
        self.stage_ms = Histogram(
            "embedder_stage_milliseconds", "time per stage", ["model", "stage"],
            buckets=_MS_BUCKETS, registry=self.registry,
        )  # fmt: skip

        self._request_counters: dict[tuple[str, str], object] = {}

    def count_request(self, protocol: str, method: str) -> None:
        """One request more; the labelled child is looked up once (labels() takes a lock and
        builds a key on every call, a cost on every request of the hot path)."""
        child = self._request_counters.get((protocol, method))
        if child is None:
            child = self._request_counters[protocol, method] = self.requests.labels(
                protocol, method
            )
        child.inc()

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
