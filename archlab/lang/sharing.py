"""Cross-layer cache sharing (`share_cache`): resolve, check, and mark the sharers.

A block, or a branch of a parallel block, with `share_cache` reads the keys and values of
an earlier block or of a branch of an earlier parallel block instead of computing its own.
The source is written as an index in the expanded stack (`3`), a `name` (a block's or a
branch's: names share one namespace), or `[block, branch]` (the block an index or a name,
the branch an index) for a branch. Chains resolve to their source. Sharing is valid
between mixers of the same kind, for kinds whose record has a `cache_geometry`, when that
geometry agrees; the source lies in an earlier block (not in the reader's own parallel
block).
"""

from __future__ import annotations

import dataclasses

from archlab.blocks.base import BlockParams, ModelConfig
from archlab.blocks.registry import kinds as block_kinds
from archlab.lang.errors import SpecIssue
from archlab.lang.loader import Source
from archlab.lang.plan import CacheRef, PlannedBlock
from archlab.lang.stack import RawBlock, suggest


def shareable() -> dict[str, object]:
    """The kinds that can read another block's cache (their record has `cache_geometry`)."""
    return {n: k for n, k in block_kinds().items() if k.cache_geometry is not None}


def geometry(block: PlannedBlock | BlockParams, d_model: int) -> dict:
    """What must agree between a cache's source and a block (or branch) that reads it."""
    params = block.params if isinstance(block, PlannedBlock) else block
    return block_kinds()[params.kind].cache_geometry(params, d_model)


def where(ref: CacheRef) -> str:
    """'block 3', or 'branch 1 of block 3'."""
    block, branch = ref
    return f"block {block}" if branch is None else f"branch {branch} of block {block}"


def _names(source: Source, raw: list[RawBlock], errors: list[SpecIssue]) -> dict[str, CacheRef]:
    """Every `name` (blocks' and branches', one namespace) -> where it is; a name used
    twice is an error."""
    names: dict[str, CacheRef] = {}
    for i, b in enumerate(raw):
        for ref, part in [((i, None), b)] + [((i, j), x) for j, x in enumerate(b.branches)]:
            if part.name is None:
                continue
            name, path = part.name
            if name in names:
                what = "block" if ref[1] is None else "branch"
                errors.append(
                    source.issue(
                        path, f"{what} name {name!r} is already used by {where(names[name])}"
                    )
                )
            else:
                names[name] = ref
    return names


def _target(source: Source, share, names: dict[str, CacheRef], errors) -> CacheRef | None:
    """The place a `share_cache` value names: (block, branch or None)."""
    target, path = share
    if isinstance(target, list):
        block, branch = target
        if isinstance(block, str):
            if block not in names:
                errors.append(
                    source.issue(path, f"no block is named {block!r}" + suggest(block, names))
                )
                return None
            if names[block][1] is not None:
                errors.append(
                    source.issue(
                        path,
                        f"{block!r} names {where(names[block])}, not a block "
                        f"(write share_cache: {block})",
                    )
                )
                return None
            block = names[block][0]
        return block, branch
    if isinstance(target, str):
        if target not in names:
            errors.append(
                source.issue(path, f"no block is named {target!r}" + suggest(target, names))
            )
            return None
        return names[target]
    return target, None


def _place_problem(ref: CacheRef, reader: CacheRef, out: list[PlannedBlock], target) -> str | None:
    """Why `ref` is no earlier cache for `reader` (None when it is one)."""
    block, branch = ref
    if not 0 <= block < reader[0]:
        this = f"this is {where(reader)}"
        return f"must name an earlier block ({this}; got {target!r})"
    branches = getattr(out[block].params, "branches", None)
    if branch is not None and not branches:
        return f"block {block} is a {out[block].kind} block: it has no branch {branch}"
    if branch is not None and not 0 <= branch < len(branches):
        return (
            f"block {block} has {len(branches)} branches (0..{len(branches) - 1}); "
            f"got branch {branch}"
        )
    return None


def _check(ref: CacheRef, mine: BlockParams, out: list[PlannedBlock], model) -> str | None:
    """Why the reader `mine` cannot read the cache at `ref` (its source, chains followed),
    or None."""
    block, branch = ref
    theirs = out[block].mixer(branch)
    if theirs.kind != mine.kind:
        hint = ""
        if branch is None and getattr(theirs, "branches", None):
            hint = f" (name one of its branches: [{block}, j] or the branch's `name`)"
        what = "branch" if branch is not None else "block"
        return (
            f"cannot share the cache of {where(ref)}: it is a {theirs.kind} {what}, "
            f"this one {mine.kind}{hint}"
        )
    a, b = geometry(mine, model.d_model), geometry(theirs, model.d_model)
    diff = [f"{k} {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]
    if diff:
        return f"cannot share the cache of {where(ref)}: " + ", ".join(diff)
    if "kv_heads" in b and mine.heads % b["kv_heads"]:
        kv = b["kv_heads"]
        return f"heads ({mine.heads}) must be a multiple of the source's kv_heads ({kv})"
    return None


def resolve_sharing(
    source: Source,
    raw: list[RawBlock],
    planned: list[PlannedBlock],
    model: ModelConfig,
    errors: list[SpecIssue],
) -> list[PlannedBlock]:
    """Resolve every `share_cache` (of blocks and of parallel branches) to its source, chains
    followed: the source's block index goes into the reader's `share_cache` param, and,
    where the source is a branch, its branch index into the block's `source_branches`."""
    names = _names(source, raw, errors)
    kinds = shareable()
    out = list(planned)
    for i, b in enumerate(raw):
        reads: dict[int | None, CacheRef] = {}
        for j, part in [(None, b)] + list(enumerate(b.branches)):
            if part.share is None:
                continue
            path = part.share[1]
            if part.kind not in kinds or "share_cache" not in kinds[part.kind].params.model_fields:
                what = "branches" if j is not None else "blocks"
                errors.append(
                    source.issue(
                        path, f"`share_cache` is for {', '.join(kinds)} {what}, not {part.kind}"
                    )
                )
                continue
            ref = _target(source, part.share, names, errors)
            if ref is None:
                continue
            problem = _place_problem(ref, (i, j), out, part.share[0])
            if problem is None:
                ref = out[ref[0]].cache_reads().get(ref[1], ref)  # a sharer's source
                problem = _check(ref, out[i].mixer(j), out, model)
            if problem is not None:
                errors.append(source.issue(path, problem))
                continue
            reads[j] = ref
        if reads:
            out[i] = _with_reads(out[i], reads)
    return out


def _with_reads(block: PlannedBlock, reads: dict[int | None, CacheRef]) -> PlannedBlock:
    """`block` with its readers' sources set: the source block's index in each reader's
    `share_cache`, the source branch (where there is one) in `source_branches`."""
    params = block.params
    if None in reads:
        params = params.model_copy(update={"share_cache": reads[None][0]})
    branches = getattr(params, "branches", None)
    if branches and any(j is not None for j in reads):
        new = [
            x if j not in reads else x.model_copy(update={"share_cache": reads[j][0]})
            for j, x in enumerate(branches)
        ]
        params = params.model_copy(update={"branches": new})
    pairs = tuple((j, ref[1]) for j, ref in reads.items() if ref[1] is not None)
    return dataclasses.replace(block, params=params, source_branches=pairs)
