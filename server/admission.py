"""Admission: check a request's inputs against the server's limits and its task's input shape, then
tokenise them for one adapter (`server/tokenizing.py`: at a cost bounded by the task's max length rather
than the text's), off the event loop: on one thread of the server process, or with `tokenizer_workers` > 0
on that many worker processes (the tokenizer holds the GIL, so only processes tokenise in parallel; on an
accelerator one thread cannot keep up with the forward). Nothing is padded here.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from torch import nn

from server.errors import InvalidInputError, NotReadyError
from server.schemas import TextInput
from server.served import ServedAdapter
from server.settings import Settings
from server.tokenizing import NoTokensError, SegmentTokenizer, TokenizerWorkers


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
        self._json = tokenizer.backend_tokenizer.to_str()
        self._segments = SegmentTokenizer(self._json, self.uses_token_types)
        self._threads: ThreadPoolExecutor | None = None
        self._workers: TokenizerWorkers | None = None

    def start(self) -> None:
        if self.settings.tokenizer_workers:
            self._workers = TokenizerWorkers(self._json, self.uses_token_types, self.settings.tokenizer_workers)
        else:
            self._threads = ThreadPoolExecutor(1, thread_name_prefix="adamix-tokenize")

    def stop(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)
        if self._workers is not None:
            self._workers.shutdown()
        self._threads = self._workers = None

    async def admit(self, adapter: ServedAdapter, inputs: list[TextInput]) -> list[Row]:
        self.check(adapter, inputs)
        if self._workers is not None:
            pair, max_len = adapter.task.pair, self._max_len(adapter)
            encoded = await self._workers.encode(_texts(inputs), pair, max_len)
            if isinstance(encoded, str):
                raise _no_tokens(encoded)
            return [Row(adapter, ids, types) for ids, types in encoded]
        if self._threads is None:
            raise NotReadyError("the engine is not running", None)
        return await asyncio.get_running_loop().run_in_executor(self._threads, contextvars.copy_context().run,
                                                                self.encode, adapter, inputs)

    def check(self, adapter: ServedAdapter, inputs: list[TextInput]) -> None:
        """The request against the server's limits and the task's input shape, naming the offending field."""
        s, task = self.settings, adapter.task
        if not inputs:
            raise InvalidInputError("inputs must hold at least one text", "inputs")
        if len(inputs) > s.max_inputs_per_request:
            raise InvalidInputError(f"inputs holds {len(inputs)} items, at most {s.max_inputs_per_request} allowed "
                                    "per request", "inputs")
        for i, item in enumerate(inputs):
            if task.pair and item.text_pair is None:
                raise InvalidInputError(f"task {adapter.key.task!r} takes pairs: inputs[{i}] needs "
                                        '{"text": ..., "text_pair": ...}', f"inputs[{i}].text_pair")
            if not task.pair and item.text_pair is not None:
                raise InvalidInputError(f"task {adapter.key.task!r} takes single texts: inputs[{i}].text_pair is "
                                        "not allowed", f"inputs[{i}].text_pair")
            for name, text in (("text", item.text), ("text_pair", item.text_pair)):
                where = f"inputs[{i}]" + (f".{name}" if task.pair else "")
                if text is None:
                    continue
                if len(text) > s.max_text_chars:
                    raise InvalidInputError(f"{where} has {len(text)} characters, at most {s.max_text_chars} "
                                            "allowed", where)
                if not text.strip():
                    raise InvalidInputError(f"{where} is empty", where)
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise InvalidInputError(f"{where} is not valid Unicode: {exc.reason} at character "
                                            f"{exc.start}", where) from None

    def encode(self, adapter: ServedAdapter, inputs: list[TextInput]) -> list[Row]:
        """Tokenise on the calling thread (truncating to the task's and the server's max length), unpadded."""
        try:
            encoded = self._segments.encode(_texts(inputs), adapter.task.pair, self._max_len(adapter))
        except NoTokensError as exc:
            raise _no_tokens(exc.where) from None
        return [Row(adapter, ids, types) for ids, types in encoded]

    def _max_len(self, adapter: ServedAdapter) -> int:
        return min(adapter.task.max_seq_len, self.max_len)


def _texts(inputs: list[TextInput]) -> list[tuple[str, str | None]]:
    return [(item.text, item.text_pair) for item in inputs]


def _no_tokens(where: str) -> InvalidInputError:
    return InvalidInputError(f"{where} holds no token after normalisation (only control, zero-width or other "
                             "characters the tokenizer drops)", where)


def _max_positions(config, tokenizer) -> int:
    limits = [getattr(tokenizer, "model_max_length", 10**9)]
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            limits.append(value - 2 if config.model_type in ("roberta", "xlm-roberta") else value)
    return min(limits)
