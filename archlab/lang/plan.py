"""The Plan: a networkx DiGraph of the model plus the ordered list of its blocks.

Nodes: `embedding`, `block{i}` (one per block), `block{i}.{j}` (branch j of a parallel
block), `final_norm`, `lm_head`. Edges: `residual` (the residual stream), `branch` and
`merge` (into and out of a parallel block's branches), `cache_share` (from the block
whose keys/values a later block reads), `tied_weights` (embedding -> head when tied).
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


@dataclass(frozen=True)
class PlannedBlock:
    """One residual block of the expanded stack."""

    index: int
    kind: str
    params: BlockParams
    origin: str = ""  # the spec path that produced it, for messages
    name: str | None = None

    @property
    def shares_cache_of(self) -> int | None:
        """Index of the block whose keys/values and cache this block reads, if any."""
        return getattr(self.params, "share_cache", None)

    @property
    def node(self) -> str:
        return f"block{self.index}"

    def resolved(self) -> dict:
        """Every param with its value (defaults included), without `kind`; a parallel
        block's branches as a list of such dicts, each with its `kind`."""
        out = self.params.model_dump(exclude={"kind", "branches"})
        branches = getattr(self.params, "branches", None)
        if branches:
            out["branches"] = [b.model_dump() for b in branches]
        return out

    def summary(self) -> dict:
        """The params that differ from their defaults, without `kind`; a parallel block's
        branches as one string, `attention(heads=8) | ssm()`."""
        out = self.params.model_dump(exclude_defaults=True, exclude={"kind", "branches"})
        branches = getattr(self.params, "branches", None)
        if branches:
            out["branches"] = " | ".join(
                f"{b.kind}({', '.join(f'{k}={v}' for k, v in _short(b).items())})" for b in branches
            )
        return out


def _short(params: BlockParams) -> dict:
    return params.model_dump(exclude_defaults=True, exclude={"kind", "backend"})


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
        for j, branch in enumerate(getattr(b.params, "branches", ())):
            node = f"{b.node}.{j}"
            nodes[node] = {"role": "branch", "kind": branch.kind, "index": b.index, "branch": j}
            edges += [(previous, node, {"kind": "branch"}), (node, b.node, {"kind": "merge"})]
        edges.append((previous, b.node, {"kind": "residual"}))
        if b.shares_cache_of is not None:
            edges.append((f"block{b.shares_cache_of}", b.node, {"kind": "cache_share"}))
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
