"""The pool's adapter site against the adapter written out by hand, on both paths (one slot; gathered per row)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from server.adapter_pool import AdapterPool, SiteSpec

D_IN, D, R = 12, 8, 3


def by_hand(base: nn.Module, x: torch.Tensor, down_t, down_b, up) -> torch.Tensor:
    """h + up(gelu(down(h))), h = base(x): the adapter of ADAMIX.md with the pool's stored layout."""
    h = base(x)
    return h + F.gelu(h @ down_t + down_b) @ up[1:] + up[0]


@pytest.mark.parametrize("layer", ["linear", "linear-no-bias", "conv1d"])
def test_adapter_site_equals_the_adapter_by_hand_on_both_paths(layer):
    torch.manual_seed(0)
    base = {"linear": lambda: nn.Linear(D_IN, D), "linear-no-bias": lambda: nn.Linear(D_IN, D, bias=False),
            "conv1d": lambda: Conv1D(D, D_IN)}[layer]()
    if layer == "conv1d":
        nn.init.normal_(base.bias)  # Conv1D starts with a zero bias
    spec = SiteSpec("site", "adapter", D_IN, D)
    pool = AdapterPool({"site": spec}, hidden=D, slots=3, max_rank=R + 1, max_labels=2, device=torch.device("cpu"),
                       dtype=torch.float32)
    down_t, down_b, up = pool._site_weights("site")
    for slot in (0, 2):  # rank R in a pool of rank R + 1: the last column stays zero
        down_t[slot, :, :R] = torch.randn(D, R)
        down_b[slot, :R] = torch.randn(R)
        up[slot, :1 + R] = torch.randn(1 + R, D)
        pool.slot_ranks[slot] = {"site": R}
    x = torch.randn(2, 5, D_IN)
    want = {slot: by_hand(base, x, down_t[slot], down_b[slot], up[slot]) for slot in (0, 2)}  # (2, 5, D)
    with torch.no_grad():
        with pool.batch([2, 2]) as plan:
            assert plan.single == 2
            single = pool.site_forward(spec, plan, x, base(x))
        with pool.batch([2, 0]) as plan:
            assert plan.single is None
            mixed = pool.site_forward(spec, plan, x, base(x))
    assert single.shape == x.shape[:-1] + (D,)
    torch.testing.assert_close(single, want[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[0], want[2][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], want[0][1], rtol=1e-5, atol=1e-5)


def test_a_reused_slot_holds_exactly_what_a_fresh_slot_would(tiny_loaded):
    """Clearing zeroes only what a slot held (its ranks' columns, its head's rows): after bigger adapters of other
    shapes and sites, a slot written again equals the same adapter written into an untouched pool."""
    from adamix.model import backbone_of
    from dataclasses import replace

    from server.adapter_pool import pool_site_specs
    from server.served import AdapterKey
    from tests.server.helpers import make_adapter, serve

    model, _, info = tiny_loaded
    base = backbone_of(model)
    specs = pool_site_specs(base, info.model_type, info.num_layers)
    big = [serve(make_adapter(base, info, r=6, placement="both", labels=tuple("abcde"), seed=1), "big"),
           serve(make_adapter(base, info, kind="lora", r=5, targets=("query", "key", "value"), seed=2), "lora")]
    small = serve(make_adapter(base, info, r=2, placement="ffn", seed=3), "small")

    def pool():
        return AdapterPool(specs, info.hidden_size, slots=2, max_rank=8, max_labels=6, device=torch.device("cpu"),
                           dtype=torch.float32)

    fresh, reused = pool(), pool()
    fresh.acquire([small])
    reused.acquire(big)  # two slots: the big adapter's and the LoRA's
    reused.acquire([small])  # evicts the big adapter: written over its larger ranks, head and sites
    reused.release(big[1].key)  # the LoRA's slot, cleared by release, then reused
    reused.acquire([replace(small, key=AdapterKey("small2", "v1"))])
    assert sorted(reused.resident.values()) == [0, 1]
    for slot in (0, 1):
        for name, tensors in reused._weights.items():
            want = fresh._weights.get(name)
            for i, t in enumerate(tensors):
                assert torch.equal(t[slot], want[i][0] if want else torch.zeros_like(t[slot])), (slot, name, i)
        assert torch.equal(fresh.head_w[0], reused.head_w[slot]) and torch.equal(fresh.head_b[0], reused.head_b[slot])
