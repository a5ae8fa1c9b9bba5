"""The Plan: a networkx DiGraph of the model plus the ordered list of its blocks.

Nodes: `embedding`, `block{i}` (one per block), `block{i}.{j}` (branch j of a parallel
block), `final_norm`, `lm_head`. Edges: `residual` (the residual stream), `branch` and
`merge` (into and out of a parallel block's branches), `cache_share` (from the block or
branch whose keys/values a later block or branch reads), `tied_weights` (embedding -> head
when tied).
Build, cost and show read the Plan only, never the YAML; they walk `Plan.order()` (a
topological order of the graph), so that graphs that are not a plain chain fit. The
networkx graph itself (`Plan.graph`) is made on first use from the Plan's nodes and
edges, so that validating and costing never import networkx.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from archlab.blocks.base import BlockParams, ModelConfig
from archlab.lang.errors import SpecIssue

Edge = tuple[str, str, dict]  # (from, to, attributes)
# Where a cache lives: (block index, branch index), the branch None for the block itself.
CacheRef = tuple[int, int | None]


def ref_value(ref: CacheRef) -> int | list[int]:
    """A cache's place as a spec writes it in `share_cache`: 3 (block 3) or [3, 1] (its
    branch 1)."""
    return ref[0] if ref[1] is None else [ref[0], ref[1]]


def ref_node(ref: CacheRef) -> str:
    """The Plan node of a cache's place: `block3`, or `block3.1` for its branch 1."""
    return f"block{ref[0]}" if ref[1] is None else f"block{ref[0]}.{ref[1]}"


@dataclass(frozen=True)
class PlannedBlock:
    """One residual block of the expanded stack."""

    index: int
    kind: str
    params: BlockParams
    origin: str = ""  # the spec path that produced it, for messages
    name: str | None = None
    branch_names: tuple[str | None, ...] = ()  # a parallel block's branches' `name`s
    # (reader, branch) pairs: the branch of its source block that a reader (None: this
    # block; j: its branch j) reads, where that source is a branch of a parallel block
    source_branches: tuple[tuple[int | None, int], ...] = ()

    @property
    def shares_cache_of(self) -> int | None:
        """Index of the block whose keys/values and cache this block itself reads, if any
        (its branches' reads: `cache_reads`)."""
        return getattr(self.params, "share_cache", None)

    def cache_reads(self) -> dict[int | None, CacheRef]:
        """Every cache this block's mixers read instead of their own (`share_cache`):
        reader (None: the block itself; j: its branch j) -> where the cache lives
        (block index, branch index or None)."""
        branch_of = dict(self.source_branches)
        out: dict[int | None, CacheRef] = {}
        if self.shares_cache_of is not None:
            out[None] = (self.shares_cache_of, branch_of.get(None))
        for j, b in enumerate(getattr(self.params, "branches", None) or ()):
            if getattr(b, "share_cache", None) is not None:
                out[j] = (b.share_cache, branch_of.get(j))
        return out

    def mixer(self, branch: int | None) -> BlockParams:
        """The params of the block itself (None) or of its branch `branch`."""
        return self.params if branch is None else self.params.branches[branch]

    @property
    def node(self) -> str:
        return f"block{self.index}"

    def resolved(self) -> dict:
        """Every param with its value (defaults included), without `kind`; a parallel
        block's branches as a list of such dicts, each with its `kind`."""
        reads = {j: ref_value(ref) for j, ref in self.cache_reads().items()}
        out = self.params.model_dump(exclude={"kind", "branches"})
        if None in reads:
            out["share_cache"] = reads[None]
        branches = getattr(self.params, "branches", None)
        if branches:
            out["branches"] = [
                _with_read(b.model_dump(), reads.get(j)) for j, b in enumerate(branches)
            ]
        return out

    def summary(self) -> dict:
        """The params that differ from their defaults, without `kind`; a parallel block's
        branches as one string, `attention(heads=8) | ssm()`."""
        reads = {j: ref_value(ref) for j, ref in self.cache_reads().items()}
        out = self.params.model_dump(exclude_defaults=True, exclude={"kind", "branches"})
        if None in reads:
            out["share_cache"] = reads[None]
        branches = getattr(self.params, "branches", None)
        if branches:
            parts = []
            for j, b in enumerate(branches):
                shown = branch_summary(b, reads.get(j))
                parts.append(f"{b.kind}({', '.join(f'{k}={v}' for k, v in shown.items())})")
            out["branches"] = " | ".join(parts)
        return out


def _with_read(values: dict, read) -> dict:
    return values if read is None else {**values, "share_cache": read}


