"""The Plan: a networkx DiGraph of the model plus the ordered list of its blocks.

Nodes: `embedding`, `block{i}` (one per block), `block{i}.{j}` (branch j of a parallel
block), `final_norm`, `lm_head`. Edges: `residual` (the residual stream), `branch` and
`merge` (into and out of a parallel block's branches), `cache_share` (from the block
whose keys/values a later block reads), `tied_weights` (embedding -> head when tied).
Build, cost and show read the Plan only, never the YAML; they walk `Plan.order()` (a
topological order of the graph), so that graphs that are not a plain chain fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from archlab.blocks.base import BlockParams
from archlab.blocks.base import ModelConfig


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
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)

    def order(self) -> list[PlannedBlock]:
        """Blocks in execution order (a topological order of the graph)."""
        by_node = {b.node: b for b in self.blocks}
        return [by_node[n] for n in nx.topological_sort(self.graph) if n in by_node]

    def kinds(self) -> dict[str, int]:
        """How many blocks of each kind."""
        counts: dict[str, int] = {}
        for b in self.blocks:
            counts[b.kind] = counts.get(b.kind, 0) + 1
        return counts


def make_plan(
    name: str, description: str, file: str, model: ModelConfig, blocks: list[PlannedBlock]
) -> Plan:
    """Lay the blocks out as a chain on the residual stream."""
    graph = nx.DiGraph(name=name)
    graph.add_node("embedding", role="embedding")
    previous = "embedding"
    for b in blocks:
        graph.add_node(b.node, role="block", kind=b.kind, index=b.index, name=b.name)
        for j, branch in enumerate(getattr(b.params, "branches", ())):
            node = f"{b.node}.{j}"
            graph.add_node(node, role="branch", kind=branch.kind, index=b.index, branch=j)
            graph.add_edge(previous, node, kind="branch")
            graph.add_edge(node, b.node, kind="merge")
        graph.add_edge(previous, b.node, kind="residual")
        if b.shares_cache_of is not None:
            graph.add_edge(f"block{b.shares_cache_of}", b.node, kind="cache_share")
        previous = b.node
    graph.add_node("final_norm", role="norm")
    graph.add_node("lm_head", role="head", tied=model.tie_embeddings)
    graph.add_edge(previous, "final_norm", kind="residual")
    graph.add_edge("final_norm", "lm_head", kind="residual")
    if model.tie_embeddings:
        graph.add_edge("embedding", "lm_head", kind="tied_weights")
    plan = Plan(name, description, file, model, blocks, graph)
    assert nx.is_directed_acyclic_graph(graph)
    return plan
