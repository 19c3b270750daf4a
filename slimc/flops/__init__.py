"""FLOPs: read off a traced graph's shapes (:mod:`slimc.flops.graph`, what ``compile``
reports, nothing runs) and the ``slimc flops`` per-layer report (:mod:`slimc.flops.report`)."""
from slimc.flops.graph import FORMULAS, dg_flops, graph_flops
from slimc.flops.report import flops_report, layer_costs, render_flops

__all__ = ["FORMULAS", "dg_flops", "flops_report", "graph_flops", "layer_costs", "render_flops"]
