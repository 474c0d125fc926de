"""Data-parallel training with two CPU processes (gloo): ranks draw identical routes and stay identical."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from adamix import load_backbone
from benchmarks.procs import free_port
from tests.trainer.test_train import TASK, toy_data
from trainer.checkpoint import trainable_state
from trainer.distributed import assert_same_across_ranks, setup, teardown
from trainer.loop import TrainConfig, train
from trainer.methods import adamix_config, build_model


def _worker(rank: int, world_size: int, port: int, backbone_dir: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    ctx = setup("cpu")
    try:
        backbone, tokenizer, _ = load_backbone(backbone_dir)
        model = build_model("adamix", backbone, TASK, adamix_config("adamix", bottleneck=8, seed=0), seed=0)
        result = train(model, toy_data(16, 4), tokenizer,
                       TrainConfig(method="adamix", lr=1e-2, max_steps=3, batch_size=8, progress=False), ctx)
        router = model.adamix_router
        state = {f"param/{k}": v for k, v in trainable_state(model).items()}
        state["router"] = router.get_state()
        state["score"] = torch.tensor([result.best_score])
        # A deliberate divergence (rank 1 draws one extra route) must be caught on every rank.
        if rank == 1:
            router.draw(4)
        try:
            assert_same_across_ranks(router.get_state(), "the router's generator state", ctx)
            state["caught"] = torch.tensor([0])
        except RuntimeError:
            state["caught"] = torch.tensor([1])
        save_file({k: v.contiguous() for k, v in state.items()}, str(Path(out_dir) / f"rank{rank}.safetensors"))
    finally:
        teardown(ctx)


def test_two_ranks_stay_identical(tiny_bert_dir: Path, tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tiny_bert_dir), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert set(rank0) == set(rank1)
    for key in rank0:
        if key != "caught":
            assert torch.equal(rank0[key], rank1[key]), key
    assert rank0["caught"].item() == rank1["caught"].item() == 1
    # the mixture actually trained (each rank saw half of every batch; the all-reduce kept them equal)
    backbone, _, _ = load_backbone(tiny_bert_dir)
    initial = trainable_state(build_model("adamix", backbone, TASK, adamix_config("adamix", bottleneck=8), seed=0))
    assert all(not torch.equal(initial[k.removeprefix("param/")], v) for k, v in rank0.items()
               if k.startswith("param/") and k.endswith("down.0.weight"))
