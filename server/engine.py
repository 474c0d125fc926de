"""`Engine`: requests for any tasks -> admission -> batcher -> executor -> each row's logits.

    admission (server/admission.py)  validate the inputs, tokenise them for the request's adapter
    batcher   (server/batcher.py)    a bounded queue; batches by max rows / max wait, tasks mixed freely
    executor  (server/executor.py)   one worker thread: the backbone + adapter pool, one forward per batch
What a response looks like is not the engine's business: the routes shape the logits (server/responses.py).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from adamix import AdapterFile, BackboneInfo
from adamix.model import backbone_of
from server.admission import Admission
from server.batcher import Batcher
from server.errors import UnservableAdapterError
from server.executor import Executor
from server.metrics import ServerMetrics
from server.schemas import TextInput
from server.served import AdapterKey, ServedAdapter, prepare
from server.settings import Settings
from server.tracing import Tracing

PROBE_TEXTS = ("a short probe", "A longer probe input, with punctuation, numbers (1, 2, 3) and CAPITALS!")


class Engine:
    """One backbone, many tasks: `await predict(adapter, inputs)` -> one (C,) logits tensor per input."""

    def __init__(self, model: torch.nn.Module, tokenizer, info: BackboneInfo, settings: Settings,
                 metrics: ServerMetrics, tracing: Tracing | None = None) -> None:
        backbone = backbone_of(model)
        self.tracing = tracing or Tracing()
        self.admission = Admission(tokenizer, backbone, settings)
        self.executor = Executor(backbone, info.model_type, info.num_layers, info.hidden_size,
                                 tokenizer.pad_token_id or 0, settings, metrics)
        self.batcher = Batcher(lambda rows: self.executor.call(self.executor.run_batch, rows),
                               self.executor.batch_key_limit, settings, metrics, self.tracing)
        self.limits = self.executor.limits

    async def start(self) -> None:
        self.executor.start()
        self.admission.start()
        self.batcher.start()
        await self.executor.call(self.executor.warmup)

    async def stop(self) -> None:
        await self.batcher.stop()
        self.admission.stop()
        self.executor.stop()

    async def predict(self, adapter: ServedAdapter, inputs: list[TextInput], tenant: str,
                      charge: Callable[[int, int], None] | None = None) -> list[torch.Tensor]:
        """Each input's logits; `tenant` (the API key's name) is whose fair share of the batches it uses.

        `charge(rows, tokens)`, called once the cost is known and before anything is queued, may refuse it.
        """
        self.batcher.check_capacity(tenant)
        key = adapter.key
        with self.tracing.child_span("adamix.admission", {"adamix.task": key.task, "adamix.version": key.version,
                                                          "adamix.rows": len(inputs)}) as span:
            rows = await self.admission.admit(adapter, inputs)
            tokens = sum(len(r.input_ids) for r in rows)
            span.set_attribute("adamix.tokens", tokens)
        if charge is not None:
            charge(len(rows), tokens)
        return await self.batcher.submit(rows, tenant)

    def check(self, adapter: AdapterFile) -> None:
        """Refuse an adapter this engine cannot serve or that answers a probe input with non-finite values.

        Blocking: call it from a thread other than the event loop's (the registry's publish runs in one).
        """
        served = prepare(AdapterKey("probe", "probe"), adapter, self.limits)  # checks servability; never a real id
        inputs = [TextInput(text=t, text_pair=t if adapter.task.pair else None) for t in PROBE_TEXTS]
        logits = self.executor.call_blocking(self.executor.probe, self.admission.encode(served, inputs))
        headroom = self.limits.max_value ** 0.5  # what other inputs may add before an overflow
        largest = max(float(x.abs().max()) for x in logits)
        if not largest <= headroom:  # NaN compares False too
            raise UnservableAdapterError(f"the adapter's outputs on a probe input reach {largest:.3g}: not finite "
                                         f"or beyond {headroom:.3g}, so other inputs would overflow this server's "
                                         "dtype; its weights are not those of a trained adapter", "tensors")

    async def pin(self, adapter: ServedAdapter) -> None:
        await self.executor.call(self.executor.pin, adapter)

    def resident(self, key: AdapterKey) -> bool:
        """Whether `key` holds a device pool slot."""
        return key in self.executor.pool.resident

    def queue_depth(self) -> int:
        return self.batcher.queue_depth()
