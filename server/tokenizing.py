"""Tokenising one request's texts for one task, at a cost bounded by the task's max length, not the text's.

Each segment is cut at a whitespace boundary to a prefix that already holds more tokens than the task
can keep: normalisation is character-local and pre-tokenisation splits at whitespace (WordPiece and
byte-level BPE alike), so the prefix's tokens are the whole text's first tokens. Truncation then follows
the tokenizer's own rule (`longest_first`: the shorter segment kept whole if it fits in half, else half
each, the odd token to the longer), and the tokenizer's post-processor adds the special tokens, so the
result equals tokenising the whole text. Only when both segments of a pair were cut and the odd token's
owner depends on their full lengths are those lengths counted (linear, without the tokenizer's
truncation, whose overflow windows cost quadratic time and memory in the text's length).

This module imports only `tokenizers`: it is what a tokenizer worker process runs (`TokenizerWorkers`), so a
worker holds no model. The `tokenizers` library holds the GIL while it encodes one text, so threads cannot
tokenise in parallel; worker processes can.
"""
from __future__ import annotations

import asyncio
import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from tokenizers import Encoding, Tokenizer

CHARS_PER_TOKEN = 8  # the first cut: max_len * this many characters (grown x4 while it holds too few tokens)
Texts = list[tuple[str, str | None]]  # (text, text_pair or None) per input
Encoded = list[tuple[list[int], list[int] | None]]  # (input ids, token type ids or None) per input


class NoTokensError(ValueError):
    """A segment holds no token after normalisation; `where` names it (`inputs[3].text_pair`)."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


class SegmentTokenizer:
    """`encode(texts, pair, max_len)` -> each input's ids (special tokens added), truncated to `max_len`."""

    def __init__(self, tokenizer_json: str, uses_token_types: bool) -> None:
        # A private copy of the fast tokenizer with no truncation or padding of its own (its settings are
        # mutable state that the Hugging Face wrapper rewrites on every call); encoding is thread-safe.
        self._tk = Tokenizer.from_str(tokenizer_json)
        self._tk.no_truncation()
        self._tk.no_padding()
        self.uses_token_types = uses_token_types

    def encode(self, texts: Texts, pair: bool, max_len: int) -> Encoded:
        budget = max(0, max_len - self._tk.num_special_tokens_to_add(pair))  # content tokens kept
        out: Encoded = []
        for i, item in enumerate(texts):
            item = item if pair else item[:1]
            segments = [self._segment(t, budget + 1) for t in item]
            for (enc, _), name in zip(segments, ("text", "text_pair")):
                if not enc.ids:
                    raise NoTokensError(f"inputs[{i}]" + (f".{name}" if pair else ""))
            if pair:
                (a, cut_a), (b, cut_b) = segments
                keep_a, keep_b = self._longest_first(a, cut_a, item[0], b, cut_b, item[1], budget)
                a.truncate(keep_a)
                b.truncate(keep_b)
                final = self._tk.post_process(a, b, add_special_tokens=True)
            else:
                segments[0][0].truncate(budget)
                final = self._tk.post_process(segments[0][0], None, add_special_tokens=True)
            out.append((final.ids, final.type_ids if self.uses_token_types else None))
        return out

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


# ---------------------------------------------------------------- worker processes

_worker: SegmentTokenizer | None = None  # in a worker process: its own tokenizer


def _start_worker(tokenizer_json: str, uses_token_types: bool) -> None:
    global _worker
    _worker = SegmentTokenizer(tokenizer_json, uses_token_types)


def _encode_in_worker(jobs: list[tuple[Texts, bool, int]]) -> list[Encoded | str]:
    """A worker's answer to each (texts, pair, max_len) job: its encodings, or the `where` of a segment with no
    token (plain data, never a pickled exception)."""
    out: list[Encoded | str] = []
    for texts, pair, max_len in jobs:
        try:
            out.append(_worker.encode(texts, pair, max_len))
        except NoTokensError as exc:
            out.append(exc.where)
    return out


class TokenizerWorkers:
    """`count` worker processes, each with its own copy of the tokenizer, encoding requests in parallel.

    `await encode(...)` queues the request; the requests that arrive within one turn of the event loop go out
    together, split over the workers, one message each (a message costs more than tokenising a sentence).
    Spawned at start-up, before any request: fresh interpreters, never a fork of this process, whose torch and
    server threads exist by then (a forked child would inherit their locks in whatever state they held). A worker
    gets the tokenizer as JSON and runs module-level functions of this module; like every spawned process it also
    imports this process's main module, so one costs a few seconds and ~200 MB when that module imports torch
    (`adamix.cli` does; measured: 2 workers ready in ~4 s vs 0.13 s forked, on a loaded 2-core machine).
    """

    def __init__(self, tokenizer_json: str, uses_token_types: bool, count: int) -> None:
        self.count = count
        self._pool = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(tokenizer_json, uses_token_types))
        self._pending: list[tuple[tuple[Texts, bool, int], asyncio.Future]] = []
        # Start the workers now: the pool spawns one per submission while none is idle, so `count` at once.
        for done in [self._pool.submit(_encode_in_worker, [([("warm up", None)], False, 8)]) for _ in range(count)]:
            done.result()

    async def encode(self, texts: Texts, pair: bool, max_len: int) -> Encoded | str:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(((texts, pair, max_len), future))
        if len(self._pending) == 1:
            loop.call_soon(self._send)
        return await future

    def _send(self) -> None:
        jobs, self._pending = self._pending, []
        parts = min(self.count, len(jobs))
        for k in range(parts):
            chunk = jobs[k::parts]
            done = asyncio.wrap_future(self._pool.submit(_encode_in_worker, [job for job, _ in chunk]))
            done.add_done_callback(functools.partial(_deliver, [future for _, future in chunk]))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _deliver(futures: list[asyncio.Future], done: asyncio.Future) -> None:
    """Each request's answer from its chunk's (or the chunk's failure to each)."""
    error = None if done.cancelled() else done.exception()
    for i, future in enumerate(futures):
        if future.done():  # its caller went away
            continue
        if done.cancelled():
            future.cancel()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result()[i])
