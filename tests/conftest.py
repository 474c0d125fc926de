"""Shared fixtures: tiny random backbones of every supported architecture (fast on CPU)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_backbone(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A small random-init Hugging Face base model of `model_type` (bert, roberta, distilbert, gpt2)."""
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel, GPT2Config, GPT2Model
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(seed)
    if model_type == "bert":
        model = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=64))
    elif model_type == "roberta":
        model = RobertaModel(RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=37, max_position_embeddings=70, pad_token_id=1))
    elif model_type == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=37,
                                                 max_position_embeddings=64))
    elif model_type == "gpt2":
        model = GPT2Model(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                     bos_token_id=0, eos_token_id=0))
    else:
        raise ValueError(model_type)
    return model.eval()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
