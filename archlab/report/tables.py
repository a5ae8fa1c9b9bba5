"""Text tables and human units."""

from __future__ import annotations


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


def table(
    headers: list[str],
    rows: list[list],
    right: set[int] | None = None,
    groups: list[tuple[int, str]] | None = None,
) -> str:
    """A plain aligned text table; columns in `right` (default: all but the first two)
    are right-aligned. `groups` [(first column, label), ...] puts a line above the headers
    that labels each group of columns, from its first column to the next group's."""
    right = right if right is not None else set(range(2, len(headers)))
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    if groups:
        ends = [g[0] for g in groups[1:]] + [len(widths)]
        for (col, label), end in zip(groups, ends, strict=True):
            span = sum(widths[col:end]) + 2 * (end - col - 1)
            widths[end - 1] += max(0, len(label) + 2 - span)  # room for the label
        starts = [sum(w + 2 for w in widths[:i]) for i in range(len(widths) + 1)]
        line = ""
        for k, (col, label) in enumerate(groups):
            end = starts[groups[k + 1][0]] if k + 1 < len(groups) else starts[-1]
            line = line.ljust(starts[col])
            line += (label + " ").ljust(end - starts[col] - 2, "-") + "  "
        lines.append(line.rstrip())
    for n, r in enumerate(cells):
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
