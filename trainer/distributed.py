"""Data-parallel training across processes (`torchrun`): gloo on CPU, NCCL on GPU.

Every rank holds the full model and draws the same routes (the Router is seeded identically and
consumed in the same order); each takes its slice of every global batch; gradients are averaged with
an all-reduce. Route identity is asserted every step, so a divergence fails loudly instead of silently
training M different mixtures.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if world_size <= 1:
        return DistContext(device=torch.device(device or ("cuda" if want_cuda else "cpu")))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    if want_cuda:
        torch.cuda.set_device(local_rank)
    return DistContext(rank, world_size, torch.device(f"cuda:{local_rank}" if want_cuda else "cpu"))


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: list[int], ctx: DistContext) -> list[int]:
    """This rank's slice of a global batch."""
    return indices[ctx.rank::ctx.world_size]


def all_reduce_gradients(model: nn.Module, ctx: DistContext) -> None:
    """Average the gradients of trainable parameters over ranks (one flat buffer, one all-reduce)."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # (N,) every gradient, in parameter order
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _digest(tensor: torch.Tensor) -> int:
    data = tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:7], "little")  # fits an int64


def assert_same_across_ranks(tensor: torch.Tensor, what: str, ctx: DistContext) -> None:
    """Raise on every rank if `tensor` (e.g. the router's generator state) differs between ranks."""
    if not ctx.enabled:
        return
    mine = torch.tensor([_digest(tensor)], dtype=torch.int64, device=ctx.device)
    gathered = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, mine)
    values = [int(g.item()) for g in gathered]
    if len(set(values)) != 1:
        raise RuntimeError(f"data-parallel ranks diverged: {what} differs between ranks (digests {values}); "
                           "every rank must draw identical routes")

