"""Admission: check a request's inputs against the server's limits and its task's input shape, then
tokenise them for one adapter, at a cost bounded by the task's max length rather than the text's.

Each segment is cut at a whitespace boundary to a prefix that already holds more tokens than the task
can keep: normalisation is character-local and pre-tokenisation splits at whitespace (WordPiece and
byte-level BPE alike), so the prefix's tokens are the whole text's first tokens. Truncation then follows
the tokenizer's own rule (`longest_first`: the shorter segment kept whole if it fits in half, else half
each, the odd token to the longer), and the tokenizer's post-processor adds the special tokens, so the
result equals tokenising the whole text. Only when both segments of a pair were cut and the odd token's
owner depends on their full lengths are those lengths counted (linear, without the tokenizer's
truncation, whose overflow windows cost quadratic time and memory in the text's length).
Tokenisation runs on its own thread pool, off the event loop; nothing is padded here.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer
from torch import nn

from server.errors import InvalidInputError, NotReadyError
from server.schemas import TextInput
from server.served import ServedAdapter
from server.settings import Settings


CHARS_PER_TOKEN = 8  # the first cut: max_len * this many characters (grown x4 while it holds too few tokens)


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
        # A private copy of the fast tokenizer with no truncation or padding of its own (its settings are
        # mutable state that the Hugging Face wrapper rewrites on every call); encoding is thread-safe.
        self._tk = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._tk.no_truncation()
        self._tk.no_padding()
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
        self.check(adapter, inputs)
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
        """Tokenise (truncating to the task's and the server's max length) without padding."""
        max_len = min(adapter.task.max_seq_len, self.max_len)
        pair = adapter.task.pair
        budget = max(0, max_len - self._tk.num_special_tokens_to_add(pair))  # content tokens kept
        rows = []
        for i, item in enumerate(inputs):
            texts = (item.text, item.text_pair) if pair else (item.text,)
            segments = [self._segment(t, budget + 1) for t in texts]
            for (enc, _), name in zip(segments, ("text", "text_pair")):
                if not enc.ids:
                    where = f"inputs[{i}]" + (f".{name}" if pair else "")
                    raise InvalidInputError(f"{where} holds no token after normalisation (only control, "
                                            "zero-width or other characters the tokenizer drops)", where)
            if pair:
                (a, cut_a), (b, cut_b) = segments
                keep_a, keep_b = self._longest_first(a, cut_a, texts[0], b, cut_b, texts[1], budget)
                a.truncate(keep_a)
                b.truncate(keep_b)
                final = self._tk.post_process(a, b, add_special_tokens=True)
            else:
                segments[0][0].truncate(budget)
                final = self._tk.post_process(segments[0][0], None, add_special_tokens=True)
            rows.append(Row(adapter, final.ids, final.type_ids if self.uses_token_types else None))
        return rows

    def _segment(self, text: str, need: int) -> tuple[Encoding, bool]:
        """The tokens of `text`, or of a prefix cut at whitespace holding at least `need` of them (then True)."""
        chars = need * CHARS_PER_TOKEN
        while len(text) > chars:
            cut = _last_space(text, chars)
            if cut > 0:
                enc = self._tk.encode(text[:cut], add_special_tokens=False)
                if len(enc.ids) >= need:
                    return enc, True
            chars *= 4
        return self._tk.encode(text, add_special_tokens=False), False

    def _longest_first(self, a: Encoding, cut_a: bool, text_a: str, b: Encoding, cut_b: bool, text_b: str,
                       budget: int) -> tuple[int, int]:
        """How many tokens of each segment the tokenizer's `longest_first` truncation keeps of the whole texts."""
        la, lb = len(a.ids), len(b.ids)  # a cut segment's full length is more than its count here
        if la + lb <= budget:
            return la, lb
        if 2 * min(la, lb) <= budget:  # the shorter one is kept whole (never a cut one: it holds > budget)
            return (la, budget - la) if la < lb else (budget - lb, lb)
        half, odd = budget // 2, budget % 2  # half each; the odd token to the longer one (the second on a tie)
        if odd:  # compare the full lengths where a cut hides them
            if (cut_a or cut_b) and not ((cut_a and not cut_b and la > lb) or (cut_b and not cut_a and lb > la)):
                la = len(self._tk.encode(text_a, add_special_tokens=False).ids) if cut_a else la
                lb = len(self._tk.encode(text_b, add_special_tokens=False).ids) if cut_b else lb
            return (half + odd, half) if la > lb else (half, half + odd)
        return half, half


def _last_space(text: str, end: int) -> int:
    """The index of the last whitespace character before `end` (in its second half), or -1."""
    for i in range(end - 1, end // 2 - 1, -1):
        if text[i].isspace():
            return i
    return -1


def _max_positions(config, tokenizer) -> int:
    limits = [getattr(tokenizer, "model_max_length", 10**9)]
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            limits.append(value - 2 if config.model_type in ("roberta", "xlm-roberta") else value)
    return min(limits)
