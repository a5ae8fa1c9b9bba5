"""The Plan: a networkx DiGraph of the model plus the ordered list of its blocks.

Nodes: `embedding`, `block{i}` (one per block), `final_norm`, `lm_head`. Edges with
`kind="residual"` carry the residual stream. Build, cost and show read the Plan only,
never the YAML; they walk `Plan.order()` (a topological order of the graph), so that
graphs that are not a plain chain (parallel branches, cache-sharing edges) fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from archlab.blocks.base import BlockParams
from archlab.config import ModelConfig


@dataclass(frozen=True)
class PlannedBlock:
    """One residual block of the expanded stack."""

    index: int
    kind: str
    params: BlockParams
    origin: str = ""  # the spec path that produced it, for messages

    @property
    def node(self) -> str:
        return f"block{self.index}"

    def summary(self) -> dict:
        """The params that differ from their defaults, without `kind`."""
        return self.params.model_dump(exclude_defaults=True, exclude={"kind"})


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
        graph.add_node(b.node, role="block", kind=b.kind, index=b.index)
        graph.add_edge(previous, b.node, kind="residual")
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
