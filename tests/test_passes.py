"""passes/__init__.py: the PIPELINE, and how a pass names its failures."""
from __future__ import annotations

import torch
from torch import nn

from slimc.errors import PlanError
from slimc.passes import PIPELINE, node_error, run_pipeline


def test_pipeline_reads_like_the_algorithm():
    assert [name for name, _ in PIPELINE] == ["slice_params", "patch_constants", "patch_slices", "patch_factories",
                                              "exact_mean", "exact_layernorm", "inline_whole", "drop_dead"]
    assert all(callable(fn) for _, fn in PIPELINE)
    assert callable(run_pipeline)


class View(nn.Module):
    def forward(self, x):
        return x.view(2, 8)


def test_a_pass_error_names_the_node_and_the_users_line():
    from slimc.trace import trace

    gm = trace(View(), (torch.randn(4, 4),), "fx").gm
    node = next(n for n in gm.graph.nodes if n.op == "call_method")
    err = node_error(node, "cannot patch")
    assert isinstance(err, PlanError)
    msg = str(err)
    assert msg.startswith(f"{node.name} (") and "test_passes.py" in msg and "x.view(2, 8)" in msg
    assert msg.endswith(": cannot patch")
    gm(torch.randn(4, 4))
