"""The sizes and settings of one peers.py run (`Setup`): the paper setup on a GPU, or tiny
float32 sizes on the CPU (`--small`), the shapes of each mode, the time budget of a row
and how the peers compile; `Setup.spec(kind)` is the one-block archlab spec the peer of
`kind` is measured against."""

from __future__ import annotations

import argparse

import torch

PAPER_SHAPES = [(64, 4096), (16, 16384), (4, 65536), (2, 131072)]
PAPER_DECODE = [(512, 4096), (512, 16384), (512, 65536)]
SMALL_SHAPES = [(2, 32)]
SMALL_DECODE = [(2, 32)]


class Setup:
    """Sizes and settings of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        cuda = torch.cuda.is_available() and not args.cpu
        self.device = torch.device("cuda" if cuda else "cpu")
        self.small = args.small or not cuda
        if self.small:
            self.d_model, self.heads, self.dtype_name = 64, 4, "float32"
            self.window, self.chunk = 9, 4
            self.ssm = {"d_state": 16, "expand": 2, "head_dim": 16, "n_groups": 1}
            shapes, decode = SMALL_SHAPES, SMALL_DECODE
            self.row_budget_s, self.max_reps = 0.05, 5
        else:
            self.d_model, self.heads, self.dtype_name = 2048, 16, "bfloat16"
            self.window, self.chunk = 1025, 16
            self.ssm = {"d_state": 128, "expand": 2, "head_dim": 64, "n_groups": 1}
            shapes, decode = PAPER_SHAPES, PAPER_DECODE
            self.row_budget_s, self.max_reps = 1.0, 1000
        self.ssm["conv_kernel"] = 4
        self.norm_eps, self.rope_theta, self.qk_groups = 1e-6, 10000.0, 2
        self.shapes = parse_shapes(args.shapes) if args.shapes else shapes
        self.decode = parse_shapes(args.decode) if args.decode else decode
        if args.row_budget is not None:
            self.row_budget_s = args.row_budget
        self.trace_dir: str | None = getattr(args, "trace", None)
        default_compile = "none" if self.small else "inductor"
        self.compile = args.compile or default_compile
        self.dtype = getattr(torch, self.dtype_name)
        longest = max([T for _, T in self.shapes] + [T + 1 for _, T in self.decode] + [1])
        self.max_seq_len = max(longest, 4)

    def spec(self, kind: str) -> dict:
        """A one-block archlab spec of `kind` in this setup (every knob the peer relies on
        is spelled out, so that the peer's configuration does not lean on defaults)."""
        d, H = self.d_model, self.heads
        block = {
            "attention": {"kind": "attention", "heads": H, "rope_theta": self.rope_theta},
            "local_attention": {
                "kind": "local_attention",
                "heads": H,
                "window": self.window,
                "rope_theta": self.rope_theta,
            },
            "ssm": {"kind": "ssm", **self.ssm},
            "rnn": {"kind": "rnn"},
            "mlp": {"kind": "mlp", "hidden": 4 * d, "activation": "gelu"},
            "rat": {"kind": "rat", "heads": H, "chunk_size": self.chunk, "qk_groups": 2},
        }[kind]
        return {
            "name": f"peer-{kind}",
            "model": {
                "d_model": d,
                "vocab_size": 256,
                "dtype": self.dtype_name,
                "max_seq_len": self.max_seq_len,
                "norm_eps": self.norm_eps,
            },
            "stack": [block],
        }


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'64x4096,16x16k' -> [(64, 4096), (16, 16384)]."""
    out = []
    for item in text.split(","):
        b, t = item.lower().strip().split("x")
        out.append((int(b), int(t[:-1]) * 1024 if t.endswith("k") else int(t)))
    return out
