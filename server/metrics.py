"""Prometheus metrics (names from DESIGN.md), one `CollectorRegistry` per app so apps never collide."""
from __future__ import annotations

import threading

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

OTHER_TASK = "_other"
UNKNOWN_TASK = "_unknown"  # a predict for a task the registry does not hold: client-chosen names never become labels
UNAUTHENTICATED = "_unauthenticated"  # a predict without a valid key: never a name an unauthenticated client chose
CACHE_TIERS = ("device", "host", "disk")  # where a lookup can hit
RESIDENT_TIERS = ("device", "host")  # what holds (and evicts) adapters; the disk holds them all
UPLOAD_RESULTS = ("created", "unchanged", "invalid", "unservable", "too_large", "failed")
KEYS_RELOAD_RESULTS = ("ok", "failed")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """The server's metrics; `task` label values are capped at `max_tasks` distinct names."""

    def __init__(self, max_tasks: int = 100) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("adamix_requests_total", "Predict requests by task and HTTP status.",
                                ["task", "status"], registry=r)
        self.request_duration = Histogram("adamix_request_duration_seconds", "Predict request latency.", ["task"],
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_duration = Histogram("adamix_queue_duration_seconds", "Time a request waits for its batch.",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("adamix_batch_size", "Rows per backbone forward.", buckets=_SIZE_BUCKETS,
                                    registry=r)
        self.batch_tasks = Histogram("adamix_batch_tasks", "Distinct task versions per backbone forward.",
                                     buckets=_SIZE_BUCKETS, registry=r)
        self.cache_lookups = Counter("adamix_adapter_cache_lookups_total", "Adapter cache lookups per tier.",
                                     ["tier"], registry=r)
        self.cache_hits = Counter("adamix_adapter_cache_hits_total", "Adapter cache hits per tier.", ["tier"],
                                  registry=r)
        self.evictions = Counter("adamix_adapter_evictions_total", "Adapters evicted per tier.", ["tier"], registry=r)
        self.load_duration = Histogram("adamix_adapter_load_duration_seconds",
                                       "Reading + validating one adapter from disk.", buckets=_LATENCY_BUCKETS,
                                       registry=r)
        self.resident = Gauge("adamix_adapters_resident", "Adapters resident per tier.", ["tier"], registry=r)
        self.cache_bytes = Gauge("adamix_adapter_cache_bytes", "Bytes held per tier.", ["tier"], registry=r)
        self.uploads = Counter("adamix_adapter_uploads_total", f"Adapter uploads by result ({', '.join(UPLOAD_RESULTS)}"
                               ").", ["result"], registry=r)
        self.rejections = Counter("adamix_rejections_total", "Requests refused before any work, by reason "
                                  "(overloaded, tenant_overloaded, rate_limited, shutting_down, too_large, "
                                  "body_timeout, unauthorized, forbidden).", ["reason"], registry=r)
        self.non_finite_outputs = Counter("adamix_non_finite_outputs_total", "Predict rows refused because the "
                                          "adapter computed a NaN or inf output for them.", registry=r)
        self.registry_generation = Gauge("adamix_registry_generation", "The registry generation this replica has "
                                         "applied (every write through any replica bumps it).", registry=r)
        self.propagation_delay = Histogram("adamix_registry_propagation_seconds", "From a registry write (through "
                                           "any replica) to this replica applying it.", buckets=_LATENCY_BUCKETS,
                                           registry=r)
        self.keys_reloads = Counter("adamix_api_keys_reloads_total", "Reloads of the API keys file by result (ok, "
                                    "failed: the keys read before stay in force).", ["result"], registry=r)
        self.queue_depth = Gauge("adamix_queue_depth", "Requests waiting for a batch.", registry=r)
        self.in_flight = Gauge("adamix_requests_in_flight", "Accepted requests (non-public routes) not yet "
                               "answered.", registry=r)
        self.registry_problems = Gauge("adamix_registry_problems", "Problems start-up verification of the registry "
                                       "found (corrupt blobs, interrupted writes, unreadable manifests).",
                                       registry=r)
        self.build_info = Gauge("adamix_build_info", "Constant 1, labelled with the build.", ["version", "backbone"],
                                registry=r)
        self._tasks: set[str] = set()
        self._max_tasks = max_tasks
        self._lock = threading.Lock()
        self._init_known_labels()

    def _init_known_labels(self) -> None:
        """Every labelled series whose label values are known up front, at 0: a fresh server's dashboard has data."""
        for tier in CACHE_TIERS:
            self.cache_lookups.labels(tier)
            self.cache_hits.labels(tier)
        for tier in RESIDENT_TIERS:
            self.evictions.labels(tier)
            self.resident.labels(tier)
            self.cache_bytes.labels(tier)
        for result in UPLOAD_RESULTS:
            self.uploads.labels(result)
        for result in KEYS_RELOAD_RESULTS:
            self.keys_reloads.labels(result)

    def init_rejections(self, reasons: list[str]) -> None:
        for reason in reasons:
            self.rejections.labels(reason)

    def init_requests(self, tasks: list[str], authenticated: bool) -> None:
        """The request series of registered `tasks` (answered, failed, latency) and of the refusals every server
        counts (an unknown task; without a valid key)."""
        for task in tasks:
            label = self.task_label(task)
            for status in ("200", "500"):
                self.requests.labels(label, status)
            self.request_duration.labels(label)
        self.requests.labels(UNKNOWN_TASK, "404")
        if authenticated:
            self.requests.labels(UNAUTHENTICATED, "401")

    def task_label(self, task: str) -> str:
        """`task` itself for the first `max_tasks` distinct names seen, `_other` after that."""
        if task in self._tasks:
            return task
        with self._lock:
            if len(self._tasks) < self._max_tasks:
                self._tasks.add(task)
                return task
        return OTHER_TASK

    def watch_residency(self, resident: Callable[[], dict[str, list[str]]]) -> None:
        """Export `adamix_task_resident{tier,task}` at scrape time from `resident()` (tier -> resident tasks):
        1 per task (the number of its resident versions), names past `max_tasks` summed under `_other`."""
        metrics = self

        class Residency(Collector):
            def collect(self):
                family = GaugeMetricFamily("adamix_task_resident", "Resident versions per task and tier (for "
                                           "affinity routers); task names beyond metrics_max_tasks under _other.",
                                           labels=["tier", "task"])
                for tier, tasks in resident().items():
                    counts: dict[str, int] = {}
                    for task in tasks:
                        label = metrics.task_label(task)
                        counts[label] = counts.get(label, 0) + 1
                    for label, n in sorted(counts.items()):
                        family.add_metric([tier, label], n)
                yield family

        self.registry.register(Residency())

    def lookup(self, tier: str, hit: bool) -> None:
        self.cache_lookups.labels(tier).inc()
        if hit:
            self.cache_hits.labels(tier).inc()
