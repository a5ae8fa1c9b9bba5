"""The `archlab` command: validate, show, build, cost, schema (each with `--json`).

Exit status: 0 success, 1 invalid spec (or a requested backend that cannot run),
2 usage errors (unknown option, missing file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from archlab.errors import SpecError

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    """Bad command-line usage (exit status 2)."""


def _existing(path: str) -> str:
    if not Path(path).is_file():
        raise UsageError(f"no such file: {path}")
    return path


def _emit_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_validate(args) -> int:
    from archlab import compile

    results, status = [], EXIT_OK
    for spec in args.specs:
        _existing(spec)
        try:
            plan = compile(spec)
            results.append({"file": spec, "valid": True, "blocks": len(plan.blocks), "errors": []})
            if not args.json:
                print(f"{spec}: ok ({len(plan.blocks)} blocks)")
        except SpecError as e:
            status = EXIT_INVALID
            results.append(
                {"file": spec, "valid": False, "errors": [x.to_dict() for x in e.errors]}
            )
            if not args.json:
                print(str(e), file=sys.stderr)
    if args.json:
        _emit_json(results)
    return status


def cmd_show(args) -> int:
    from archlab import compile
    from archlab.blocks import BLOCKS
    from archlab.cost import norm_params, param_count
    from archlab.render import human, table, write_graph

    plan = compile(_existing(args.spec))
    m = plan.model
    rows = []
    for b in plan.order():
        n = BLOCKS[b.kind].param_count(b.params, m.d_model) + norm_params(m)
        rows.append({"index": b.index, "kind": b.kind, "params": b.summary(), "parameters": n})
    total = param_count(plan)
    if args.graph:
        try:
            write_graph(plan, args.graph)
        except ValueError as e:
            raise UsageError(str(e)) from None
        except OSError as e:
            raise UsageError(f"cannot write {args.graph}: {e.strerror or e}") from None
    if args.json:
        _emit_json(
            {
                "name": plan.name,
                "file": plan.file,
                "model": m.model_dump(),
                "blocks": rows,
                "kinds": plan.kinds(),
                "parameters": total,
            }
        )
        return EXIT_OK
    print(
        f"{plan.name}: {len(plan.blocks)} blocks, d_model {m.d_model}, vocab {m.vocab_size}, "
        f"{m.dtype}"
    )
    body = [
        [
            r["index"],
            r["kind"],
            ", ".join(f"{k}={v}" for k, v in r["params"].items()),
            f"{r['parameters']:,}",
        ]
        for r in rows
    ]
    print(table(["#", "kind", "params", "parameters"], body, right={0, 3}))
    embed = m.vocab_size * m.d_model
    print(
        f"\nembedding {embed:,}  lm_head {0 if m.tie_embeddings else embed:,}"
        f"{' (tied)' if m.tie_embeddings else ''}  final norm {norm_params(m):,}"
    )
    kinds = ", ".join(f"{k} x{v}" for k, v in plan.kinds().items())
    print(f"total parameters: {total:,} ({human(total)})   blocks: {kinds}")
    if args.graph:
        print(f"graph written to {args.graph}")
    return EXIT_OK


def cmd_build(args) -> int:
    import torch

    from archlab import compile
    from archlab.build import build_model

    plan = compile(_existing(args.spec))
    if args.seq < 1:
        raise UsageError(f"--seq must be >= 1 (got {args.seq})")
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: not a device: {args.device!r} (e.g. cpu, cuda)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: archlab runs on cpu or cuda, not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    print(f"building {plan.name} on {args.device} ...", file=sys.stderr)
    model = build_model(plan, device=args.device, dtype=args.dtype)
    params = sum(p.numel() for p in model.parameters())
    T = min(args.seq, plan.model.max_seq_len)
    ids = torch.randint(0, plan.model.vocab_size, (1, T), device=args.device)
    with torch.no_grad():
        logits = model(ids)
    ok = bool(torch.isfinite(logits.float()).all())
    backends = {str(i): b for i, b in model.backends().items() if b is not None}
    if args.json:
        _emit_json(
            {
                "name": plan.name,
                "parameters": params,
                "device": args.device,
                "dtype": str(next(model.parameters()).dtype),
                "backends": backends,
                "forward": {"input": [1, T], "output": list(logits.shape), "finite": ok},
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


def cmd_schema(args) -> int:
    from archlab.spec import json_schema

    _emit_json(json_schema())
    return EXIT_OK


def cmd_cost(args) -> int:
    from archlab.cost_cli import run_cost

    for spec in args.specs:
        _existing(spec)
    return run_cost(args)


def parse_lengths(text: str) -> list[int]:
    """'4k,32k,128k' -> [4096, 32768, 131072]."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1
        if part.endswith("k"):
            part, mult = part[:-1], 1024
        elif part.endswith("m"):
            part, mult = part[:-1], 1024 * 1024
        if not part.isdigit() or int(part) * mult < 1:
            raise UsageError(f"bad length {part!r} in {text!r} (use e.g. 4096 or 4k,32k)")
        out.append(int(part) * mult)
    return out


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="archlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check specs; print every error with its position")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("show", help="the expanded stack, one row per block, with totals")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--graph", metavar="FILE", help="draw the plan graph (.svg or .png)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("build", help="instantiate the model and run one tiny forward")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None)
    p.add_argument("--seq", type=int, default=16, help="tokens in the test forward")
    p.add_argument("--full", action="store_true", help="print every block of the module tree")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("cost", help="analytic parameters, FLOPs and cache memory")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument(
        "--seq",
        default=None,
        help="sequence lengths, e.g. 4k,32k,128k (default: each spec's max_seq_len)",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--by-kind", action="store_true")
    p.add_argument("--by-block", action="store_true")
    p.add_argument(
        "--crossover",
        action="store_true",
        help="sequence lengths where one spec becomes cheaper than another",
    )
    p.add_argument(
        "--train-memory",
        action="store_true",
        help="estimate training memory (weights, grads, AdamW, activations)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("schema", help="JSON Schema of the spec language (for editors)")
    p.add_argument("--json", action="store_true", help="(the schema is always JSON)")
    p.set_defaults(func=cmd_schema)
    from archlab.profile_cli import register

    register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"archlab: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SpecError as e:
        if getattr(args, "json", False):
            _emit_json({"valid": False, "errors": [x.to_dict() for x in e.errors]})
        else:
            print(str(e), file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug, not bad input: say so briefly unless debugging
        from archlab.blocks.base import BackendUnavailable

        if isinstance(e, BackendUnavailable):
            print(f"archlab: error: {e}", file=sys.stderr)
            return EXIT_INVALID
        if os.environ.get("ARCHLAB_DEBUG"):
            raise
        print(
            f"archlab: internal error: {type(e).__name__}: {e}\n"
            "(set ARCHLAB_DEBUG=1 to see the traceback; please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
