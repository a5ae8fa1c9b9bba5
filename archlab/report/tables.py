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
