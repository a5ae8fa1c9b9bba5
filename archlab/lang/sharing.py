"""Cross-layer cache sharing (`share_cache: N`): resolve, check, and mark the sharers.

A block with `share_cache` reads the keys and values of an earlier block (an index in the
expanded stack, or a block's `name`) instead of computing its own; chains resolve to their
source. Sharing is valid between blocks of the same kind, for kinds whose record has a
`cache_geometry`, when that geometry agrees.
"""

from __future__ import annotations

import dataclasses

from archlab.blocks.base import ModelConfig
from archlab.blocks.registry import kinds as block_kinds
from archlab.lang.errors import SpecIssue
from archlab.lang.loader import Source
from archlab.lang.plan import PlannedBlock
from archlab.lang.stack import RawBlock, suggest


def shareable() -> dict[str, object]:
    """The kinds that can read another block's cache (their record has `cache_geometry`)."""
    return {n: k for n, k in block_kinds().items() if k.cache_geometry is not None}


def geometry(block: PlannedBlock, d_model: int) -> dict:
    """What must agree between a cache's source and a block that reads it."""
    return block_kinds()[block.kind].cache_geometry(block.params, d_model)


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
        kinds = shareable()
        if b.kind not in kinds or "share_cache" not in kinds[b.kind].params.model_fields:
            errors.append(
                source.issue(path, f"`share_cache` is for {', '.join(kinds)} blocks, not {b.kind}")
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
        if "kv_heads" in theirs and out[i].params.heads % theirs["kv_heads"]:
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
