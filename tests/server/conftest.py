"""Fixtures for server tests: one tiny saved backbone per session, and its loaded form."""
from __future__ import annotations

from pathlib import Path

import pytest

from adamix import load_backbone
from tests.server.helpers import save_tiny_backbone


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_backbone_dir):
    """(model, tokenizer, info) of the tiny backbone; treat as read-only (make_adapter deep-copies it)."""
    return load_backbone(tiny_backbone_dir)
