"""The user's class for the forms libraries write (issue #21, points 4–6), end to end as a
user runs it (:mod:`families`): ``slimc prune`` → ``slimc compile`` → ``slimc.load`` in a fresh
process, compared with the masked original at three shapes (another batch, and another image
size or length where the model allows), the graph and ``slim.onnx`` too, greedy ``generate()``
for OLMo. HF ConvNeXt (channels-first norms) and OLMo (non-affine float32 norms) run by
default; torchvision's ViT and EncoderBlocks (``nn.MultiheadAttention``), timm's LeViT and
EfficientFormer, the official LeViT, HF's LeViT (attention-bias tables), torchvision's and
timm's ConvNeXt (``LayerNorm2d``) are marked slow. Unit checks: :mod:`test_user_class_forms`.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from families import run_family

TESTS = str(Path(__file__).parent)


def _images(*shapes):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(*s, generator=g),) for s in shapes]


def _ids(b, n, seed):
    return {"input_ids": torch.randint(0, 128, (b, n), generator=torch.Generator().manual_seed(seed))}


HF_CONVNEXT = """
import torch, transformers as T
torch.manual_seed(0)
model = T.ConvNextForImageClassification(T.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1],
                                                          num_labels=10)).eval()
example_inputs = (torch.randn(2, 3, 64, 64),)
"""

HF_OLMO = """
import torch, transformers as T
torch.manual_seed(0)
model = T.OlmoForCausalLM(T.OlmoConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=64)).eval()
example_inputs = {"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}
"""


def _end_to_end(tmp_path, source, shapes, **kw):
    run = run_family(tmp_path, source, shapes, **kw)
    run.assert_exact()
    um = run.report["user_model"]
    assert um["built"] and run.report["params"]["after"] < run.report["params"]["before"]
    return run


def test_hf_convnext_channels_first_norms_end_to_end(tmp_path):
    """HF ConvNeXt: ``ConvNextLayerNorm(data_format="channels_first")`` (permute → layer norm →
    permute) in the embeddings and every downsampling layer. (ConvNextConfig can say none of
    these widths — its stage widths run through LayerNorms — so the default prune keeps them;
    --free-widths prunes them and slimc.load rebuilds the class.)"""
    pytest.importorskip("transformers")
    run = _end_to_end(tmp_path, HF_CONVNEXT, _images((2, 3, 64, 64), (3, 3, 96, 96), (1, 3, 32, 32)),
                      prune=("--criterion", "l1", "--ratio", "0.3", "--round-to", "1", "--free-widths"))
    notes = run.report["user_model"]["notes"]
    assert any(n.startswith("convnext.embeddings.layernorm: ConvNextLayerNorm") for n in notes), notes


def test_hf_olmo_non_affine_norms_end_to_end(tmp_path):
    """OLMo: ``OlmoLayerNorm`` has no weight and computes in float32; the hidden size shrinks
    through it, ``generate()`` gives the masked model's tokens."""
    pytest.importorskip("transformers")
    run = _end_to_end(tmp_path, HF_OLMO, [_ids(2, 12, 1), _ids(3, 20, 2), _ids(1, 5, 3)],
                      prompt=_ids(1, 5, 4)["input_ids"],  # (the hidden size: a width OlmoConfig cannot say)
                      prune=("--criterion", "l1", "--ratio", "0.3", "--round-to", "1", "--free-widths"))
    assert any("OlmoLayerNorm over" in n for n in run.report["user_model"]["notes"])
    assert run.check["generate"]["equal"]


PATTERN = """
import sys; sys.path.insert(0, {tests!r})
import torch
from torch import nn
{imports}
torch.manual_seed(0)
model = {build}
with torch.no_grad():
    for name, t in model.named_parameters():
        if "attention_biases" in name:
            t.normal_()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1); m.running_var.uniform_(0.5, 1.5); m.weight.uniform_(0.5, 1.5)
model.train(); model.eval()
example_inputs = ({example},)
"""

SLOW_FAMILIES = {
    "torchvision ViT (nn.MultiheadAttention)": (
        "from patterns.vit_mha import VisionTransformer",
        "VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, "
        "num_classes=10)", "torch.randn(2, 3, 32, 32)", [(2, 3, 32, 32), (3, 3, 32, 32), (1, 3, 32, 32)]),
    "torchvision EncoderBlocks (nn.MultiheadAttention, any length)": (
        "from patterns.vit_mha import TokenEncoder", "TokenEncoder()", "torch.randn(2, 12, 16)",
        [(2, 12, 16), (3, 20, 16), (1, 5, 16)]),
    "timm LeViT": ("from patterns.attention_biases import Levit", "Levit(img_size=32)", "torch.randn(2, 3, 32, 32)",
                   [(2, 3, 32, 32), (3, 3, 32, 32), (1, 3, 32, 32)]),
    "timm EfficientFormer": ("from patterns.attention_biases import EfficientFormer", "EfficientFormer(img_size=32)",
                             "torch.randn(2, 3, 32, 32)", [(2, 3, 32, 32), (3, 3, 32, 32), (1, 3, 32, 32)]),
    "official LeViT (self.ab)": ("from patterns.attention_biases import LevitOfficial", "LevitOfficial(img_size=32)",
                                 "torch.randn(2, 3, 32, 32)", [(2, 3, 32, 32), (3, 3, 32, 32), (1, 3, 32, 32)]),
    "torchvision ConvNeXt (LayerNorm2d)": (
        "from patterns.norm_forms import TorchvisionConvNeXt", "TorchvisionConvNeXt()", "torch.randn(2, 3, 32, 32)",
        [(2, 3, 32, 32), (3, 3, 48, 48), (1, 3, 16, 16)]),
    "timm ConvNeXt conv_mlp (LayerNorm2d)": (
        "from patterns.norm_forms import ConvNeXt", "ConvNeXt(conv_mlp=True)", "torch.randn(2, 3, 32, 32)",
        [(2, 3, 32, 32), (3, 3, 48, 48), (1, 3, 16, 16)]),
    "HF LeViT": ("import transformers as T",
                 "T.LevitForImageClassification(T.LevitConfig(image_size=64, hidden_sizes=[32, 48, 64], "
                 "num_attention_heads=[2, 3, 4], depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=10))",
                 "torch.randn(2, 3, 64, 64)", [(2, 3, 64, 64), (3, 3, 64, 64), (1, 3, 64, 64)]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_FAMILIES))
def test_family_end_to_end(name, tmp_path):
    imports, build, example, shapes = SLOW_FAMILIES[name]
    if "transformers" in imports:
        pytest.importorskip("transformers")
    source = PATTERN.format(tests=TESTS, imports=imports, build=build, example=example)
    # an HF config says one width per stage (LevitConfig): the per-layer widths it checks need --free-widths
    free = ("--free-widths",) if "transformers" in imports else ()
    _end_to_end(tmp_path, source, _images(*shapes),
                prune=("--criterion", "l1", "--ratio", "0.5", "--round-to", "1", *free))
