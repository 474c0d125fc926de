"""Trainer fixtures: a tiny random BERT saved as a local model directory with the default MiniLM tokenizer."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED_DATA

RTE_DIR = SHARED_DATA / "glue" / "RTE"


def save_tiny_bert(directory: Path, seed: int = 0) -> Path:
    """A 2-layer d=32 BERT whose vocabulary is MiniLM's, so the real tokenizer drives it."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from adamix import default_backbone_path

    tokenizer = AutoTokenizer.from_pretrained(default_backbone_path(), local_files_only=True)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=37, max_position_embeddings=128))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def rte_dir() -> Path:
    if not (RTE_DIR / "train.tsv").is_file():
        pytest.skip(f"GLUE RTE not found at {RTE_DIR}")
    return RTE_DIR
