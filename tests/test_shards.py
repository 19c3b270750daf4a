"""Plans from shapes alone (meta device) applied to safetensors shards, tensor by tensor."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import slimc
from slimc import zoo
from slimc.errors import LoadError
from slimc.prune import group_masks
from slimc.shards import empty_weights, load_slim, slice_checkpoint


def _shard(model, folder, n=2):
    """The model's state dict in ``n`` safetensors shards with an HF-style index."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    # tied weights are stored once, as HF does
    seen, names = {}, []
    for k, v in model.state_dict(keep_vars=True).items():
        if id(v) in seen:
            del sd[k]
        else:
            seen[id(v)] = k
            names.append(k)
    folder.mkdir()
    wmap = {}
    for i in range(n):
        part = {k: sd[k] for k in names[i::n]}
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(part, str(folder / fname))
        wmap.update({k: fname for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    return folder


@pytest.mark.parametrize("name", ["resnet_tiny", "gpt_tiny", "llama_tiny"])
def test_meta_plan_plus_sliced_shards_equals_compile(name, tmp_path):
    model, x = zoo.build(name), zoo.example_inputs(name)
    masks = group_masks(model, x, 0.5)
    ref = slimc.compile(model, masks, x)
    with empty_weights():
        meta = zoo.ZOO[name].build()
    assert all(p.is_meta for p in meta.parameters())
    meta.train(model.training)
    res = slimc.compile(meta, masks, x)  # cpu inputs are moved to meta
    assert "verify" not in res.report and any("meta device" in n for n in res.report["notes"])
    assert res.report["params"] == ref.report["params"]
    out = tmp_path / "out"
    paths = res.save(out, weights=_shard(model, tmp_path / "ckpt"))
    assert "slim.onnx" not in paths and (out / "model.safetensors.index.json").is_file()
    assert res.report["weights"]["bytes_after"] < res.report["weights"]["bytes_before"]
    slim = load_slim(out)
    x3 = zoo.example_inputs(name, batch=3, seed=5)
    assert torch.allclose(slim(*x3), ref.module(*x3), atol=1e-6, rtol=0)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    model, x = zoo.build("resnet_tiny"), zoo.example_inputs("resnet_tiny")
    res = slimc.compile(model, group_masks(model, x, 0.5), x)
    other = zoo.build("vgg11_small")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    first = next(iter(model.state_dict()))
    save_file({first: torch.zeros(3, 3)}, str(ckpt / "model.safetensors"))
    with pytest.raises(LoadError, match="does not belong to this model"):
        slice_checkpoint(res.plan, ckpt, tmp_path / "out")
    with pytest.raises(LoadError, match="no safetensors checkpoint"):
        slice_checkpoint(res.plan, tmp_path / "nothing.safetensors", tmp_path / "out")
    del other


def test_cli_compile_with_weights_on_a_meta_model(tmp_path):
    """model.py builds its parameters on the meta device; --weights slices the checkpoint."""
    from slimc.cli import main

    model, x = zoo.build("gpt_tiny"), zoo.example_inputs("gpt_tiny")
    ckpt = _shard(model, tmp_path / "ckpt")
    torch.save(group_masks(model, x, 0.5), tmp_path / "masks.pth")
    (tmp_path / "model.py").write_text(
        "import torch\nfrom slimc import zoo\nfrom slimc.shards import empty_weights\n"
        "with empty_weights():\n    model = zoo.ZOO['gpt_tiny'].build().eval()\n"
        "example_inputs = zoo.example_inputs('gpt_tiny')\n")
    out = tmp_path / "out"
    rc = main(["compile", str(tmp_path / "model.py"), "--masks", str(tmp_path / "masks.pth"), "-o", str(out),
               "--weights", str(ckpt)])
    assert rc == 0 and len(list(out.glob("*.safetensors"))) == 2
    slim = load_slim(out)
    ref = slimc.compile(model, torch.load(tmp_path / "masks.pth"), x).module
    assert torch.allclose(slim(*x), ref(*x), atol=1e-6, rtol=0)
    assert main(["bench", str(out), "--batch", "1", "--runtimes", "torch", "--min-time", "0.01",
                 "-o", str(tmp_path / "bench")]) == 0


def test_hf_llama_planned_on_meta_loads_as_a_graph_from_its_shards(tmp_path):
    """An HF LLaMA built on the meta device: the export trace names the meta device where the
    model moves its rotary inv_freq to the input's device; slim.pt names the CPU instead, so
    the graph with the sliced shards runs, at other batch sizes and lengths."""
    transformers = pytest.importorskip("transformers")
    from helpers import run_eval, user_masked

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    real = transformers.LlamaForCausalLM(config).eval()
    real.save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
    x = {"input_ids": torch.randint(0, 64, (1, 8))}
    masks = group_masks(real, x, 0.5)
    with empty_weights():
        meta = transformers.LlamaForCausalLM(config).eval()
    res = slimc.compile(meta, masks, x)
    res.save(tmp_path / "out", weights=tmp_path / "ckpt")
    graph = load_slim(tmp_path / "out")
    ref = user_masked(real, masks)
    for shape in [(3, 10), (2, 5)]:
        ids = torch.randint(0, 64, shape)
        got, want = run_eval(graph, (ids,)), run_eval(ref, (ids,))
        assert (got[0] - want[0]).abs().max() < 1e-5, shape
