"""Pydantic models of the language: the resolved spec (a discriminated union of every
block kind's `Params` on `kind`) and the JSON Schema that editors validate YAML with."""

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from archlab.blocks import BLOCKS
from archlab.config import ModelConfig

LANGUAGE_VERSION = 1
TOP_LEVEL_KEYS = (
    "archlab",
    "name",
    "description",
    "extends",
    "model",
    "defaults",
    "symbols",
    "stack",
    "at",
)
MAX_BLOCKS = 10_000
EXPRESSION_NAMES = ("d_model", "vocab_size", "max_seq_len", "norm_eps")

BlockSpec = Annotated[
    Union[tuple(mod.Params for mod in BLOCKS.values())],  # noqa: UP007
    Field(discriminator="kind"),
]
BLOCK_ADAPTER: TypeAdapter = TypeAdapter(BlockSpec)


class ResolvedSpec(BaseModel):
    """A spec after every resolution step: the model and the flat list of blocks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    model: ModelConfig
    blocks: list[BlockSpec]


def numeric_kind(annotation: Any) -> type | None:
    """int or float if a field holds a number (possibly optional), else None."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    for t in (annotation, *args):
        if t in (int, float):
            return t
    return None


def _raw_params_model(kind: str, all_optional: bool) -> type[BaseModel]:
    """The params of `kind` as written in YAML: numbers may be expressions (strings)."""
    fields: dict[str, Any] = {}
    for name, info in BLOCKS[kind].Params.model_fields.items():
        annotation = info.annotation
        if numeric_kind(annotation) is not None:
            annotation = annotation | str
        required = info.is_required() and not all_optional and name != "kind"
        default = ... if required else None
        if name == "kind":
            annotation = Literal[kind] if not all_optional else Literal[kind] | None
        fields[name] = (annotation, Field(default=default, description=info.description))
    suffix = "Defaults" if all_optional else "Block"
    return create_model(
        f"{kind.title().replace('_', '')}{suffix}",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )


def json_schema() -> dict:
    """JSON Schema of a spec file (language version 1), for editors' YAML validation."""
    blocks = [_raw_params_model(k, False) for k in BLOCKS]
    block = Union[tuple(blocks)]  # noqa: UP007
    kind_name = Literal[tuple(BLOCKS)]
    defaults = create_model(
        "Defaults",
        __config__=ConfigDict(extra="forbid"),
        **{k: (_raw_params_model(k, True) | None, None) for k in BLOCKS},
    )

    class Repeat(BaseModel):
        model_config = ConfigDict(extra="forbid")
        repeat: int | str = Field(description="how many times to repeat `stack`")
        stack: list["StackItem"]

    class Pattern(BaseModel):
        model_config = ConfigDict(extra="forbid")
        pattern: str = Field(description='symbols, e.g. "(R- L-)x12"')

    StackItem = kind_name | block | Repeat | Pattern | str  # noqa: N806
    Repeat.model_rebuild(_types_namespace={"StackItem": StackItem})
    Defaults = defaults  # noqa: N806

    class SpecFile(BaseModel):
        """An archlab spec (language version 1)."""

        model_config = ConfigDict(extra="forbid", title="archlab spec")
        archlab: Literal[1] = 1
        name: str | None = None
        description: str | None = None
        extends: str | None = Field(None, description="path of a spec to extend")
        model: ModelConfig
        defaults: Defaults | None = None
        symbols: dict[str, kind_name | block] | None = None
        stack: list[StackItem] | Pattern | str
        at: dict[int, block | kind_name | dict] | None = None

    return SpecFile.model_json_schema()
