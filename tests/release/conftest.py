"""Fixtures shared by the release tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A minimal checkpoint directory: a Llama config and a placeholder weights file."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "llama"}')
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 64)
    return ckpt
