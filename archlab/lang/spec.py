"""The language's constants and its model as written (every block kind's params keyed by
`kind`), from which the JSON Schema that editors validate YAML with is made. The compiler
validates each block with its kind's own `Params`, so that errors carry positions."""

import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from archlab.blocks.registry import kind as block_kind
from archlab.blocks.registry import kinds as block_kinds
from archlab.blocks.base import ModelConfig

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


def numeric_kind(annotation: Any) -> type | None:
    """int or float if a field holds a number (possibly optional), else None."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    for t in (annotation, *args):
        if t in (int, float):
            return t
    return None


def _raw_params_model(kind: str, role: str) -> type[BaseModel]:
    """The params of `kind` as written in YAML (numbers may be expressions, strings). Every
    field is optional: `defaults` may supply it. `role` is "Block" (a stack item: `kind`
    required, `name` and `share_cache` allowed) or "Defaults" (params only)."""
    fields: dict[str, Any] = {}
    for name, info in block_kind(kind).params.model_fields.items():
        if name in ("kind", "share_cache", "branches"):
            continue
        annotation = info.annotation
        if numeric_kind(annotation) is not None:
            annotation = annotation | str
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else None
        fields[name] = (
            annotation | None,
            Field(default=None, description=info.description, json_schema_extra=extra),
        )
    if role == "Block":
        fields["kind"] = (Literal[kind], ...)
        fields["name"] = (str | None, Field(None, description="a name for `share_cache`"))
        if "share_cache" in block_kind(kind).params.model_fields:
            fields["share_cache"] = (
                int | str | None,
                Field(None, description="read the keys/values of this earlier block"),
            )
    return create_model(
        f"{kind.title().replace('_', '')}{role}",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )


def language_model() -> type[BaseModel]:
    """A pydantic model of a spec file as written (language version 1), which the JSON
    Schema is made from; the compiler's own checks go further (positions, cross-field)."""
    kinds = [k for k, rec in block_kinds().items() if not rec.composite]
    block = Union[tuple(_raw_params_model(k, "Block") for k in kinds)]  # noqa: UP007
    kind_name = Literal[tuple(kinds)]
    defaults = create_model(
        "Defaults",
        __config__=ConfigDict(extra="forbid"),
        **{k: (_raw_params_model(k, "Defaults") | None, None) for k in block_kinds()},
    )

    model_fields = create_model(  # every field optional: a spec that extends may set a few
        "Model",
        __config__=ConfigDict(extra="forbid"),
        **{
            k: (info.annotation | None, Field(None, description=info.description))
            for k, info in ModelConfig.model_fields.items()
        },
    )

    class Parallel(BaseModel):
        model_config = ConfigDict(extra="forbid")
        parallel: list[kind_name | block] = Field(min_length=1, description="the branches")
        merge: Literal["mean", "sum", "concat"] | None = None
        name: str | None = None

    class Repeat(BaseModel):
        model_config = ConfigDict(extra="forbid")
        repeat: int = Field(ge=1, description="how many times to repeat `stack`")
        stack: list["StackItem"]

    class Pattern(BaseModel):
        model_config = ConfigDict(extra="forbid")
        pattern: str = Field(description='symbols, e.g. "(R- L-)x12"')

    StackItem = kind_name | block | Parallel | Repeat | Pattern | str  # noqa: N806
    Repeat.model_rebuild(_types_namespace={"StackItem": StackItem})
    Defaults, Model = defaults, model_fields  # noqa: N806
    Patch = dict[str, Any]  # noqa: N806 - params merged into the block at that index

    class SpecFile(BaseModel):
        """An archlab spec (language version 1). `model` and `stack` are required, unless
        the spec `extends` one that has them."""

        model_config = ConfigDict(extra="forbid", title="archlab spec")
        archlab: Literal[1] = 1
        name: str | None = None
        description: str | None = None
        extends: str | None = Field(None, description="path of a spec to extend")
        model: Model | None = None
        defaults: Defaults | None = None
        symbols: dict[str, kind_name | block | Parallel] | None = None
        stack: list[StackItem] | Pattern | str | None = None
        at: dict[int, block | Parallel | kind_name | Patch] | None = None

    return SpecFile


def json_schema() -> dict:
    """JSON Schema of a spec file (language version 1), for editors' YAML validation."""
    return language_model().model_json_schema()
