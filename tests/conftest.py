"""Shared fixtures: the one factory of tiny random backbones (every supported architecture, fast on CPU)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def tiny_backbone(model_type: str, seed: int = 0, vocab_size: int = 99, positions: int = 64,
                  lm_head: bool = False) -> torch.nn.Module:
    """A small random-init Hugging Face model of `model_type` (bert, roberta, distilbert, gpt2): 2 layers, d=32.

    `lm_head`: GPT-2 as GPT2LMHeadModel (what `load_backbone` loads for GPT-2) instead of the bare GPT2Model.
    """
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel, GPT2Config, GPT2LMHeadModel
    from transformers import GPT2Model, RobertaConfig, RobertaModel

    torch.manual_seed(seed)
    v, n = vocab_size, positions
    if model_type == "bert":
        model = BertModel(BertConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=n))
    elif model_type == "roberta":  # RoBERTa's positions start after the padding index
        model = RobertaModel(RobertaConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=37, max_position_embeddings=n + 4, pad_token_id=1))
    elif model_type == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=v, dim=32, n_layers=2, n_heads=2, hidden_dim=37,
                                                 max_position_embeddings=n))
    elif model_type == "gpt2":
        config = GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=2, n_positions=n, bos_token_id=0,
                            eos_token_id=0)
        model = GPT2LMHeadModel(config) if lm_head else GPT2Model(config)
    else:
        raise ValueError(model_type)
    return model.eval()


def save_tiny_backbone(path: Path, seed: int = 0, model_type: str = "bert") -> Path:
    """A tiny backbone with MiniLM's real tokenizer, saved as a Hugging Face directory (vocab 30522, 128 positions)."""
    from adamix import default_backbone_path

    tiny_backbone(model_type, seed, vocab_size=30522, positions=128, lm_head=True).save_pretrained(path)
    source = default_backbone_path()
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_backbone_dir):
    """(model, tokenizer, info) of the saved tiny backbone; treat as read-only (make_adapter deep-copies it)."""
    from adamix import load_backbone

    return load_backbone(tiny_backbone_dir)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
