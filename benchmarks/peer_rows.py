"""The rows of peers.py: every (mode, shape) of one kind, archlab's block (eager and
compiled) and its peer timed on the same input (`run_kind`), the fields each row gets
(times, first calls, statuses, ratios, the output check), and the table that prints
them."""

from __future__ import annotations

import time

import torch
from peer_layers.archlab_side import ArchlabCompiledSide, ArchlabSide, build_archlab
from peer_layers.common import PeerUnavailable
from peer_layers.kinds import SAME, load_weights, make_peer
from peer_layers.run_setup import Setup
from peer_timing import compare, free_memory, run_side, short_error

RESIDUAL_INPUT_SCALE = 0.02
"""rat rows compare x + mixer(norm(x)), both sides rounded to bf16; with x ~ N(0, 1) that
rounding of the residual sum swamps the mixer's part in the check (the first GPU run saw
3.2e-2 train/prefill and 9.1e-2 decode, at the bf16 ulp of |x|). The published benchmark's
inputs are randn * 0.02, and the norm makes the mixer's output independent of the scale:
rat rows use them (the timings do not depend on it)."""


def cases(setup: Setup, modes: list[str]) -> list[tuple[str, int, int]]:
    """(mode, B, T) of one kind, the modes interleaved shape by shape (train, prefill and
    decode of the first shapes first), so that a run cut by its time budget has every mode."""
    per_mode = [
        [(mode, B, T) for B, T in (setup.decode if mode == "decode" else setup.shapes)]
        for mode in modes
    ]
    longest = max((len(c) for c in per_mode), default=0)
    return [c[i] for i in range(longest) for c in per_mode if i < len(c)]


def run_kind(kind, setup, args, deadline, save) -> list[dict]:
    """Every (mode, shape) row of one kind: archlab's block and its peer on the same input."""
    rows: list[dict] = []
    same, why = SAME[kind]
    base = {"kind": kind, "same_function": same, "same_function_note": why}
    try:
        model, block = build_archlab(kind, setup)
    except Exception as e:  # noqa: BLE001
        row = {**base, "status": "error", "error": f"archlab block: {short_error(e)}"}
        save(row)
        return [row]
    archlab_side = ArchlabSide(kind, block)
    fast_side = ArchlabCompiledSide(kind, block, setup.compile) if setup.compile != "none" else None
    peer, peer_error = None, ""
    try:
        peer = make_peer(kind, setup, args.rat_repo)
        load_weights(peer, block, kind)
    except PeerUnavailable as e:
        peer_error = str(e) if str(e).startswith("not available") else f"not available: {e}"
    except Exception as e:  # noqa: BLE001
        peer_error = f"peer error: {short_error(e)}"
        peer = None
    if peer is None:
        base["same_function"], base["same_function_note"] = None, peer_error
    elif kind == "rat":
        base["peer_patches"] = list(peer.m["patches"])
    for mode, B, T in cases(setup, args.modes):
        row = {
            **base,
            "mode": mode,
            "batch": B,
            "seq_len": T,
            "archlab_backend": archlab_side.backend,
        }
        if deadline and time.monotonic() > deadline:
            row.update(status="skipped", note="time budget of the run spent")
            save(row)
            rows.append(row)
            continue
        torch.manual_seed(0)
        shape = (B, 1 if mode == "decode" else T, setup.d_model)
        x = torch.randn(shape, device=setup.device, dtype=setup.dtype)
        if kind == "rat":  # as the published benchmark's inputs; see RESIDUAL_INPUT_SCALE
            x *= RESIDUAL_INPUT_SCALE
        label = f"{kind}_{mode}_{B}x{T}"
        a = run_side(archlab_side, mode, x, T, setup, f"{label}_archlab")
        c = SKIPPED
        if fast_side is not None:
            c = run_side(fast_side, mode, x, T, setup, f"{label}_archlab_compiled")
        p = {"status": "n/a"}
        if peer is not None:
            p = run_side(peer, mode, x, T, setup, f"{label}_peer")
        _fill(row, a, p, peer, peer_error, kind, x, setup, mode)
        _fill_compiled(row, a, c, p, setup)
        del x
        free_memory()
        save(row)
        rows.append(row)
    del peer, archlab_side, fast_side, block, model
    free_memory(collect=True)
    return rows


