"""Cross-layer cache sharing (`share_cache: N`): resolve, check, and mark the sharers.

A block with `share_cache` reads the keys and values of an earlier block (an index in the
expanded stack, or a block's `name`) instead of computing its own; chains resolve to their
source. Sharing is valid between blocks of the same kind among attention, local_attention
and rat with the same key/value geometry (below).
"""

from __future__ import annotations

import dataclasses

from archlab.blocks import BLOCKS
from archlab.config import ModelConfig
from archlab.errors import SpecIssue
from archlab.loader import Source
from archlab.plan import PlannedBlock
from archlab.stack import RawBlock, suggest

SHAREABLE = ("attention", "local_attention", "rat")


def geometry(block: PlannedBlock, d_model: int) -> dict:
    """What must agree between a cache's source and a block that reads it."""
    p = block.params
    head_dim = p.head_dim or d_model // p.heads
    if block.kind == "rat":
        return {
            "kind": "rat",
            "heads": p.heads,
            "head_dim": head_dim,
            "chunk_size": p.chunk_size,
            "rope": p.rope,
        }
    return {
        "kind": block.kind,
        "kv_heads": p.kv_heads or p.heads,
        "head_dim": head_dim,
        "rope": p.rope,
        "rope_theta": p.rope_theta,
        "window": getattr(p, "window", None),
    }


def resolve_sharing(
    source: Source,
    raw: list[RawBlock],
    planned: list[PlannedBlock],
    model: ModelConfig,
    errors: list[SpecIssue],
) -> list[PlannedBlock]:
    """Resolve every `share_cache` to the index of its source block (chains followed) and
    store it in the sharer's params; names must be unique."""
    names: dict[str, int] = {}
    for i, b in enumerate(raw):
        if b.name is None:
            continue
        name, path = b.name
        if name in names:
            errors.append(
                source.issue(path, f"block name {name!r} is already used by block {names[name]}")
            )
        else:
            names[name] = i
    out = list(planned)
    for i, b in enumerate(raw):
        if b.share is None:
            continue
        target, path = b.share
        if b.kind not in SHAREABLE or "share_cache" not in BLOCKS[b.kind].Params.model_fields:
            errors.append(
                source.issue(
                    path, f"`share_cache` is for {', '.join(SHAREABLE)} blocks, not {b.kind}"
                )
            )
            continue
        if isinstance(target, str):
            if target not in names:
                errors.append(
                    source.issue(path, f"no block is named {target!r}" + suggest(target, names))
                )
                continue
            index = names[target]
        else:
            index = target
        if not 0 <= index < i:
            errors.append(
                source.issue(
                    path, f"must name an earlier block (this is block {i}; got {target!r})"
                )
            )
            continue
        root = out[index].shares_cache_of
        root = index if root is None else root
        if out[root].kind != b.kind:
            errors.append(
                source.issue(
                    path,
                    f"cannot share the cache of block {root}: it is "
                    f"a {out[root].kind} block, this one {b.kind}",
                )
            )
            continue
        mine, theirs = geometry(out[i], model.d_model), geometry(out[root], model.d_model)
        diff = [f"{k} {mine[k]!r} vs {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]
        if diff:
            errors.append(
                source.issue(path, f"cannot share the cache of block {root}: " + ", ".join(diff))
            )
            continue
        if out[i].kind != "rat" and out[i].params.heads % theirs["kv_heads"]:
            errors.append(
                source.issue(
                    path,
                    f"heads ({out[i].params.heads}) must be a multiple "
                    f"of the source's kv_heads ({theirs['kv_heads']})",
                )
            )
            continue
        params = out[i].params.model_copy(update={"share_cache": root})
        out[i] = dataclasses.replace(out[i], params=params)
    return out
