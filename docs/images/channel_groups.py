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
    each value's family: that of its channel dim (dim 1), unless a barrier holds it (the logits)."""
    def value(slot: str) -> str | None:
        kind, *name, _dim = slot.split(":")
        return ":".join(name) if kind == "v" else None

    lg = nx.DiGraph()
    fam: dict[str, str] = {}
    for s, attrs in g.nodes(data=True):
        v = value(s)
        if v is not None:
            lg.add_node(v)
            if s.endswith(":1") and attrs.get("families") and not attrs.get("barrier"):
                fam[v] = attrs["source"].rsplit(".", 1)[0]  # the family's first source layer
    for a, b in g.edges():
        va, vb = value(a), value(b)
        if va and vb and va != vb:
            lg.add_edge(va, vb)
    return lg, fam


def positions(lg: nx.DiGraph, bands: int = 2) -> dict[str, tuple[float, float]]:
    """Depth (longest path from the input) along x, parallel branches spread along y; the depth
    range folded into ``bands`` rows so the picture stays wide rather than endless."""
    depth: dict[str, int] = {}
    for v in nx.topological_sort(lg):
        depth[v] = max((depth[u] + 1 for u in lg.predecessors(v)), default=0)
    per_band = max(depth.values()) // bands + 1
    cols: dict[int, list[str]] = {}
    for v in lg:
        cols.setdefault(depth[v], []).append(v)
    return {v: (d % per_band, -3.2 * (d // per_band) - i + (len(vs) - 1) / 2)
            for d, vs in cols.items() for i, v in enumerate(vs)}


def draw(lg: nx.DiGraph, fam: dict[str, str]) -> None:
    pos = positions(lg)
    families = list(dict.fromkeys(fam[v] for v in nx.topological_sort(lg) if v in fam))
    cmap = plt.get_cmap("tab20")
    colour = {f: cmap(i % 20) for i, f in enumerate(families)}
    fig, ax = plt.subplots(figsize=(11, 5.2), dpi=130)
    nx.draw_networkx_edges(lg, pos, ax=ax, arrows=True, arrowsize=7, width=0.7, edge_color="#9a9a9a", node_size=520,
                           connectionstyle="arc3,rad=0.08")
    nx.draw_networkx_nodes(lg, pos, ax=ax, node_size=520, node_shape="s", linewidths=0.5, edgecolors="#333333",
                           node_color=[colour.get(fam.get(v), (0.88, 0.88, 0.88, 1.0)) for v in lg])
    nx.draw_networkx_labels(lg, pos, ax=ax, font_size=5.2,
                            labels={v: v.replace("_", "\n", 1) if len(v) > 6 else v for v in lg})
    handles = [plt.Line2D([], [], marker="s", linestyle="", markersize=7, markerfacecolor=colour[f],
                          markeredgecolor="#333333", label=f) for f in families]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.16), ncol=6, fontsize=6.5, frameon=False,
              title="channel families (by their first source layer); grey: none, or held by a barrier (the input, the logits)", title_fontsize=7)
    ax.set_title("examples/demo/model.py, as slimc inspect --graph sees it: each value of the traced graph, "
                 "coloured by the family of its channels", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT, bbox_inches="tight")


def main() -> None:
    lg, fam = layer_graph(slot_graph("examples/demo/model.py", "examples/demo/masks.pth"))
    draw(lg, fam)
    print(OUT.relative_to(ROOT))


if __name__ == "__main__":
    main()
