"""The engine's promise: row i of a mixed batch equals row i served alone, and equals the adapter offline."""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import random

import pytest
import torch

from adamix import load_backbone, task_model_from_adapter
from server.responses import predictions
from server.schemas import TextInput
from server.served import check_servable
from tests.server.helpers import TEXTS, assert_same, make_adapter, make_engine, run_rows, serve

PAIRS = [("the cat sat on the mat", "a cat was sitting"), ("he left early", "he stayed until the end")]


def task_zoo(model, info) -> dict[str, object]:
    """Tasks of every shape the engine must mix: kinds, ranks, placements, label counts, poolings, regression,
    embeddings (with and without a projection)."""
    specs = {
        "adapter_r2": dict(kind="adapter", r=2),
        "adapter_r8_both": dict(kind="adapter", r=8, placement="both", labels=("a", "b", "c")),
        "adapter_attn_cls": dict(kind="adapter", r=5, placement="attention", pooling="cls"),
        "lora_r4": dict(kind="lora", r=4, std=0.05),
        "lora_key_r2": dict(kind="lora", r=2, targets=("key",), labels=tuple("vwxyz"), std=0.05),
        "lora_qkv_pooler": dict(kind="lora", r=3, targets=("query", "key", "value"), pooling="pooler", std=0.05),
        "regression": dict(kind="adapter", r=3, labels=()),
        "pair": dict(kind="lora", r=2, task_type="pair_classification", std=0.05),
        "short": dict(kind="adapter", r=4, max_seq_len=6),
        "embedding_proj": dict(kind="adapter", r=3, task_type="embedding", embedding_dim=6),  # > max_labels 5 below
        "embedding_lora_cls": dict(kind="lora", r=2, task_type="embedding", pooling="cls", std=0.05),
    }
    return {name: make_adapter(model, info, seed=i, **kw) for i, (name, kw) in enumerate(specs.items())}


@pytest.fixture(scope="module")
def zoo(tiny_loaded):
    model, _, info = tiny_loaded
    return task_zoo(model, info)


def text_input(text) -> TextInput:
    return TextInput(text=text[0], text_pair=text[1]) if isinstance(text, tuple) else TextInput(text=text)


def rows_for(engine, zoo, picks):
    rows = []
    for name, text in picks:
        rows += engine.admission.encode(serve(zoo[name], name), [text_input(text)])
    return rows


def random_picks(zoo, n, seed):
    rng = random.Random(seed)
    picks = []
    for _ in range(n):
        name = rng.choice(sorted(zoo))
        picks.append((name, rng.choice(PAIRS) if name == "pair" else rng.choice(TEXTS)))
    return picks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_batch_rows_equal_rows_served_alone(tiny_backbone_dir, zoo, seed):
    engine = make_engine(tiny_backbone_dir)
    picks = random_picks(zoo, 24, seed)
    mixed = run_rows(engine, rows_for(engine, zoo, picks))
    for pick, got in zip(picks, mixed):
        assert_same(got, run_rows(engine, rows_for(engine, zoo, [pick]))[0])


def test_engine_equals_adapter_applied_offline(tiny_backbone_dir, zoo):
    engine = make_engine(tiny_backbone_dir)
    fresh, tokenizer, _ = load_backbone(tiny_backbone_dir)
    picks = random_picks(zoo, 30, seed=7)
    served = run_rows(engine, rows_for(engine, zoo, picks))
    for (name, text), got in zip(picks, served):
        adapter = zoo[name]
        offline = task_model_from_adapter(copy.deepcopy(fresh), adapter)
        args = text if isinstance(text, tuple) else (text,)
        enc = tokenizer(*args, truncation=True, max_length=adapter.task.max_seq_len, return_tensors="pt")
        with torch.no_grad():
            logits = offline(**enc)[0]  # (C,)
        if adapter.task.type == "regression":
            assert got["value"] == pytest.approx(float(logits[0]), abs=1e-5)
        elif adapter.task.type == "embedding":  # the offline model's output is the unit embedding itself
            assert got["embedding"] == pytest.approx(logits.tolist(), abs=1e-5)
        else:
            probs = torch.softmax(logits, -1)
            assert got["label"] == adapter.task.labels[int(probs.argmax())]
            assert list(got["scores"].values()) == pytest.approx(probs.tolist(), abs=1e-5)


