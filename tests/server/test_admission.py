"""Admission: tokenisation cost is bounded by the task's max length, and the result equals full tokenisation."""
from __future__ import annotations

import asyncio
import random
import time

import pytest
from transformers import AutoTokenizer

from adamix import default_backbone_path
from server.errors import InvalidInputError
from server.schemas import TextInput
from server.settings import Settings
from tests.conftest import SHARED_DATA
from tests.server.helpers import make_adapter, make_engine, serve


@pytest.fixture(scope="module")
def engine(tiny_backbone_dir):
    return make_engine(tiny_backbone_dir)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_backbone_path(), local_files_only=True)


def _real_texts() -> list[tuple[str, str]]:
    """Sentence pairs from the GLUE dev sets (RTE, STS-B, QNLI), or synthetic ones without the shared data."""
    pairs = []
    for task, cols in (("RTE", (1, 2)), ("STS-B", (7, 8)), ("QNLI", (1, 2))):
        path = SHARED_DATA / "glue" / task / "dev.tsv"
        if path.is_file():
            for line in path.read_text().splitlines()[1:400]:
                parts = line.split("\t")
                if len(parts) > max(cols):
                    pairs.append((parts[cols[0]], parts[cols[1]]))
    if not pairs:  # no shared data: ordinary sentences of a small vocabulary
        rng = random.Random(0)
        words = ("the", "a", "cat", "river", "market", "sings", "fell", "quickly", "old", "blue", "near", "house")
        pairs = [tuple(" ".join(rng.choices(words, k=rng.randint(4, 20))) + "." for _ in range(2)) for _ in range(400)]
    return pairs


# Longer than every first cut (max_len * 8 characters), yet small enough that the reference (full
# tokenisation with the tokenizer's own truncation, quadratic in the pair's length) stays affordable.
HOSTILE = ["😀 " * 1200, "word " * 1000, "x" * 5000, "a," * 1500, "\u200b" * 3000 + " tail words here",
           " " * 100 + "lead " * 300, "東京都" * 800, "Ünïcödé ñaïve café " * 150, "tab\tnew\nline " * 250,
           "ab" * 50 + " " + "cd" * 2000]


@pytest.mark.parametrize("max_len", [8, 32, 128])
def test_bounded_tokenisation_equals_full_tokenisation(engine, tokenizer, tiny_loaded, max_len):
    model, _, info = tiny_loaded
    pair_task = serve(make_adapter(model, info, task_type="pair_classification", max_seq_len=max_len), "p")
    single_task = serve(make_adapter(model, info, max_seq_len=max_len), "s")
    real = _real_texts()
    pairs = real + [(a, b) for a in HOSTILE for b in ("short", HOSTILE[1])]
    rng = random.Random(max_len)
    pairs += [(" ".join(a for a, _ in rng.sample(real, 20)), " ".join(b for _, b in rng.sample(real, 20)))
              for _ in range(20)]  # long texts of real sentences (not of hostile ones: 20 of those make a pair whose
    # reference tokenisation took over 20 GB where the shared data was missing and only hostile pairs were there)
    rows = engine.admission.encode(pair_task, [TextInput(text=a, text_pair=b) for a, b in pairs])
    # The reference one pair at a time: the tokenizer's own truncation materialises every overflowing window of
    # a long pair (quadratic), and a whole batch of them at once took 17 GB of this process.
    for row, (a, b) in zip(rows, pairs, strict=True):
        full = tokenizer(a, b, truncation=True, max_length=max_len)
        assert row.input_ids == full["input_ids"], a[:60]
        assert row.token_type_ids == full["token_type_ids"]
    singles = [a for a, _ in pairs] + HOSTILE
    rows = engine.admission.encode(single_task, [TextInput(text=t) for t in singles])
    assert [r.input_ids for r in rows] == [tokenizer(t, truncation=True, max_length=max_len)["input_ids"]
                                           for t in singles]


def test_tokenisation_time_does_not_follow_text_length(engine, tiny_loaded):
    model, _, info = tiny_loaded
    task = serve(make_adapter(model, info, task_type="pair_classification", max_seq_len=128), "p")
    big = [TextInput(text="😀 " * 5000, text_pair="😀 " * 5000)] * 12  # 600 KB of JSON: the reported attack
    start = time.perf_counter()
    rows = engine.admission.encode(task, big)
    assert all(len(r.input_ids) == 128 for r in rows)
    assert time.perf_counter() - start < 5.0  # took 25.8 s and 11 GB before the cut (a generous bound)


def test_tokenizer_worker_processes_give_the_rows_the_one_thread_gives(tiny_backbone_dir, tiny_loaded):
    """`tokenizer_workers=2`: concurrent requests tokenised in two worker processes, the same ids, the same 422."""
    model, _, info = tiny_loaded
    pair_task = serve(make_adapter(model, info, task_type="pair_classification", max_seq_len=32), "p")
    single_task = serve(make_adapter(model, info, max_seq_len=16), "s")
    requests = [(pair_task, [TextInput(text=a, text_pair=b)]) for a, b in _real_texts()[:40] + [(HOSTILE[1], "x")]]
    requests += [(single_task, [TextInput(text=t) for t in HOSTILE[i:i + 3]]) for i in range(0, len(HOSTILE), 3)]
    engine = make_engine(tiny_backbone_dir, tokenizer_workers=2)

    async def admit_all():
        engine.admission.start()
        try:
            assert len(engine.admission._workers._pool._processes) == 2  # real processes, spawned at start
            rows = await asyncio.gather(*(engine.admission.admit(task, inputs) for task, inputs in requests))
            with pytest.raises(InvalidInputError) as refused:
                await engine.admission.admit(single_task, [TextInput(text="fine"), TextInput(text="\u200b\u200b")])
            return rows, refused.value
        finally:
            engine.admission.stop()

    rows, refused = asyncio.run(admit_all())
    for (task, inputs), got in zip(requests, rows, strict=True):
        want = engine.admission.encode(task, inputs)  # on this thread
        assert [(r.input_ids, r.token_type_ids, r.adapter) for r in got] == \
               [(r.input_ids, r.token_type_ids, r.adapter) for r in want]
    assert refused.field == "inputs[1]" and "no token" in str(refused)


@pytest.mark.parametrize("workers", [-1, 10_000])
def test_tokenizer_workers_setting_is_bounded(workers):
    with pytest.raises(ValueError, match="tokenizer_workers"):
        Settings(tokenizer_workers=workers, demo_adapters=None)
