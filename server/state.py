"""`ServerState`: the one registry, host cache and engine of a running app, its lifecycle and use cases."""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import NamedTuple

import torch
from prometheus_client import start_http_server

from adamix import AdapterFileError, BackboneInfo, load_backbone
from adamix.manifest import InvalidTaskNameError, RegistryError, TaskManifest, VersionNotFoundError, VersionRecord
from adamix.registry import AdapterRegistry
from server.auth import Authenticator, KeyFileError, Principal, RateLimiter
from server.cache import HostCache
from server.engine import Engine
from server.errors import (InvalidInputError, NonFiniteOutputError, NotReadyError, ServeError, ShuttingDownError,
                           rejection_reasons)
from server.metrics import ServerMetrics
from server.request_context import annotate
from server.schemas import TextInput
from server.served import AdapterKey, ServedAdapter, bare_backbone, prepare
from server.settings import Settings
from server.tracing import Tracing

log = logging.getLogger("adamix.server")

try:
    __version__ = package_version("adamix-serve")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device("cuda" if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()) else "cpu")


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, setting)


class Outcome(NamedTuple):
    """What one predict computed: the adapter version that served it, each input's output, the tokens it cost."""

    adapter: ServedAdapter
    outputs: list[torch.Tensor]  # per input: (C,) logits, or (p,) unit-length embedding
    tokens: int  # after truncation, special tokens included


