"""Text tables, human units and the Plan drawing (SVG by hand; PNG through matplotlib)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from archlab.plan import Plan


def human(n: float, unit: str = "", base: int = 1000) -> str:
    """1234567 -> '1.23M'; with base 1024 and unit 'B' -> '1.18 MiB'."""
    prefixes = ["", "K", "M", "G", "T", "P", "E"]
    value, i = float(n), 0
    while abs(value) >= base and i < len(prefixes) - 1:
        value, i = value / base, i + 1
    p = prefixes[i] + ("i" if base == 1024 and i else "")
    text = f"{value:.0f}" if i == 0 else f"{value:.3g}" if value < 100 else f"{value:.0f}"
    sep = " " if unit or (base == 1024) else ""
    return f"{text}{sep}{p}{unit}".strip() if unit else f"{text}{p}"


def table(headers: list[str], rows: list[list], right: set[int] | None = None) -> str:
    """A plain aligned text table; columns in `right` (default: all but the first two)
    are right-aligned."""
    right = right if right is not None else set(range(2, len(headers)))
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


COLORS = {
    "attention": "#e45756",
    "local_attention": "#f58518",
    "rat": "#4c78a8",
    "rnn": "#72b7b2",
    "ssm": "#54a24b",
    "mlp": "#bab0ac",
}


def _label(plan: Plan, node: str) -> str:
    data = plan.graph.nodes[node]
    if data.get("role") != "block":
        return node
    block = plan.blocks[data["index"]]
    params = ", ".join(f"{k}={v}" for k, v in block.summary().items() if k != "backend")
    return f"{block.index}: {block.kind}" + (f" ({params})" if params else "")


def draw_svg(plan: Plan) -> str:
    """The plan's graph as a top-to-bottom SVG: one box per node, residual edges as
    arrows, other edges (tied weights, cache sharing) dashed on the side."""
    import networkx as nx

    order = list(nx.topological_sort(plan.graph))
    row = {n: i for i, n in enumerate(order)}
    box_w, box_h, gap, left = 420, 26, 14, 40
    height = len(order) * (box_h + gap) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{box_w + 2 * left + 80}" '
        f'height="{height}" font-family="monospace" font-size="12">',
        f'<text x="{left}" y="16" font-weight="bold">{escape(plan.name)}</text>',
        '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="4" refY="4" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z"/></marker></defs>',
    ]
    y = {n: 28 + row[n] * (box_h + gap) for n in order}
    for n in order:
        kind = plan.graph.nodes[n].get("kind", "")
        fill = COLORS.get(kind, "#eeeeee")
        out.append(
            f'<rect x="{left}" y="{y[n]}" width="{box_w}" height="{box_h}" rx="4" '
            f'fill="{fill}" fill-opacity="0.5" stroke="#333"/>'
        )
        out.append(f'<text x="{left + 8}" y="{y[n] + 17}">{escape(_label(plan, n))}</text>')
    for a, b, data in plan.graph.edges(data=True):
        if data.get("kind") == "residual" and row[b] == row[a] + 1:
            x = left + box_w / 2
            out.append(
                f'<line x1="{x}" y1="{y[a] + box_h}" x2="{x}" y2="{y[b] - 2}" '
                'stroke="#333" marker-end="url(#a)"/>'
            )
        else:
            x = left + box_w + 20 + 10 * (row[a] % 5)
            out.append(
                f'<path d="M{left + box_w},{y[a] + box_h / 2} H{x} V{y[b] + box_h / 2} '
                f'H{left + box_w + 2}" fill="none" stroke="#666" stroke-dasharray="4 3" '
                'marker-end="url(#a)"/>'
            )
    out.append("</svg>")
    return "\n".join(out)


def write_graph(plan: Plan, path: str | Path) -> None:
    """Write the drawing as .svg (no dependency) or .png (needs matplotlib)."""
    path = Path(path)
    svg = draw_svg(plan)
    if path.suffix.lower() == ".svg":
        path.write_text(svg)
        return
    if path.suffix.lower() != ".png":
        raise ValueError(f"--graph writes .svg or .png, not {path.suffix or 'no suffix'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError(
            'PNG output needs matplotlib: pip install "archlab[plot]" (or write .svg)'
        ) from None
    import networkx as nx

    order = list(nx.topological_sort(plan.graph))
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(order) + 0.6))
    for i, n in enumerate(order):
        kind = plan.graph.nodes[n].get("kind", "")
        ax.text(
            0.02,
            -i,
            _label(plan, n),
            va="center",
            family="monospace",
            fontsize=8,
            bbox={"facecolor": COLORS.get(kind, "#eeeeee"), "alpha": 0.5, "boxstyle": "round"},
        )
    ax.set_ylim(-len(order), 1)
    ax.set_axis_off()
    ax.set_title(plan.name)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
