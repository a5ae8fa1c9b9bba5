"""Peer suite: every block kind timed beside the plain implementation a competent user
would write, with the same weights, on the same shapes, in one process.

    python benchmarks/peers.py --rat-repo PATH --out peers.json        # on a GPU (paper setup)
    python benchmarks/peers.py --small --out /tmp/peers.json           # a CPU smoke run (CI)

Peers (each built with the archlab block's weights by `load_weights(peer, block)`):
- attention: q/k/v/o projections + RoPE (rotate-half, float32, cached cos/sin) +
  `F.scaled_dot_product_attention(is_causal=True)`, the whole layer under `torch.compile`;
- local_attention: the same with `flex_attention` and a sliding-window `mask_mod` (a key is
  visible from itself and the `window - 1` tokens before it, as archlab), compiled;
- ssm: a Mamba-2 layer on fla-core's kernels (`causal_conv1d`, `chunk_simple_gla`, the fused
  gated RMSNorm; `fused_recurrent_simple_gla` and `causal_conv1d_update` for decode), with
  mamba's parameter layout. `fla.layers.Mamba2` is not part of fla-core (it ships in the
  `flash-linear-attention` package) and its fast path is mamba_ssm's kernels: without
  mamba_ssm it runs a naive PyTorch SSD that materialises [B, chunks, L, L, H, N] tensors;
- rnn: the gated recurrence s_t = g_t s_{t-1} + (1 - g_t) v_t through
  `torch._higher_order_ops.associative_scan` (custom backward: the reverse scan) under
  `torch.compile`; a plain one-step update for decode;
- mlp: the same projections and activation under `torch.compile`;
- rat: the RAT paper's published layer (github CLAIRE-Labo/RAT), imported from `--rat-repo`
  (never copied into this project), run as its own benchmark runs it (float32 weights under
  bf16 autocast, the layer under `torch.compile`). It holds its input RMSNorm and the
  residual, so archlab's row times `x + mixer(norm(x))` from the same block.

Modes: train (forward + backward), prefill (forward without grad, filling a cache), decode
(one token at position T against a cache of T tokens; every side replayed as a CUDA graph
where it can be captured). archlab's block is timed twice: eagerly (`archlab_*`) and under
torch.compile (`archlab_compiled_*`: its forward, prefill and decode step compiled with
static shapes, as `archlab profile --compile` runs them, with the peers' --compile
backend), so each row shows archlab eager and compiled against the peer; with
`--compile none` (the --small default) the compiled side is not timed and the run says so.
The first call of each side (compilation, autotuning, graph capture) is timed apart
(`*_first_call_s`) and never inside a timing. Timings are CUDA
events (perf_counter on the CPU), median of the repetitions. An OOM is a row, not a crash.
The JSON is rewritten after every row, so a run cut short keeps what it measured.

archlab's side is built through its public API (`archlab.build`, the model's
`blocks[i].mixer` / `.norm`); decode steps, archlab's and the peers' alike, are captured in
CUDA graphs by `archlab profile`'s own `graph_of`.

Budget (H200, torch 2.11, Triton 3.6; benchmarks/results/2026-11-29-peers): mlp, attention
and rnn at every paper shape take about 135 s together (compilation included). fla
autotunes its kernels at every new shape, for archlab's ssm block and the peer alike:
chunk_gla's backward took over 2 minutes at the first shape, and even the prefill row at
64x4096 did not finish in 40 s; give `--kinds ssm` a run of its own. Flex attention
compiles per sequence length on archlab's side (22 s for the first train row of
local_attention). `--time-budget` shares the run's seconds between the kinds and skips, with
a note, the rows a kind has no time left for (a row already started runs to its end).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import archlab

sys.path.insert(0, str(Path(__file__).parent))  # the peers and the timing beside this file
from peer_layers.archlab_side import ArchlabCompiledSide, ArchlabSide, build_archlab  # noqa: E402
from peer_layers.attention import AttentionPeer, rope_tables, sliding_window_mask  # noqa: E402
from peer_layers.common import PeerUnavailable, VariantPeer, compiled  # noqa: E402
from peer_layers.kinds import LOADERS, SAME, load_weights, make_peer  # noqa: E402
from peer_layers.mlp import MLPPeer  # noqa: E402
from peer_layers.rat import PublishedRATPeer, published_rat  # noqa: E402
from peer_layers.rnn import RNNPeer, gated_scan_function, linear_scan  # noqa: E402
from peer_layers.run_setup import Setup, parse_shapes  # noqa: E402
from peer_layers.ssm import FlaMamba2Peer, fla_ops, fla_version  # noqa: E402
from peer_rows import RESIDUAL_INPUT_SCALE, compiled_skip_note, run_kind, table  # noqa: E402
from peer_timing import compare, run_side, time_reps  # noqa: E402

__all__ = [  # what tests and scripts use as peers.<name>, wherever it now lives
    "KINDS",
    "LOADERS",
    "MODES",
    "RESIDUAL_INPUT_SCALE",
    "SAME",
    "ArchlabCompiledSide",
    "ArchlabSide",
    "AttentionPeer",
    "FlaMamba2Peer",
    "MLPPeer",
    "PeerUnavailable",
    "PublishedRATPeer",
    "RNNPeer",
    "Setup",
    "VariantPeer",
    "build_archlab",
    "build_parser",
    "compare",
    "compiled",
    "environment",
    "fla_ops",
    "fla_version",
    "gated_scan_function",
    "linear_scan",
    "load_weights",
    "main",
    "make_peer",
    "parse_shapes",
    "published_rat",
    "rope_tables",
    "run_kind",
    "run_side",
    "sliding_window_mask",
    "small_setup",
    "table",
    "time_reps",
]

KINDS = ("mlp", "attention", "rnn", "ssm", "rat", "local_attention")  # default run order
MODES = ("train", "prefill", "decode")


def environment(setup: Setup) -> dict:
    cuda = setup.device.type == "cuda"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else (platform.processor() or "cpu"),
        "torch": torch.__version__,
        "triton": triton_version,
        "fla": fla_version(),
        "archlab": getattr(archlab, "__version__", None),
        "python": platform.python_version(),
        "setup": {
            "d_model": setup.d_model,
            "heads": setup.heads,
            "dtype": setup.dtype_name,
            "window": setup.window,
            "rat_chunk_size": setup.chunk,
            "ssm": setup.ssm,
            "shapes": setup.shapes,
            "decode": setup.decode,
            "compile": setup.compile,
            "row_budget_s": setup.row_budget_s,
        },
    }


def small_setup() -> Setup:
    """The --small setup on the CPU (for tests)."""
    return Setup(build_parser().parse_args(["--small", "--cpu"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="comma-separated, run in this order"
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--shapes", help="train/prefill shapes, e.g. 64x4096,16x16k")
    parser.add_argument("--decode", help="decode shapes (batch x position), e.g. 512x4096")
    parser.add_argument("--out", help="write the JSON here (rewritten after every row)")
    parser.add_argument("--small", action="store_true", help="tiny sizes on the CPU (CI)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with CUDA")
    parser.add_argument("--rat-repo", help="a checkout of github.com/CLAIRE-Labo/RAT")
    parser.add_argument(
        "--compile",
        choices=["inductor", "eager", "none"],
        help="how the peers and archlab's compiled side compile (default: inductor; "
        "--small: none, which also skips archlab's compiled side)",
    )
    parser.add_argument("--row-budget", type=float, help="seconds of timed repetitions per side")
    parser.add_argument(
        "--trace",
        metavar="DIR",
        help="also profile a few calls of each side of each row (torch.profiler) and "
        "write their kernel tables to DIR",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="seconds for the whole run; later rows are skipped with a note",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS) | set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown kinds or modes: {sorted(unknown)}")
    setup = Setup(args)
    if setup.compile != "none" or "rat" in kinds:
        dyn = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):  # a graph per shape and mode
            if hasattr(dyn, name):
                setattr(dyn, name, max(getattr(dyn, name), 64))
    began = time.monotonic()
    doc = {**environment(setup), "rows": []}

    def save(row: dict) -> None:
        doc["rows"].append(row)
        doc["elapsed_s"] = round(time.monotonic() - began, 1)
        print(table([row]).splitlines()[-1], flush=True)
        sides = ("archlab", "archlab_compiled", "peer")
        firsts = [row.get(f"{side}_first_call_s") for side in sides]
        firsts = ", ".join("-" if f is None else f"{f:.1f}" for f in firsts)
        keys = ("archlab_error", "archlab_compiled_error", "peer_error", "peer_fallbacks")
        extra = [row[k] for k in keys if row.get(k)]
        elapsed = time.monotonic() - began
        print(
            f"    first calls (archlab, compiled, peer) {firsts} s; at {elapsed:.0f} s; "
            f"{extra or ''}",
            flush=True,
        )
        if args.out:
            with open(args.out, "w") as f:
                json.dump(doc, f, indent=1, default=str)

    print(
        f"# {doc['device']}, torch {doc['torch']}, triton {doc['triton']}, {doc['fla']}", flush=True
    )
    skipped = compiled_skip_note(setup)
    if skipped:
        doc["notes"] = [skipped]
        print(f"# {skipped}", flush=True)
    for i, kind in enumerate(kinds):
        deadline = None
        if args.time_budget:
            left = args.time_budget - (time.monotonic() - began)
            deadline = time.monotonic() + max(left, 0) / (len(kinds) - i)  # fair share, rolls over
        print(f"# {kind}", flush=True)
        run_kind(kind, setup, args, deadline, save)
    print()
    order = {m: i for i, m in enumerate(MODES)}
    by_mode = sorted(
        doc["rows"],
        key=lambda r: (kinds.index(r["kind"]), order.get(r.get("mode"), 9), r.get("seq_len", 0)),
    )
    print(table(by_mode))
    slower = [
        r
        for r in doc["rows"]
        if any(r.get(k) and r[k] < 1 for k in ("speed_ratio", "compiled_speed_ratio"))
    ]
    if slower:
        print("\narchlab slower than its peer (eager; compiled):")
        for r in slower:
            ratios = "; ".join(
                f"x{r[k]:.2f}" if r.get(k) else "-" for k in ("speed_ratio", "compiled_speed_ratio")
            )
            print(f"  {r['kind']} {r['mode']} {r['batch']}x{r['seq_len']}: {ratios}")
    doc["elapsed_s"] = round(time.monotonic() - began, 1)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
