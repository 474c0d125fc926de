"""`ServerState`: the one registry, host cache and engine of a running app, and the predict use case."""
from __future__ import annotations

import asyncio
import logging
from importlib.metadata import PackageNotFoundError, version as package_version

import torch

from adamix import load_backbone
from server.cache import HostCache
from server.engine import BatchingEngine, TextInput
from server.errors import InvalidAdapterError, NotReadyError, ServeError
from server.metrics import ServerMetrics
from server.pool import AdapterKey
from server.registry import AdapterRegistry, TaskManifest, check_task_name
from server.settings import Settings

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


class ServerState:
    """Built empty by the app; `start()` loads the backbone and registry in the background."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServerMetrics(settings.metrics_max_tasks)
        self.registry: AdapterRegistry | None = None
        self.cache: HostCache | None = None
        self.engine: BatchingEngine | None = None
        self.ready = False
        self.status = "loading the backbone"

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
        self.engine = BatchingEngine(model, tokenizer, info, s, self.metrics)
        pinned = set(s.pinned_tasks)
        self.cache = HostCache(self.registry, int(s.host_cache_mb * 2**20), self.metrics,
                               lambda key: key.task in pinned)
        if self.registry.created:  # only a brand-new registry: deleting every task later must stay deleted
            await asyncio.to_thread(self._install_demo_adapters)
        self.status = "warming up"
        await self.engine.start()
        await self.engine.run_in_worker(self.engine.warmup)
        await self._warm_tasks(pinned)
        self.ready = True
        self.status = "ready"
        log.info("ready: %d task(s) registered in %s", len(self.registry), s.registry)

    async def _warm_tasks(self, pinned: set[str]) -> None:
        """Make the pinned tasks (kept resident) and a few others resident, and run each once."""
        for task in dict.fromkeys([*self.settings.pinned_tasks, *self.registry.tasks()[:4]]):
            try:
                key, adapter = await self._resolve(task)
            except ServeError as exc:
                log.warning("warm-up skipped task %r: %s", task, exc.message)
                continue
            await self.engine.run_in_worker(self.engine.run_batch,
                                            self.engine.encode(key, adapter, [TextInput("warm up")]))
            if task in pinned:
                await self.engine.run_in_worker(self.engine.pin, key, adapter)

    async def stop(self) -> None:
        self.ready = False
        self.status = "shutting down"
        if self.engine is not None:
            await self.engine.stop()

    def _install_demo_adapters(self) -> None:
        """Publish every demo adapter that fits the loaded backbone into the fresh registry."""
        directory = self.settings.demo_adapters
        if directory is None or not directory.is_dir():
            return
        for path in sorted(directory.glob("*.safetensors")):
            try:
                check_task_name(path.stem)
                record = self.registry.publish(path.stem, path.read_bytes())
                self.engine.check_servable(self.registry.load(path.stem, record.version))
            except InvalidAdapterError as exc:
                log.info("demo adapter %s skipped: %s", path.name, exc.message)
                continue
            except ServeError as exc:
                log.warning("demo adapter %s skipped: %s", path.name, exc.message)
                if path.stem in self.registry:
                    self.registry.delete(path.stem)
                continue
            log.info("installed demo adapter %r (version %s)", path.stem, record.version)

    # ------------------------------------------------------------------ use cases

    def require_ready(self) -> None:
        if not self.ready:
            raise NotReadyError(f"the server is not ready: {self.status}", None, {"Retry-After": "1"})

    async def _resolve(self, task: str) -> tuple[AdapterKey, object]:
        key = AdapterKey(task, self.registry.get(task).active_record.version)  # the version is fixed here
        adapter = await self.cache.get(key)
        self.engine.check_servable(adapter)
        return key, adapter

    async def predict(self, task: str, inputs: list[TextInput]) -> tuple[str, list[dict]]:
        self.require_ready()
        key, adapter = await self._resolve(task)
        return key.version, await self.engine.submit(key, adapter, inputs)

    def residency(self, manifest: TaskManifest) -> str:
        if manifest.active is None:
            return "disk"
        key = AdapterKey(manifest.task, manifest.active)
        if key in self.engine.pool.resident:
            return "device"
        return "host" if key in self.cache else "disk"
