"""Trainer fixtures: the tiny saved BERT (MiniLM's tokenizer) and the GLUE RTE directory."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, save_tiny_backbone

RTE_DIR = SHARED_DATA / "glue" / "RTE"


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def rte_dir() -> Path:
    if not (RTE_DIR / "train.tsv").is_file():
        pytest.skip(f"GLUE RTE not found at {RTE_DIR}")
    return RTE_DIR