class ServerState:
    """Built empty by the app; `start()` loads the backbone and registry in the background."""

    def __init__(self, settings: Settings, tracer_provider=None) -> None:
        self.settings = settings
        self.metrics = ServerMetrics(settings.metrics_max_tasks)
        self.tracing = Tracing.from_settings(settings, tracer_provider, __version__)
        self.registry: AdapterRegistry | None = None
        self.cache: HostCache | None = None
        self.engine: Engine | None = None
        self.backbone: BackboneInfo | None = None
        self.backbone_model: ServedAdapter | None = None  # the bare backbone, served as an embedding model
        self.ready = False
        self.status = "loading the backbone"
        self.auth = Authenticator.from_file(settings.api_keys_file)
        self.rate_limiter = (None if settings.rate_limit_per_s is None
                             else RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst))
        self.auth_failures = (None if not self.auth.enabled
                              else RateLimiter(settings.auth_failures_per_s, settings.auth_failures_burst))
        self.metrics.init_rejections(rejection_reasons())
        self._keys_watch: asyncio.Task | None = None
        self._registry_watch: asyncio.Task | None = None
        self._metrics_server = None
        self.draining = False  # SIGTERM seen: refuse new requests, let accepted ones finish
        self.in_flight = 0  # accepted requests on non-public routes (the middleware counts them): the one count

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self._start()
        except Exception as exc:
            log.exception("start-up failed")
            self.status = f"start-up failed: {exc}"

    async def _start(self) -> None:
        s = self.settings
        model, tokenizer, info = await asyncio.to_thread(load_backbone, s.backbone)
        device = resolve_device(s.device)
        model.to(device=device, dtype=resolve_dtype(s.dtype, device))
        log.info("backbone %s (%s, %d layers, d=%d) on %s", info.name, info.model_type, info.num_layers,
                 info.hidden_size, device)
        self.metrics.build_info.labels(__version__, info.name).set(1)
        self.status = "reading the registry"
        self.registry = await asyncio.to_thread(AdapterRegistry, s.registry, info, s.verify_registry)
        self.metrics.registry_problems.set(len(self.registry.problems))
        self.engine = Engine(model, tokenizer, info, s, self.metrics, self.tracing)
        self.backbone = info
        self.backbone_model = bare_backbone(info.name, info.fingerprint[:16], self.engine.admission.max_len)
        self.metrics.queue_depth.set_function(self.engine.queue_depth)
        self.metrics.watch_residency(self._resident_tasks)
        pinned = set(s.pinned_tasks)
        self.cache = HostCache(self.registry, self.engine.limits, int(s.host_cache_mb * 2**20), self.metrics,
                               lambda key: key.task in pinned)
        self.status = "warming up"
        await self.engine.start()
        if self.registry.created:  # only a brand-new registry: deleting every task later must stay deleted
            await asyncio.to_thread(self._install_demo_adapters)
        await self._warm_tasks(pinned)
        self.metrics.init_requests(self.registry.tasks(), self.auth.enabled)  # every panel has data at once
        self._watch_keys()
        self._registry_watch = asyncio.create_task(self._poll_registry(), name="adamix-registry")
        if s.metrics_port is not None:
            self._metrics_server, _ = start_http_server(s.metrics_port, s.metrics_host, self.metrics.registry)
            log.info("metrics (unauthenticated) on %s:%d", s.metrics_host, s.metrics_port)
        self.ready = True
        self.status = "ready"
        if not self.auth.enabled:
            log.warning("no API keys configured (--api-keys / ADAMIX_API_KEYS_FILE): every route, adapter uploads "
                        "included, is open to whoever can reach %s:%d%s", s.host, s.port,
                        "" if s.insecure_no_auth else " (loopback only)")
        log.info("ready: %d task(s) registered in %s", len(self.registry), s.registry)

    async def _warm_tasks(self, pinned: set[str]) -> None:
        """Make the pinned tasks (kept resident) and a few others resident, and run each once."""
        for task in dict.fromkeys([*self.settings.pinned_tasks, *self.registry.tasks()[:4]]):
            try:
                adapter = await self.resolve(task)
                probe = TextInput(text="warm up", text_pair="warm up" if adapter.task.pair else None)
                await self.engine.predict(adapter, [probe], "_warm_up")
            except (ServeError, RegistryError) as exc:
                log.warning("warm-up skipped task %r: %s", task, exc)
                continue
            if task in pinned:
                await self.engine.pin(adapter)

    def _watch_keys(self) -> None:
        """Re-read the keys file when it changes (polled every keys_reload_s) and on SIGHUP."""
        if self.auth.path is None:
            return

        async def poll() -> None:
            while True:
                await asyncio.sleep(self.settings.keys_reload_s)
                self.reload_keys()
        self._keys_watch = asyncio.create_task(poll(), name="adamix-keys")
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_keys, True)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread (tests), or no SIGHUP
            pass

    async def _poll_registry(self) -> None:
        """Apply the changes other replicas make to the shared registry, within registry_poll_s."""
        self.metrics.registry_generation.set(self.registry.generation)
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                changed = await asyncio.to_thread(self.registry.refresh)
            except OSError as exc:  # a shared volume that hiccups: keep serving what is known, retry
                log.warning("registry refresh failed: %s", exc)
                continue
            for task, delay in changed.items():
                self.metrics.propagation_delay.observe(delay)
                self.metrics.init_requests([task] if task in self.registry else [], self.auth.enabled)
                log.info("registry generation %d: task %r changed elsewhere", self.registry.generation, task)
            self.metrics.registry_generation.set(self.registry.generation)

    def reload_keys(self, force: bool = False) -> None:
        try:
            if self.auth.reload(force):
                log.info("API keys reloaded from %s: %d key(s)", self.auth.path, len(self.auth.keys))
                self.metrics.keys_reloads.labels("ok").inc()
        except KeyFileError as exc:
            log.error("API keys file not reloaded, the keys read before stay in force: %s", exc)
            self.metrics.keys_reloads.labels("failed").inc()

    async def stop(self) -> None:
        """Lifespan shutdown: drain (bounded by drain_timeout_s), then stop the engine."""
        for watch in (self._keys_watch, self._registry_watch):
            if watch is not None:
                watch.cancel()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.begin_drain()
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while not self.drained and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if not self.drained:
            log.warning("drain timeout (%.1f s): %d request(s) still in flight", self.settings.drain_timeout_s,
                        self.in_flight)
        self.ready = False
        if self.engine is not None:
            await self.engine.stop()
        self.tracing.shutdown()

    def begin_drain(self) -> None:
        """SIGTERM: /readyz turns 503 and new requests are refused; accepted ones go on."""
        if not self.draining:
            log.info("draining: refusing new requests, %d in flight", self.in_flight)
        self.draining = True
        self.status = "shutting down"

    @property
    def drained(self) -> bool:
        return self.draining and self.in_flight == 0

    def _install_demo_adapters(self) -> None:
        """Publish every demo adapter that fits the loaded backbone into the fresh registry."""
        directory = self.settings.demo_adapters
        if directory is None or not directory.is_dir():
            return
        for path in sorted(directory.glob("*.safetensors")):
            try:
                record = self.registry.publish(path.stem, path.read_bytes(), self.engine.check)
            except AdapterFileError as exc:  # e.g. made for another backbone
                log.info("demo adapter %s skipped: %s", path.name, exc)
                continue
            except (ServeError, RegistryError) as exc:
                log.warning("demo adapter %s skipped: %s", path.name, exc)
                continue
            log.info("installed demo adapter %r (version %s)", path.stem, record.version)

    # ------------------------------------------------------------------ use cases (the routes check readiness)

    def require_ready(self) -> None:
        """Loaded and warmed (still true while draining: accepted requests must finish)."""
        if not self.ready:
            raise NotReadyError(f"the server is not ready: {self.status}", None, {"Retry-After": "1"})

    def check_readiness(self) -> None:
        """/readyz: ready and not draining, so load balancers stop sending traffic on SIGTERM."""
        self.require_ready()
        if self.draining:
            raise ShuttingDownError("the server is shutting down", None, {"Retry-After": "1"})

    def is_backbone(self, task: str) -> bool:
        """`task` names the bare backbone (served as an embedding model under its own name)."""
        return self.backbone_model is not None and task == self.backbone_model.key.task

    def require_access(self, principal: Principal, task: str) -> None:
        """The one tenant ACL check of every surface: the key must cover the task (any key may use the backbone)."""
        if not self.is_backbone(task):
            principal.require_task(task)

    async def resolve(self, task: str, version: str | None = None) -> ServedAdapter:
        """The served adapter of `task`: its active version, or `version` pinned (canaries, reproducible runs)."""
        if self.is_backbone(task):
            if version not in (None, self.backbone_model.key.version):
                raise VersionNotFoundError(f"the backbone {task!r} has one version, "
                                           f"{self.backbone_model.key.version!r}, not {version!r}", "version")
            return self.backbone_model
        manifest = self.registry.get(task)
        record = manifest.active_record if version is None else manifest.record(version)
        return await self.cache.get(AdapterKey(task, record.version))  # the version is fixed here

    async def predict(self, task: str, inputs: list[TextInput], tenant: str, version: str | None = None,
                      task_types: tuple[str, ...] | None = None) -> Outcome:
        """Each input's output from the task's active (or pinned) version; never a non-finite one.

        `task_types`: the task types the calling surface serves (e.g. /v1/embeddings: embedding only)."""
        annotate(task=task)
        adapter = await self.resolve(task, version)
        annotate(version=adapter.key.version)
        if task_types is not None and adapter.task.type not in task_types:
            raise InvalidInputError(f"task {task!r} is a {adapter.task.type} task; this route serves "
                                    f"{' or '.join(task_types)} tasks", "task")
        cost = [0]
        outputs = await self.engine.predict(adapter, inputs, tenant, self._charge(tenant, cost))
        for i, row in enumerate(outputs):
            if not torch.isfinite(row).all():
                self.metrics.non_finite_outputs.inc()
                raise NonFiniteOutputError(f"task {task!r} (version {adapter.key.version}) computed a non-finite "
                                           f"output for inputs[{i}]; no prediction is made up for it", f"inputs[{i}]")
        return Outcome(adapter, outputs, cost[0])

    def _charge(self, tenant: str, cost: list[int]):
        """Records the request's tokens in `cost`, and charges the rate limit in rows or tokens
        (`rate_limit_unit`), once a request's cost is known."""
        unit = self.settings.rate_limit_unit
        limited = self.rate_limiter is not None and unit != "requests"

        def charge(rows: int, tokens: int) -> None:
            if limited:
                self.rate_limiter.take(tenant, rows if unit == "rows" else tokens, unit)
            cost[0] = tokens
        return charge

    async def upload(self, task: str, path: Path) -> tuple[VersionRecord, bool]:
        """Validate the uploaded file against the backbone and this server's limits, store it, activate it.

        One reference swap in the registry: requests already admitted keep the version they resolved.
        The parsed adapter goes straight into the host tier, so its first request reads nothing from disk.
        """
        annotate(task=task)
        if self.is_backbone(task):
            path.unlink(missing_ok=True)
            raise InvalidTaskNameError(f"task name {task!r} is the backbone's own name (served as an embedding "
                                       "model); choose another", "task")
        published = await asyncio.to_thread(self.registry.publish_file, task, path, self.engine.check)
        annotate(version=published.record.version)
        self.metrics.init_requests([task], self.auth.enabled)
        key = AdapterKey(task, published.record.version)
        self.cache.put(prepare(key, published.adapter, self.engine.limits))
        return published.record, published.created

    async def activate(self, task: str, version: str) -> VersionRecord:
        annotate(task=task, version=version)
        return await asyncio.to_thread(self.registry.activate, task, version)

    async def delete(self, task: str, version: str | None = None) -> None:
        annotate(task=task, version=version)
        await asyncio.to_thread(self.registry.delete, task, version)

    def _resident_tasks(self) -> dict[str, list[str]]:
        """Tier -> the tasks of its resident versions (read from the scrape thread: copies, retried if mutated)."""
        for _ in range(3):
            try:
                return {"device": [k.task for k in list(self.engine.executor.pool.resident)],
                        "host": [k.task for k in self.cache.keys()]}
            except RuntimeError:  # changed size while copied
                continue
        return {}

    def residency(self, manifest: TaskManifest) -> str:
        if manifest.active is None:
            return "disk"
        key = AdapterKey(manifest.task, manifest.active)
        if self.engine.resident(key):
            return "device"
        return "host" if key in self.cache else "disk"