def _fill(row, a, p, peer, peer_error, kind, x, setup, mode) -> None:
    row["archlab_ms"], row["archlab_status"] = a["ms"], a["status"]
    row["archlab_first_call_s"] = a["first_call_s"]
    row["archlab_reps"], row["archlab_cuda_graph"] = a["reps"], a.get("cuda_graph")
    row["archlab_spread"], row["peer_spread"] = a.get("spread"), p.get("spread")
    if a.get("error"):
        row["archlab_error"] = a["error"]
    if peer is None:
        row.update(peer_status="n/a", peer_ms=None, peer_impl=None, note=peer_error)
    else:
        row["peer_ms"], row["peer_status"] = p["ms"], p["status"]
        row["peer_first_call_s"], row["peer_reps"] = p["first_call_s"], p["reps"]
        row["peer_cuda_graph"], row["peer_impl"] = p.get("cuda_graph"), peer.impl
        if p.get("error"):
            row["peer_error"] = p["error"]
        if getattr(peer, "fallbacks", None):
            row["peer_fallbacks"] = list(peer.fallbacks)
    notes = [n for n in (a.get("note"), p.get("note")) if n]
    if notes:
        row["note"] = "; ".join([row.get("note") or "", *notes]).strip("; ")
    row["speed_ratio"] = (
        p["ms"] / a["ms"] if a.get("ms") and p.get("ms") else None
    )  # > 1: archlab faster
    if "sample" in a and "sample" in p:
        sa, sp = a["sample"], p["sample"]
        if kind == "rat" and mode != "decode":  # compare the mixer part, not the residual
            xs = x[:1, -4096:]
            sa, sp = sa - xs, sp - xs
        elif kind == "rat":
            sa, sp = sa - x[:64], sp - x[:64]
        row["check"] = compare(sa, sp, setup.dtype)
    row["status"] = "ok" if a["status"] == "ok" and p.get("status") in ("ok", "n/a") else "partial"


SKIPPED = {"status": "skipped", "ms": None, "first_call_s": None, "reps": 0}


def compiled_skip_note(setup: Setup) -> str | None:
    """Why the archlab-compiled rows are not timed (None when they are)."""
    if setup.compile != "none":
        return None
    why = "the --small default" if setup.small else "--compile none"
    return f"archlab compiled: not timed ({why}; --compile inductor times it)"


def _fill_compiled(row, a, c, p, setup) -> None:
    """archlab's layer under torch.compile (ArchlabCompiledSide): its time, first call
    (the compile), status, and its output against archlab's eager output."""
    row["archlab_compiled_ms"], row["archlab_compiled_status"] = c["ms"], c["status"]
    row["archlab_compiled_first_call_s"] = c["first_call_s"]
    row["archlab_compiled_reps"], row["archlab_compiled_spread"] = c["reps"], c.get("spread")
    row["archlab_compiled_cuda_graph"] = c.get("cuda_graph")
    if c.get("error"):
        row["archlab_compiled_error"] = c["error"]
    if c.get("note"):
        row["archlab_compiled_note"] = c["note"]
    row["compiled_speed_ratio"] = (
        p["ms"] / c["ms"] if c.get("ms") and p.get("ms") else None
    )  # > 1: compiled archlab faster than the peer
    if "sample" in a and "sample" in c:
        row["compiled_check"] = compare(a["sample"], c["sample"], setup.dtype)
    if c["status"] not in ("ok", "skipped"):
        row["status"] = "partial"


def fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ms_cell(r: dict, side: str) -> str:
    """A side's time, or its status (OOM, ERROR, N/A...); '-' for a side not timed."""
    if r.get(f"{side}_ms"):
        return fmt_ms(r[f"{side}_ms"])
    status = r.get(f"{side}_status") or r.get("status", "")
    return "-" if status == "skipped" and side == "archlab_compiled" else status.upper()


def table(rows: list[dict]) -> str:
    """archlab eager, archlab compiled (its layer under torch.compile) and the peer, each
    row's ratios peer ms / archlab ms (above 1: archlab faster)."""
    head = ["kind", "mode", "BxT", "archlab ms", "compiled ms", "peer ms", "archlab/peer"]
    head += ["compiled/peer", "backend", "check", "note"]
    lines = []
    for r in rows:
        if "mode" not in r:
            lines.append([r["kind"], *["-"] * 9, r.get("error", "")])
            continue
        ratio = f"x{r['speed_ratio']:.2f}" if r.get("speed_ratio") else ""
        cratio = f"x{r['compiled_speed_ratio']:.2f}" if r.get("compiled_speed_ratio") else ""
        check = r.get("check")
        chk = f"{check['rel_err']:.1e}{'' if check['match'] else ' !'}" if check else ""
        if r.get("compiled_check") and not r["compiled_check"]["match"]:
            chk += " (compiled !)"
        note = (
            r.get("note")
            or r.get("archlab_error")
            or r.get("archlab_compiled_error")
            or r.get("peer_error")
            or ""
        )
        lines.append(
            [
                r["kind"],
                r["mode"],
                f"{r['batch']}x{r['seq_len']}",
                _ms_cell(r, "archlab"),
                _ms_cell(r, "archlab_compiled"),
                _ms_cell(r, "peer"),
                ratio,
                cratio,
                str(r.get("archlab_backend")),
                chk,
                note[:90],
            ]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines, strict=False)]
    right = {3, 4, 5, 6, 7}
    out = []
    for i, line in enumerate([head, *lines]):
        cells = [
            str(c).rjust(w) if j in right else str(c).ljust(w)
            for j, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
