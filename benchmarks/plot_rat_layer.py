"""Plot a `rat_layer.py` JSON, or an `archlab profile --layer ... --json` output, as the RAT
paper's efficiency figure: one panel per mode (train, prefill, generation), milliseconds
against sequence length on log axes, one line per variant (per spec and layer for the
profiler's JSON), the published RAT implementation (and attention, for train) as crosses.

    python benchmarks/plot_rat_layer.py benchmarks/results/2026-11-28-h200/rat_layer.json \
        --out benchmarks/results/2026-11-28-h200/efficiency   # writes .png and .svg
"""

# fmt: off
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from rat_layer import PUBLISHED, PUBLISHED_ATTENTION_TRAIN  # noqa: E402

MODES = (("train", "train (forward + backward)"), ("prefill", "prefill"),
         ("decode", "generation: one step, batch 512"))


def variant(r: dict) -> str:
    """rat_layer.py names its variants; the profiler gives the spec and the layer."""
    if "variant" in r:
        return r["variant"]
    layer = r["target"].removeprefix("layer ")  # e.g. rat(heads=16, chunk_size=16, head_dim=128)
    layer = re.sub(r"\(\)", "", re.sub(r"(, )?\bhead(s|_dim)=\d+(, )?", "", layer))
    return f"{layer} ({', '.join(f'{k}:{v}' for k, v in r['backends'].items())})"


def subtitle(doc: dict) -> str:
    if isinstance(doc["device"], dict):  # the profiler's JSON: no date of its own
        return f"{doc['device']['device']}, torch {doc['device']['torch']}"
    return f"{doc['device']}, torch {doc['torch']}, {doc['date'][:10]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="a rat_layer.py output")
    ap.add_argument("--out", required=True, help="path without suffix; .png and .svg written")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    doc = json.loads(Path(args.json).read_text())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (mode, title) in zip(axes, MODES, strict=True):
        for name in dict.fromkeys(variant(r) for r in doc["results"]):
            pts = sorted(
                (r["seq_len"], r["timing"]["median_s"] * 1e3)
                for r in doc["results"]
                if variant(r) == name and r["mode"] == mode and r["timing"]
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"archlab {name}")
        published = [("RAT L=16, published", PUBLISHED.get(mode, {}))]
        if mode == "train":
            published.append(("attention, published", PUBLISHED_ATTENTION_TRAIN))
        for label, data in published:
            if data:
                ax.plot(list(data), list(data.values()), "x--", color="gray" if "RAT" in label
                        else "black", label=label)
        ax.set(xscale="log", yscale="log", xlabel="sequence length T (tokens)",
               ylabel="ms per step", title=title)
        ax.set_xticks([4096, 16384, 65536, 131072], ["4K", "16K", "64K", "128K"])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"One layer with projections, d_model 2048, 16 heads of 128, 262,144 tokens "
                 f"per batch, bf16 "
                 f"({subtitle(doc)})")
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        fig.savefig(args.out + suffix, dpi=120)
    print(f"wrote {args.out}.png and .svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