def test_small_pool_evicts_and_reloads_exactly(tiny_backbone_dir, zoo):
    """A pool of 3 slots cycling 9 tasks: every batch still equals the roomy pool's answer."""
    roomy = make_engine(tiny_backbone_dir)
    tight = make_engine(tiny_backbone_dir, device_pool_mb=0.07, max_adapter_rank=8, max_labels=5)
    assert 2 <= tight.executor.pool.num_slots < len(zoo)
    for seed in range(8):
        rng = random.Random(seed)
        names = rng.sample(sorted(zoo), tight.executor.pool.num_slots)
        picks = [(n, rng.choice(PAIRS) if n == "pair" else rng.choice(TEXTS)) for n in names for _ in range(2)]
        tight_out, roomy_out = run_rows(tight, rows_for(tight, zoo, picks)), run_rows(roomy, rows_for(roomy, zoo, picks))
        for got, want in zip(tight_out, roomy_out):
            assert_same(got, want)
    assert tight.executor.metrics.evictions.labels("device")._value.get() > 0
    pool = tight.executor.pool  # the byte count it keeps as sites are allocated is what its tensors hold
    held = [pool.head_w, pool.head_b, *(t for ws in pool._weights.values() for t in ws)]
    assert pool.nbytes() == sum(t.nbytes for t in held) > pool.head_w.nbytes


def test_truncation_respects_task_max_seq_len(tiny_backbone_dir, zoo):
    engine = make_engine(tiny_backbone_dir)
    long_text = " ".join(["word"] * 500)
    (row,) = engine.admission.encode(serve(zoo["short"], "short"), [TextInput(text=long_text)])
    assert len(row.input_ids) == 6
    (row,) = engine.admission.encode(serve(zoo["adapter_r2"], "adapter_r2"), [TextInput(text=long_text)])
    assert len(row.input_ids) == 128  # the tiny backbone's position limit


def test_async_submit_batches_concurrent_requests_across_tasks(tiny_backbone_dir, zoo):
    engine = make_engine(tiny_backbone_dir, max_wait_ms=50)
    picks = random_picks(zoo, 12, seed=3)

    async def main():
        await engine.start()
        try:
            return await asyncio.gather(*(engine.predict(serve(zoo[n], n), [text_input(t)], f"tenant{i % 3}")
                                         for i, (n, t) in enumerate(picks)))
        finally:
            await engine.stop()

    results = asyncio.run(main())
    reference = make_engine(tiny_backbone_dir)
    for pick, (logits,) in zip(picks, results):
        got = predictions(zoo[pick[0]].task, [logits])[0]
        assert_same(got, run_rows(reference, rows_for(reference, zoo, [pick]))[0])
    batches = engine.executor.metrics.batch_size.collect()[0].samples
    count = next(s.value for s in batches if s.name.endswith("_count"))
    assert count < len(picks)  # requests shared forwards


