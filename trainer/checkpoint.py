"""Resumable training checkpoints: safetensors (weights, optimizer moments, RNG states) + JSON; no pickle.

A checkpoint directory holds one file, `state.safetensors`, whose metadata carries the trainer state as
JSON. It is replaced with `atomic_write`, so an interruption at any point leaves a whole checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from adamix.atomic import atomic_write

TENSORS = "state.safetensors"
STATE_KEY = "trainer_state"  # the safetensors metadata key holding the JSON trainer state


@dataclass
class TrainState:
    """Where training stands; with the RNG states and moments it replays the uninterrupted run exactly."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed (the data order is a function of seed, epoch)
    best_score: float | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)  # every evaluation (the JSONL log)
    loss_sum: float = 0.0  # training loss summed since the last evaluation
    loss_count: int = 0


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy `tensors` into the model's trainable parameters: the names must be exactly those, and every shape match."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != set(params):
        raise ValueError(f"{where}: tensors do not match the model's trainable parameters: missing "
                         f"{sorted(set(params) - set(tensors))[:3]}, extra {sorted(set(tensors) - set(params))[:3]}")
    with torch.no_grad():
        for name, value in tensors.items():
            if params[name].shape != value.shape:
                raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}, "
                                 f"the model expects {tuple(params[name].shape)}")
            params[name].copy_(value)


def save_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                    best: dict[str, torch.Tensor] | None, router_state: torch.Tensor | None,
                    run_signature: dict) -> None:
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {f"model/{n}": t for n, t in trainable_state(model).items()}
    for name, tensor in (best or {}).items():
        tensors[f"best/{name}"] = tensor
    opt = optimizer.state_dict()
    for idx, moments in opt["state"].items():
        for key, value in moments.items():
            tensors[f"optim/{idx}/{key}"] = torch.as_tensor(value)
    if router_state is not None:
        tensors["rng/router"] = router_state
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout masks on the GPU
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    meta = {"state": asdict(state), "param_groups": opt["param_groups"], "signature": run_signature}
    data = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                metadata={STATE_KEY: json.dumps(meta, allow_nan=False)})
    atomic_write(directory / TENSORS, data)


def load_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    run_signature: dict) -> tuple[TrainState, dict[str, torch.Tensor] | None, torch.Tensor | None]:
    """Restore model weights, optimizer moments and the global RNG; return (state, best, router state)."""
    directory = Path(directory)
    path = directory / TENSORS
    if not path.is_file():
        raise FileNotFoundError(f"--resume {directory}: no checkpoint there (expected {TENSORS})")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})[STATE_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    diff = {k: (meta["signature"].get(k), v) for k, v in run_signature.items() if meta["signature"].get(k) != v}
    if diff:
        raise ValueError(f"--resume {directory}: the checkpoint was made by a different run; "
                         f"differing settings (checkpoint, now): {diff}")
    weights = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    load_trainable(model, weights, f"--resume {directory}")
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    best = {k.removeprefix("best/"): v for k, v in tensors.items() if k.startswith("best/")} or None
    return TrainState(**meta["state"]), best, tensors.get("rng/router")
