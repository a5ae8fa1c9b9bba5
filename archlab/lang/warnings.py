"""Warnings: a spec that is valid but probably not what was meant. They never fail
validation; `validate`, `build` and `cost` print them (`file:line:col: path: warning:
...`) and put them in their JSON as a "warnings" list."""

from __future__ import annotations

from archlab.blocks.base import ModelConfig
from archlab.lang.errors import SpecIssue
from archlab.lang.loader import Source
from archlab.lang.plan import PlannedBlock
from archlab.lang.stack import RawBlock

# (kind or None for every kind, field) -> what a value above max_seq_len means
LONGER_THAN_SEQUENCE = {
    (None, "window"): "every token sees the whole sequence, as in full attention",
    ("rat", "chunk_size"): "a sequence of max_seq_len tokens is one chunk, as in the rnn",
}


def _checks(raw: RawBlock, params, model: ModelConfig, source: Source) -> list[SpecIssue]:
    out = []
    for (kind, name), meaning in LONGER_THAN_SEQUENCE.items():
        value = getattr(params, name, None)
        if kind not in (None, raw.kind) or not isinstance(value, int):
            continue
        if value > model.max_seq_len:
            path = raw.params[name][1] if name in raw.params else raw.origin
            note = f" {raw.note}" if raw.note else ""
            note = "" if name in raw.params else f" ({raw.kind} block{note})"
            out.append(
                source.issue(
                    path,
                    f"{name} ({value:,}) is larger than model.max_seq_len "
                    f"({model.max_seq_len:,}): {meaning}{note}",
                )
            )
    return out


def plan_warnings(
    source: Source, raw: list[RawBlock], planned: list[PlannedBlock], model: ModelConfig
) -> list[SpecIssue]:
    """The warnings of a compiled spec, each at the value it is about, once."""
    out: list[SpecIssue] = []
    for r, b in zip(raw, planned, strict=True):
        out += _checks(r, b.params, model, source)
        for rb, pb in zip(r.branches, getattr(b.params, "branches", ()), strict=False):
            out += _checks(rb, pb, model, source)
    return sorted(set(out), key=lambda e: (e.file, e.line, e.col, e.path, e.message))
