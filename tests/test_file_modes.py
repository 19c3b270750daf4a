"""Outputs follow the user's umask like any file they write (mkstemp makes 0600, mkdtemp 0700)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from slimc.atomic import atomic_dir, atomic_path, write_text


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_file_and_folder_follow_the_umask(tmp_path, umask):
    write_text(tmp_path / "a.json", "{}")
    assert _mode(tmp_path / "a.json") == 0o666 & ~umask
    with atomic_dir(tmp_path / "hf") as d:
        (d / "sub").mkdir()
        with atomic_path(d / "model.safetensors") as f:
            Path(f).write_bytes(b"x")
        fd = os.open(d / "sub" / "private.bin", os.O_CREAT | os.O_WRONLY, 0o600)  # a library writing 0600
        os.close(fd)
    assert _mode(tmp_path / "hf") == 0o777 & ~umask
    assert _mode(tmp_path / "hf" / "sub") == 0o777 & ~umask
    assert _mode(tmp_path / "hf" / "model.safetensors") == 0o666 & ~umask
    assert _mode(tmp_path / "hf" / "sub" / "private.bin") == 0o666 & ~umask


def test_a_saved_hf_model_follows_the_umask(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    import slimc

    old = os.umask(0o022)
    try:
        torch.manual_seed(0)
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=32)).eval()
        masks = {"model.layers.0.mlp.down_proj.weight": torch.cat([torch.ones(1, 32), torch.zeros(1, 32)], 1)}
        res = slimc.compile(m, masks, {"input_ids": torch.randint(0, 64, (2, 8))})
        res.save(tmp_path / "out", onnx=False)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*")]
    assert any(p.name == "hf" for p in files)
    for p in [tmp_path / "out", *files]:
        want = 0o755 if p.is_dir() else 0o644
        assert _mode(p) == want, f"{p.relative_to(tmp_path)} is {oct(_mode(p))}, not {oct(want)}"
