"""The Plan's drawing: SVG by hand, PNG through matplotlib."""

from __future__ import annotations

from html import escape
from pathlib import Path

from archlab.lang.plan import Plan, ref_value

EDGE_STYLES = {  # kind -> (colour, line style, meaning)
    "cache_share": ("#c00000", "dashed", "reads the keys/values of (red, dashed)"),
    "branch": ("#555555", "dotted", "parallel branch in/out (grey, dotted)"),
    "merge": ("#555555", "dotted", ""),
    "tied_weights": ("#1f5fbf", "dashdot", "tied weights (blue)"),
}


def kind_color(kind: str) -> str:
    """A block kind's colour (its record's), grey for the model's own nodes."""
    from archlab.blocks.registry import kinds

    record = kinds().get(kind)
    return record.color if record is not None else "#eeeeee"


def _label(plan: Plan, node: str) -> str:
    data = plan.graph.nodes[node]
    if data.get("role") not in ("block", "branch"):
        return node
    block = plan.blocks[data["index"]]
    if data["role"] == "branch":  # drawn as its own node: "2.1: rat (chunk_size=4)"
        j = data["branch"]
        branch = block.params.branches[j]
        summary = branch.model_dump(exclude_defaults=True, exclude={"kind"})
        if j in block.cache_reads():  # its source's place: 3 or [3, 0]
            summary["share_cache"] = ref_value(block.cache_reads()[j])
        named = f" {data['name']}" if data.get("name") else ""
        name = f"{block.index}.{j}{named}: {branch.kind}"
    else:
        summary = block.summary()
        # a composite block's branches have nodes of their own
        summary = {k: v for k, v in summary.items() if k != "branches"}
        name = f"{block.index}: {block.kind}"
    params = ", ".join(f"{k}={v}" for k, v in summary.items() if k != "backend")
    return name + (f" ({params})" if params else "")


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
        fill = kind_color(kind)
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
    row = {n: i for i, n in enumerate(order)}
    fig, ax = plt.subplots(figsize=(8, 0.34 * len(order) + 0.8))
    for n in order:
        kind = plan.graph.nodes[n].get("kind", "")
        indent = 0.06 if plan.graph.nodes[n].get("role") == "branch" else 0.0
        ax.text(
            0.02 + indent,
            -row[n],
            _label(plan, n),
            va="center",
            family="monospace",
            fontsize=8,
            bbox={"facecolor": kind_color(kind), "alpha": 0.5, "boxstyle": "round"},
        )
    for a, b, data in plan.graph.edges(data=True):
        kind = data.get("kind", "")
        if kind == "residual" and row[b] == row[a] + 1:
            ax.annotate(
                "",
                (0.01, -row[b] + 0.3),
                (0.01, -row[a] - 0.3),
                arrowprops={"arrowstyle": "->", "color": "#333"},
            )
            continue
        style = EDGE_STYLES.get(kind, ("#666", "solid"))
        ax.annotate(
            "",
            (0.0, -row[b]),
            (0.0, -row[a]),
            arrowprops={
                "arrowstyle": "->",
                "color": style[0],
                "linestyle": style[1],
                "connectionstyle": f"arc3,rad={0.25 if kind != 'residual' else -0.25}",
            },
        )
    used = {d.get("kind") for _, _, d in plan.graph.edges(data=True)} - {"residual"}
    legend = [EDGE_STYLES[k][2] for k in EDGE_STYLES if k in used and EDGE_STYLES[k][2]]
    if legend:
        ax.text(
            0.02,
            -len(order) - 0.2,
            "edges  " + "   ".join(legend),
            fontsize=7,
            family="monospace",
            va="top",
        )
    ax.set_xlim(-0.25, 1.0)
    ax.set_ylim(-len(order) - 1, 1)
    ax.set_axis_off()
    ax.set_title(plan.name)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
