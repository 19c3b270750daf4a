"""Config lists as NNI writes them: op types and names, exclusions kept at full width, global
ranking with a per-layer cap, uniform widths across repeated layers, one-line errors."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from helpers import assert_contract, masked_idx
from slimc import zoo
from slimc.errors import ConfigError
from slimc.prune import ConfigList, Pruner, prune, to_layout


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return zoo.randomize_bn(VGGish()).eval(), (torch.randn(2, 3, 8, 8),)


def _widths(res) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in res.module.named_parameters() if n.endswith("weight")}


def test_op_types_names_and_exclusion(vgg):
    m, x = vgg
    config = [{"sparsity": 0.5, "op_types": ["Conv2d"]},
              {"op_names": ["features.0"], "sparsity": 0.25},
              {"exclude": True, "op_names": ["features.6"]}]
    masks = prune(m, x, "l1", config, round_to=1)
    res = assert_contract(m, masks, x)
    w = _widths(res)
    assert w["features.0.weight"] == (12, 3, 3, 3)  # its own sparsity
    assert w["features.3.weight"][0] == 32  # it feeds the excluded conv: kept at full width
    assert w["features.6.weight"] == (32, 32, 3, 3)  # excluded: full width in every dim
    assert w["classifier.0.weight"] == (64, 128)  # Linear: not configured
    assert w["classifier.2.weight"] == (10, 64)  # the output layer


def test_output_layer_is_never_pruned_and_linears_follow_op_types(vgg):
    m, x = vgg
    res = assert_contract(m, prune(m, x, "l1", [{"sparsity": 0.5, "op_types": ["Linear"]}], round_to=1), x)
    w = _widths(res)
    assert w["classifier.0.weight"] == (32, 128) and w["classifier.2.weight"] == (10, 32)
    assert w["features.6.weight"] == (32, 32, 3, 3)


def test_yaml_and_json_files_and_text(vgg, tmp_path):
    m, x = vgg
    y = tmp_path / "c.yaml"
    y.write_text("- sparsity: 0.5\n  op_types: [Conv2d]\n- exclude: true\n  op_names: [classifier.0]\n")
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"config_list": [{"sparsity": 0.5, "op_types": ["Conv2d"]},
                                              {"exclude": True, "op_names": ["classifier.0"]}]}))
    a, b = prune(m, x, "l1", str(y), round_to=1), prune(m, x, "l1", j, round_to=1)
    c = prune(m, x, "l1", "[{sparsity: 0.5, op_types: [Conv2d]}, {exclude: true, op_names: [classifier.0]}]", round_to=1)
    assert a.keys() == b.keys() == c.keys() and all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert masked_idx(a["features.6.weight"], 0) == set()  # its channels feed classifier.0 (excluded)
    assert masked_idx(a["features.6.weight"], 1)  # its input columns go with features.3's filters


@pytest.mark.parametrize("config,match", [
    ([{"sparsity": 0.5, "op_type": ["Conv2d"]}], "unknown key 'op_type' \\(did you mean 'op_types'\\?\\)"),
    ([{"sparsity": 0.5, "op_names": ["feature.0"]}], "names no module of the model \\(did you mean 'features.0'\\?\\)"),
    ([{"sparsity": 0.5, "op_types": ["Conv3d"]}], "entry 0 matches no module"),
    ([{"sparsity": 1.5}], "'sparsity' must be a number in \\[0, 1\\)"),
    ([{"op_types": ["Conv2d"]}], "sets no sparsity"),
    ([], "non-empty list"),
    ("nope.yaml", "config file 'nope.yaml' does not exist"),
])
def test_config_errors_are_one_line(vgg, config, match):
    m, x = vgg
    with pytest.raises(ConfigError, match=match) as e:
        prune(m, x, "l1", config)
    assert "\n" not in str(e.value)


def test_last_matching_entry_wins():
    cl = ConfigList.parse([{"sparsity": 0.5}, {"sparsity": 0.2, "op_names": ["a"]}, {"exclude": True, "op_types": ["ReLU"]}])
    assert cl.winner("a", nn.Linear(2, 2)).sparsity == 0.2
    assert cl.winner("b", nn.Linear(2, 2)).sparsity == 0.5
    assert cl.winner("a", nn.ReLU()).exclude
    assert ConfigList.parse([{"sparsity": 0.3, "op_types": ["default"]}]).winner("x", nn.Conv2d(1, 1, 1)).sparsity == 0.3


def test_global_ranking_with_cap():
    m, x = zoo.build("resnet_tiny"), zoo.example_inputs("resnet_tiny")
    layer = Pruner(m, x, "l1", round_to=1, ratio=0.5).prune()
    glob = Pruner(m, x, "l1", [{"total_sparsity": 0.5, "max_sparsity_per_layer": 0.6}], round_to=1).prune()
    assert all(abs(s - 0.5) < 0.05 for s in layer.sparsity.values())
    assert max(glob.sparsity.values()) <= 0.6 and len(set(round(s, 2) for s in glob.sparsity.values())) > 1
    sizes = {f.name: len(f) for f in Pruner(m, x).families}
    pruned_units = sum(round(s * sizes[n]) for n, s in glob.sparsity.items())
    assert abs(pruned_units - 0.5 * sum(sizes.values())) <= 1


@pytest.mark.parametrize("name", ["gpt_tiny", "llama_tiny"])
def test_uniform_gives_repeated_blocks_one_width(name):
    m, x = zoo.build(name), zoo.example_inputs(name)
    p = Pruner(m, x, "l1", round_to=1, ratio=0.5, ranking="global", uniform=True)
    res = assert_contract(m, p.masks(), x)
    assert res.report["kept"] == []
    by_pattern: dict[str, set] = {}
    for f in p.families:
        by_pattern.setdefault(f.pattern, set()).add(tuple(res.plan.new_size(("p", f"{s}.weight", 0)) for s in f.sources
                                                          if ("p", f"{s}.weight", 0) in res.plan.dg.size))
    assert all(len(v) == 1 for v in by_pattern.values()), by_pattern
    if name == "llama_tiny":  # GQA: a key/value head goes with both of its query heads
        q = res.module.get_parameter("model.layers.0.self_attn.q_proj.weight").shape[0]
        k = res.module.get_parameter("model.layers.0.self_attn.k_proj.weight").shape[0]
        assert q == 2 * k


def test_nni_layout_round_trips(vgg, tmp_path):
    from slimc.masks import load_masks, normalize, save_masks

    m, x = vgg
    flat = prune(m, x, "l1", round_to=1, ratio=0.5)
    nni = to_layout(flat, "nni")
    assert set(nni["features.0"]) == {"weight", "bias"}
    save_masks(nni, tmp_path / "m.pth")
    back = normalize(load_masks(tmp_path / "m.pth"), m).masks
    assert back.keys() == flat.keys()  # compact on load: equal entry by entry once broadcast
    assert all(torch.equal(*torch.broadcast_tensors(back[k], flat[k].bool())) for k in flat)
    assert masked_idx(back["features.1.weight"], 0) == masked_idx(flat["features.0.weight"], 0)
    with pytest.raises(ConfigError, match="flat or nni"):
        to_layout(flat, "onnx")