def branch_summary(params: BlockParams, read: int | list[int] | None = None) -> dict:
    """A branch's params that differ from their defaults, without `kind` and `backend`;
    `share_cache` as `read` (its source's place, `ref_value`) when given."""
    out = params.model_dump(exclude_defaults=True, exclude={"kind", "backend"})
    return _with_read(out, read)


@dataclass
class Plan:
    """A validated, expanded spec."""

    name: str
    description: str
    file: str
    model: ModelConfig
    blocks: list[PlannedBlock]
    nodes: dict[str, dict] = field(default_factory=dict)  # node -> attributes, in order
    edges: list[Edge] = field(default_factory=list)
    # valid, but probably not what was meant (a window longer than max_seq_len, ...)
    warnings: list[SpecIssue] = field(default_factory=list)
    # "model.max_seq_len" -> (file, line, col) where it was written (or its nearest parent)
    positions: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    def issue(self, path: str, message: str) -> SpecIssue:
        """A SpecIssue about `path` (a key of `positions`), for warnings made later."""
        file, line, col = self.positions.get(path, (self.file, 0, 0))
        return SpecIssue(file, line, col, path, message)

    @functools.cached_property
    def graph(self):
        """The plan as a networkx DiGraph (nodes and edges with their attributes)."""
        import networkx as nx

        graph = nx.DiGraph(name=self.name)
        for node, attrs in self.nodes.items():
            graph.add_node(node, **attrs)
        for a, b, attrs in self.edges:
            graph.add_edge(a, b, **attrs)
        return graph

    def order(self) -> list[PlannedBlock]:
        """Blocks in execution order (a topological order of the graph)."""
        by_node = {b.node: b for b in self.blocks}
        return [by_node[n] for n in topological_order(self.nodes, self.edges) if n in by_node]

    def kinds(self) -> dict[str, int]:
        """How many blocks of each kind."""
        counts: dict[str, int] = {}
        for b in self.blocks:
            counts[b.kind] = counts.get(b.kind, 0) + 1
        return counts


def make_plan(
    name: str,
    description: str,
    file: str,
    model: ModelConfig,
    blocks: list[PlannedBlock],
    warnings: list[SpecIssue] | None = None,
) -> Plan:
    """Lay the blocks out as a chain on the residual stream."""
    nodes: dict[str, dict] = {"embedding": {"role": "embedding"}}
    edges: list[Edge] = []
    previous = "embedding"
    for b in blocks:
        nodes[b.node] = {"role": "block", "kind": b.kind, "index": b.index, "name": b.name}
        names = dict(enumerate(b.branch_names))
        for j, branch in enumerate(getattr(b.params, "branches", ())):
            node = f"{b.node}.{j}"
            nodes[node] = {"role": "branch", "kind": branch.kind, "index": b.index, "branch": j}
            nodes[node]["name"] = names.get(j)
            edges += [(previous, node, {"kind": "branch"}), (node, b.node, {"kind": "merge"})]
        edges.append((previous, b.node, {"kind": "residual"}))
        for reader, ref in b.cache_reads().items():
            edges.append((ref_node(ref), ref_node((b.index, reader)), {"kind": "cache_share"}))
        previous = b.node
    nodes["final_norm"] = {"role": "norm"}
    nodes["lm_head"] = {"role": "head", "tied": model.tie_embeddings}
    edges.append((previous, "final_norm", {"kind": "residual"}))
    edges.append(("final_norm", "lm_head", {"kind": "residual"}))
    if model.tie_embeddings:
        edges.append(("embedding", "lm_head", {"kind": "tied_weights"}))
    plan = Plan(name, description, file, model, blocks, nodes, edges, list(warnings or []))
    assert len(topological_order(nodes, edges)) == len(nodes), "the plan has a cycle"
    return plan


def topological_order(nodes: dict[str, dict], edges: list[Edge]) -> list[str]:
    """The nodes in an order where every edge points forward (Kahn's algorithm, ties
    broken by the nodes' own order); nodes on a cycle are left out."""
    rank = {n: i for i, n in enumerate(nodes)}
    indegree = dict.fromkeys(nodes, 0)
    after: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b, _ in edges:
        after[a].append(b)
        indegree[b] += 1
    ready = sorted((n for n, d in indegree.items() if d == 0), key=rank.get, reverse=True)
    out = []
    while ready:
        n = ready.pop()
        out.append(n)
        for m in after[n]:
            indegree[m] -= 1
            if indegree[m] == 0:
                ready.append(m)
                ready.sort(key=rank.get, reverse=True)
    return out
