"""The language's constants and its model as written (every block kind's params keyed by
`kind`), from which the JSON Schema that editors validate YAML with is made. The compiler
validates each block with its kind's own `Params`, so that errors carry positions."""

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model
from pydantic_core import PydanticUndefined

from archlab.blocks.base import ModelConfig
from archlab.blocks.registry import kind as block_kind
from archlab.blocks.registry import kinds as block_kinds

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


PATTERN_REGEX = r"^\s*[^\sa-wyz][^a-wyz]*$"  # for editors: no lower-case letters but x
PATTERN_HELP = (
    'a pattern of block symbols, e.g. "(R- L-)x12": one symbol per block, (...)xN repeats '
    "a group, spaces ignored (the schema takes symbols that are not lower-case letters)"
)


def _schema_extra(extra: dict | None, has_default: bool):
    """A json_schema_extra that adds `extra` and drops a `default` that is no real one."""

    def update(schema: dict) -> None:
        schema.update(extra or {})
        if not has_default:
            schema.pop("default", None)

    return update


def _field(annotation, default, description: str, extra: dict | None = None):
    """(annotation, Field) of an optional field whose schema shows `default` only when it
    is a real one (not the None that stands for "not written")."""
    real = default is not PydanticUndefined and default is not None
    return (
        annotation,
        Field(
            default if real else None,
            description=description,
            json_schema_extra=_schema_extra(extra, real),
        ),
    )


def _params_fields(kind: str) -> dict[str, Any]:
    """The fields of `kind`'s params as written in YAML: numbers may be expressions
    (strings); every field optional (`defaults` may supply it), its real default shown."""
    fields: dict[str, Any] = {}
    for name, info in block_kind(kind).params.model_fields.items():
        if name in ("kind", "share_cache", "branches"):
            continue
        annotation = info.annotation
        if numeric_kind(annotation) is not None:
            annotation = annotation | str
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else None
        description = info.description or name
        if numeric_kind(info.annotation) is not None:
            description += " (a number, or an expression such as `4 * d_model`)"
        fields[name] = _field(annotation, info.default, description, extra)
    return fields


def _raw_params_model(kind: str, role: str) -> type[BaseModel]:
    """The params of `kind` as written in YAML. `role`: "Block" (a stack item: `kind`
    required, `name` and `share_cache` allowed), "Branch" (a parallel branch: the same),
    "Patch" (an `at` patch merged into a block of that kind: no `kind`) or "Defaults"
    (params only)."""
    fields = _params_fields(kind)
    if role in ("Block", "Branch"):
        fields["kind"] = (Literal[kind], Field(description="the block kind"))
    if role in ("Block", "Branch", "Patch"):
        fields["name"] = _field(str, None, "a name that `share_cache` can refer to")
        if "share_cache" in block_kind(kind).params.model_fields:
            fields["share_cache"] = _field(
                int | str | tuple[int | str, int],
                None,
                "read the keys/values of this earlier block or parallel branch: its index, "
                "its name, or [block, branch] (the block's index or name, the branch's index)",
            )
    return create_model(
        f"{kind.title().replace('_', '')}{role}",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )


def language_model() -> type[BaseModel]:
    """A pydantic model of a spec file as written (language version 1), which the JSON
    Schema is made from; the compiler's own checks go further (positions, cross-field)."""
    all_kinds = block_kinds()
    kinds = [k for k, rec in all_kinds.items() if not rec.composite]
    branchable = [k for k in kinds if all_kinds[k].branchable]
    kind_name = Literal[tuple(kinds)]
    branch_name = Literal[tuple(branchable)]
    block = Union[tuple(_raw_params_model(k, "Block") for k in kinds)]  # noqa: UP007
    branch = Union[tuple(_raw_params_model(k, "Branch") for k in branchable)]  # noqa: UP007
    patch = Union[tuple(_raw_params_model(k, "Patch") for k in kinds)]  # noqa: UP007
    pattern_text = Annotated[
        str,
        WithJsonSchema({"type": "string", "pattern": PATTERN_REGEX, "description": PATTERN_HELP}),
    ]
    merge_info = (
        all_kinds["parallel"].params.model_fields["merge"] if "parallel" in all_kinds else None
    )
    merge_default = merge_info.default if merge_info else "mean"
    defaults = create_model(
        "Defaults",
        __config__=ConfigDict(extra="forbid"),
        **{
            k: _field(_raw_params_model(k, "Defaults"), None, f"params for every {k} block")
            for k in all_kinds
        },
    )
    model = create_model(  # every field optional: a spec that extends may set a few
        "Model",
        __config__=ConfigDict(extra="forbid"),
        **{
            k: _field(info.annotation, info.default, info.description or k)
            for k, info in ModelConfig.model_fields.items()
        },
    )

    class Parallel(BaseModel):
        model_config = ConfigDict(extra="forbid")
        parallel: list[branch_name | branch] = Field(
            min_length=1, max_length=64, description="the branches: mixers run side by side"
        )
        merge: Literal["mean", "sum", "concat"] = Field(
            merge_default, description="how the branches' outputs combine"
        )
        name: str | None = _field(str, None, "a name for the block")[1]

    class ParallelPatch(BaseModel):
        model_config = ConfigDict(extra="forbid")
        merge: Literal["mean", "sum", "concat"] | None = _field(
            str, None, "how the branches' outputs combine"
        )[1]
        name: str | None = _field(str, None, "a name for the block")[1]

    class Repeat(BaseModel):
        model_config = ConfigDict(extra="forbid")
        repeat: int = Field(ge=1, le=MAX_BLOCKS, description="how many times to repeat `stack`")
        stack: list["StackItem"] = Field(min_length=1, description="the items repeated")

    class Pattern(BaseModel):
        model_config = ConfigDict(extra="forbid")
        pattern: pattern_text = Field(description=PATTERN_HELP)

    StackItem = kind_name | pattern_text | block | Parallel | Repeat | Pattern  # noqa: N806
    Repeat.model_rebuild(_types_namespace={"StackItem": StackItem})
    Defaults, Model = defaults, model  # noqa: N806
    Patch = patch | ParallelPatch  # noqa: N806 - params merged into the block at that index

    class SpecFile(BaseModel):
        """An archlab spec (language version 1). `model` and `stack` are required, unless
        the spec `extends` one that has them."""

        model_config = ConfigDict(extra="forbid", title="archlab spec")
        archlab: Literal[1] = Field(1, description="the language version (1, the only one)")
        name: str = _field(str, None, "the spec's name (default: the file name's stem)")[1]
        description: str = _field(str, None, "what the spec describes")[1]
        extends: str = _field(
            str, None, "a spec (.yaml) this one builds on, relative to this file's folder"
        )[1]
        model: Model = _field(Model, None, "model-wide settings")[1]
        defaults: Defaults | None = _field(
            Defaults | None, None, "params for every block of a kind"
        )[1]
        symbols: dict[str, kind_name | block | Parallel] | None = _field(
            None, None, "pattern symbols of your own (one character each), or rebound"
        )[1]
        stack: list[StackItem] | StackItem = _field(
            None, None, "the blocks, in order: a pattern, a kind, or a list of items"
        )[1]
        at: dict[int, block | Parallel | kind_name | Patch] | None = _field(
            None, None, "patches by block index (0 the first, -1 the last)"
        )[1]

    return SpecFile


def json_schema() -> dict:
    """JSON Schema of a spec file (language version 1), for editors' YAML validation."""
    return language_model().model_json_schema()
