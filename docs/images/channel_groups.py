"""Draw docs/images/channel_groups.png: the demo model's layers, coloured by channel family,
from the slot graph `slimc inspect --graph` writes.

    .venv/bin/python docs/images/channel_groups.py

Each box is a value of the traced graph (a layer's output); its colour is the family of its
channel dim — the channels created by the same source layers, which go or stay together;
grey: no prunable family (the input, the logits). Edges follow the couplings between them.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().with_suffix(".png")


def slot_graph(model: str, masks: str) -> nx.MultiDiGraph:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.graphml"
        subprocess.run([sys.executable, "-m", "slimc.cli", "inspect", model, "--masks", masks, "--graph", str(path)],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        return nx.read_graphml(path)


def layer_graph(g: nx.MultiDiGraph) -> tuple[nx.DiGraph, dict[str, str]]:
    """Values (fx nodes) as nodes, an edge where a slot of one is coupled to a slot of the other;
    each value's family: that of its channel dim (dim 1)."""
    def value(slot: str) -> str | None:
        kind, *name, _dim = slot.split(":")
        return ":".join(name) if kind == "v" else None

    lg = nx.DiGraph()
    fam: dict[str, str] = {}
    for s, attrs in g.nodes(data=True):
        v = value(s)
        if v is not None:
            lg.add_node(v)
            if s.endswith(":1") and attrs.get("families"):
                fam[v] = attrs["families"].split(",")[0]
    for a, b in g.edges():
        va, vb = value(a), value(b)
        if va and vb and va != vb:
            lg.add_edge(va, vb)
    return lg, fam


def draw(lg: nx.DiGraph, fam: dict[str, str]) -> None:
    order = list(nx.topological_sort(lg)) if nx.is_directed_acyclic_graph(lg) else list(lg)
    depth: dict[str, int] = {}
    for v in order:
        depth[v] = max((depth[u] + 1 for u in lg.predecessors(v) if u in depth), default=0)
    rows: dict[int, list[str]] = {}
    for v in order:
        rows.setdefault(depth[v], []).append(v)
    pos = {v: (d, -i + (len(vs) - 1) / 2) for d, vs in rows.items() for i, v in enumerate(vs)}
    families = sorted(set(fam.values()), key=int)
    cmap = plt.get_cmap("tab20")
    colour = {f: cmap(i % 20) for i, f in enumerate(families)}
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.55), 4.2), dpi=110)
    nx.draw_networkx_edges(lg, pos, ax=ax, arrows=True, arrowsize=6, width=0.6, edge_color="#999999",
                           node_size=260)
    nx.draw_networkx_nodes(lg, pos, ax=ax, node_size=260, node_shape="s", linewidths=0.4, edgecolors="#333333",
                           node_color=[colour.get(fam.get(v), (0.85, 0.85, 0.85, 1.0)) for v in lg])
    nx.draw_networkx_labels(lg, pos, ax=ax, font_size=4.5,
                            labels={v: v.replace("_", "_\n", 1) if len(v) > 10 else v for v in lg})
    ax.set_title(f"examples/demo/model.py: {len(lg)} values, {len(families)} channel families "
                 "(one colour each; grey: none)", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT)


def main() -> None:
    lg, fam = layer_graph(slot_graph("examples/demo/model.py", "examples/demo/masks.pth"))
    draw(lg, fam)
    print(OUT.relative_to(ROOT))


if __name__ == "__main__":
    main()
