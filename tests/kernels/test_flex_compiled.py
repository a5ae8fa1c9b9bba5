"""kernels/flex_compiled.py: compiled FlexAttention never falls back to eager execution."""

import pytest
import torch

from archlab.kernels import flex_compiled


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo keeps its graphs per code object, across wrappers: start each test clean."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def scaled_sum(x):
    return (x * 2).sum()


def compiled_counting(graphs):
    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return flex_compiled.compile_guarded(scaled_sum, dynamic=False, backend=backend)


def test_more_shapes_than_dynamos_default_limit_each_compile():
    """Dynamo runs a function eagerly after 8 graphs; eager flex_attention would build the
    whole score matrix. Twelve lengths give twelve graphs, and the right results."""
    graphs = []
    fn = compiled_counting(graphs)
    for n in range(1, 13):
        x = torch.randn(n)
        assert torch.allclose(fn(x), 2 * x.sum())
    assert len(graphs) == 12


def test_limit_reached_is_an_error_not_an_eager_fallback(monkeypatch):
    monkeypatch.setattr(flex_compiled, "RECOMPILE_LIMIT", 3)
    graphs = []
    fn = compiled_counting(graphs)
    for n in range(1, 4):
        fn(torch.randn(n))
    with pytest.raises(flex_compiled.RecompileLimitError, match="compiled for 3 shapes"):
        fn(torch.randn(4))
    assert len(graphs) == 3


def test_other_code_keeps_dynamos_limit():
    before = torch._dynamo.config.recompile_limit
    compiled_counting([])(torch.randn(2))
    assert torch._dynamo.config.recompile_limit == before


def test_traced_whole_inside_an_enclosing_compile():
    """A model compiled whole (fullgraph) traces through the guard, with no graph break."""
    inner = compiled_counting([])
    outer = torch.compile(lambda x: inner(x) + 1, backend="eager", fullgraph=True)
    x = torch.randn(5)
    assert torch.allclose(outer(x), 2 * x.sum() + 1)