def test_unservable_adapters_are_refused_by_name(tiny_backbone_dir, tiny_loaded):
    model, _, info = tiny_loaded
    engine = make_engine(tiny_backbone_dir, max_adapter_rank=4, max_labels=3)
    from server.errors import UnservableAdapterError
    with pytest.raises(UnservableAdapterError, match="rank 8"):
        check_servable(make_adapter(model, info, r=8), engine.limits)
    with pytest.raises(UnservableAdapterError, match="4 labels"):
        check_servable(make_adapter(model, info, labels=("a", "b", "c", "d")), engine.limits)
    check_servable(make_adapter(model, info, r=4, labels=("a", "b", "c")), engine.limits)
    half = dataclasses.replace(engine.limits, max_value=65504.0)  # a float16 pool's largest finite value
    big = make_adapter(model, info, r=4, labels=("a", "b", "c"))
    big.tensors["head.weight"][0, 0] = -1e5
    with pytest.raises(UnservableAdapterError, match=r"head.weight reaches 1e\+05 .* up to 6.55e\+04") as refused:
        check_servable(big, half)
    assert refused.value.field == "head.weight"
    lora = make_adapter(model, info, kind="lora", r=4, labels=("a", "b", "c"))  # scaling alpha / r = 8
    b_key = next(k for k in lora.tensors if k.endswith(".B"))
    lora.tensors[b_key][0, 0] = 1e4  # in range as stored, 8e4 once scaled
    with pytest.raises(UnservableAdapterError, match=rf"{b_key} x lora_scaling reaches 8e\+04") as refused:
        check_servable(lora, half)
    assert refused.value.field == b_key
    lora.tensors[b_key][0, 0] = float("nan")
    with pytest.raises(UnservableAdapterError, match="reaches nan"):
        check_servable(lora, engine.limits)


def test_pinned_adapter_survives_eviction_pressure(tiny_backbone_dir, zoo):
    engine = make_engine(tiny_backbone_dir, device_pool_mb=0.07, max_adapter_rank=8, max_labels=5)
    pinned = serve(zoo["adapter_r2"], "adapter_r2")
    engine.executor.pin(pinned)
    others = [n for n in sorted(zoo) if n != "adapter_r2"]
    for name in others * 2:  # far more distinct tasks than free slots
        run_rows(engine, rows_for(engine, zoo, [(name, "fine" if name != "pair" else PAIRS[0])]))
    pool = engine.executor.pool
    assert pinned.key in pool.resident
    assert engine.executor.metrics.evictions.labels("device")._value.get() >= len(others) - pool.num_slots


def test_queue_full_is_refused_at_once(tiny_backbone_dir, zoo):
    from server.errors import OverloadedError
    engine = make_engine(tiny_backbone_dir, max_queue_requests=1, max_wait_ms=0)

    async def main():
        await engine.start()
        engine.batcher._loop_task.cancel()  # no batching: the queue can only fill
        adapter = serve(zoo["adapter_r2"], "adapter_r2")
        first = asyncio.create_task(engine.predict(adapter, [TextInput(text="one")], "a"))
        while engine.batcher.queue_depth() < 1:  # tokenised in a thread, then queued
            await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError) as info:
            await engine.predict(adapter, [TextInput(text="two")], "b")
        assert info.value.headers["Retry-After"]
        await engine.stop()
        with pytest.raises(Exception, match="shutting down"):
            await first  # queued requests are failed at stop, never left hanging

    asyncio.run(main())


def test_length_groups_partition_rows_and_never_cost_more_than_one_batch():
    from server.executor import length_groups
    rng = random.Random(0)
    for n in (1, 2, 7, 64, 300):
        lengths = [rng.randint(3, 120) for _ in range(n)]
        groups = length_groups(lengths, 64)
        assert sorted(i for g in groups for i in g) == list(range(n))
        cost = sum(len(g) * max(lengths[i] for i in g) + 64 for g in groups)
        assert cost <= n * max(lengths) + 64
        assert length_groups(lengths, 1 << 20) == [sorted(range(n), key=lengths.__getitem__)]


def test_the_batch_plan_never_outlives_its_forward(tiny_backbone_dir, zoo):
    """Sites see a plan only inside `pool.batch(...)`, even when the forward raises."""
    engine = make_engine(tiny_backbone_dir)
    pool = engine.executor.pool
    run_rows(engine, rows_for(engine, zoo, [("adapter_r2", TEXTS[0]), ("lora_r4", TEXTS[1])]))
    assert pool.current_plan() is None
    with pytest.raises(RuntimeError, match="inside"), pool.batch([0, 1]) as plan:
        assert pool.current_plan() is plan
        raise RuntimeError("a forward failing inside the scope")
    assert pool.current_plan() is None
