"""Admission: check a request's inputs against the server's limits, then tokenise them for one adapter.

Tokenisation runs on its own thread pool, off the event loop; nothing is padded here (the executor pads
each forward to its own longest row).
"""
from __future__ import annotations

import asyncio
import inspect
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from torch import nn

from server.errors import InvalidInputError, NotReadyError
from server.schemas import TextInput
from server.served import ServedAdapter
from server.settings import Settings


@dataclass
class Row:
    """One tokenised input of one request, bound to the adapter version resolved at admission."""

    adapter: ServedAdapter
    input_ids: list[int]
    token_type_ids: list[int] | None


class Admission:
    """`await admit(adapter, inputs)` -> one `Row` per input, or a 422 naming the offending field."""

    def __init__(self, tokenizer, backbone: nn.Module, settings: Settings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.max_len = min(settings.max_seq_len, _max_positions(backbone.config, tokenizer))
        self.uses_token_types = ("token_type_ids" in getattr(tokenizer, "model_input_names", ())
                                 and "token_type_ids" in inspect.signature(backbone.forward).parameters)
        self._threads: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._threads = ThreadPoolExecutor(1, thread_name_prefix="adamix-tokenize")

    def stop(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)
        self._threads = None

    async def admit(self, adapter: ServedAdapter, inputs: list[TextInput]) -> list[Row]:
        self.check(inputs)
        if self._threads is None:
            raise NotReadyError("the engine is not running", None)
        return await asyncio.get_running_loop().run_in_executor(self._threads, self.encode, adapter, inputs)

    def check(self, inputs: list[TextInput]) -> None:
        """The request's size against the server's limits, naming the offending field."""
        s = self.settings
        if not inputs:
            raise InvalidInputError("inputs must hold at least one text", "inputs")
        if len(inputs) > s.max_inputs_per_request:
            raise InvalidInputError(f"inputs holds {len(inputs)} items, at most {s.max_inputs_per_request} allowed "
                                    "per request", "inputs")
        for i, item in enumerate(inputs):
            for name, text in (("text", item.text), ("text_pair", item.text_pair)):
                where = f"inputs[{i}]" + (f".{name}" if item.text_pair is not None else "")
                if text is None:
                    continue
                if not text.strip():
                    raise InvalidInputError(f"{where} is empty", where)
                if len(text) > s.max_text_chars:
                    raise InvalidInputError(f"{where} has {len(text)} characters, at most {s.max_text_chars} "
                                            "allowed", where)

    def encode(self, adapter: ServedAdapter, inputs: list[TextInput]) -> list[Row]:
        """Tokenise (truncating to the task's and the server's max length) without padding."""
        max_len = min(adapter.task.max_seq_len, self.max_len)
        ids: list[list[int]] = [[] for _ in inputs]
        types: list[list[int] | None] = [None for _ in inputs]
        for with_pair in (False, True):  # the tokenizer takes either all pairs or none
            idx = [i for i, x in enumerate(inputs) if (x.text_pair is not None) == with_pair]
            if not idx:
                continue
            texts = [inputs[i].text for i in idx]
            pairs = [inputs[i].text_pair for i in idx] if with_pair else None
            enc = self.tokenizer(texts, pairs, truncation=True, max_length=max_len)
            for j, i in enumerate(idx):
                ids[i] = enc["input_ids"][j]
                if self.uses_token_types and "token_type_ids" in enc:
                    types[i] = enc["token_type_ids"][j]
        return [Row(adapter, ids[i], types[i]) for i in range(len(inputs))]


def _max_positions(config, tokenizer) -> int:
    limits = [getattr(tokenizer, "model_max_length", 10**9)]
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            limits.append(value - 2 if config.model_type in ("roberta", "xlm-roberta") else value)
    return min(limits)
