"""`archlab build`: instantiate the model, run one tiny forward, print the module tree."""

from __future__ import annotations

import sys

from archlab.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    add_extends_root,
    did_you_mean,
    emit_json,
    existing,
    report_warnings,
)
from archlab.lang.errors import UsageError


def register(subparsers) -> None:
    """Add the command to the `archlab` parser."""
    p = subparsers.add_parser("build", help="instantiate the model and run one tiny forward")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None)
    p.add_argument(
        "--seq",
        type=int,
        default=None,
        help="tokens in the test forward (default 16, at most the spec's max_seq_len)",
    )
    p.add_argument("--full", action="store_true", help="print every block of the module tree")
    p.add_argument(
        "--force",
        action="store_true",
        help="build even when the weights would not fit in the device's free memory",
    )
    add_extends_root(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from archlab import compile
    from archlab.model import build_model

    plan = compile(existing(args.spec))
    if args.seq is not None and args.seq < 1:
        raise UsageError(f"--seq must be >= 1 (got {args.seq})")
    warnings = list(plan.warnings)
    if args.seq is not None and args.seq > plan.model.max_seq_len:
        warnings.append(
            plan.issue(
                "model.max_seq_len",
                f"--seq {args.seq:,} is longer than model.max_seq_len "
                f"({plan.model.max_seq_len:,}): the test forward runs at "
                f"T = {plan.model.max_seq_len:,}",
            )
        )
    warned = report_warnings(warnings, args)
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        hint = did_you_mean(args.device, ("cpu", "cuda"))
        raise UsageError(
            f"--device: not a device: {args.device!r} (e.g. cpu, cuda){hint}"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: archlab runs on cpu or cuda, not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    print(f"building {plan.name} on {args.device} ...", file=sys.stderr)
    model = build_model(plan, device=args.device, dtype=args.dtype, force=args.force)
    params = sum(p.numel() for p in model.parameters())
    T = min(16 if args.seq is None else args.seq, plan.model.max_seq_len)
    ids = torch.randint(0, plan.model.vocab_size, (1, T), device=args.device)
    with torch.no_grad():
        logits = model(ids)
    ok = bool(torch.isfinite(logits.float()).all())
    backends = {str(i): b for i, b in model.backends().items() if b is not None}
    if args.json:
        emit_json(
            {
                "name": plan.name,
                "parameters": params,
                "device": args.device,
                "dtype": str(next(model.parameters()).dtype),
                "backends": backends,
                "forward": {"input": [1, T], "output": list(logits.shape), "finite": ok},
                "warnings": warned,
            }
        )
        return EXIT_OK if ok else EXIT_INVALID
    print(model if args.full else _module_tree(model))
    print(f"\nparameters: {params:,}")
    print(f"forward [1, {T}] -> {list(logits.shape)} ({'finite' if ok else 'NOT FINITE'})")
    print("backends: " + ", ".join(sorted({f"{b}" for b in backends.values()}) or ["-"]))
    return EXIT_OK if ok else EXIT_INVALID


def _module_tree(model) -> str:
    """The module tree with each distinct block printed once."""
    lines = [f"{type(model).__name__}(", f"  (embedding): {model.embedding}"]
    seen: dict[str, int] = {}
    for i, block in enumerate(model.blocks):
        text = repr(block)
        if text in seen:
            lines.append(f"  (blocks.{i}): same as blocks.{seen[text]}")
        else:
            seen[text] = i
            lines.append(f"  (blocks.{i}): " + text.replace("\n", "\n  "))
    lines += [f"  (final_norm): {model.final_norm}", f"  (lm_head): {model.lm_head}", ")"]
    return "\n".join(lines)
