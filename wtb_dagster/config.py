"""The shape of `wtb.yaml` as pydantic models, and validation errors as one readable line.

The models check shape only (which keys, which types); what the values mean (an import path
that imports, a node the graph has) is checked where they are used, in `workflows`.

>>> explain(error, WtbConfig, "wtb.yaml")
"wtb.yaml: workflows.qa.variants.retrieve.bm25: unknown key 'usee' (did you mean 'use'?); allowed: use, requires_env, env"
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

_SHOWN_ERRORS = 5


class _Strict(BaseModel):
    # YAML reads `2` and `1.5` as numbers; as names and paths they are meant as text.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, frozen=True)


class EnvEntry(_Strict):
    """A combo environment (Ray `runtime_env`): `{pip: [...]}` or `{uv: [...]}`, with
    `install_options`, `env_vars` and `py_modules`. See `wtb_dagster.environments`."""

    pip: list[str] | None = Field(
        default=None, description="requirements ('name==1.2') or paths to local wheels, for pip"
    )
    uv: list[str] | None = Field(default=None, description="the same, installed with uv")
    install_options: list[str] = Field(
        default_factory=list,
        description="installer options, e.g. [--no-index, --find-links, wheels/] (offline)",
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="environment variables of the combo's workers"
    )
    py_modules: list[str] = Field(
        default_factory=list,
        description="directories put on the workers' Python path (local://), or Ray URIs",
    )

    @model_validator(mode="after")
    def _one_installer(self) -> EnvEntry:
        if self.pip is not None and self.uv is not None:
            raise PydanticCustomError(
                "env_installers", "give either 'pip' or 'uv', not both: one installer builds it"
            )
        return self


class VariantEntry(_Strict):
    """One variant of a node: an import path, or `{use: path, requires_env: [...]}`."""

    use: str = Field(description="import path of the variant's callable")
    requires_env: list[str] = Field(
        default_factory=list,
        description="environment variables the variant needs; unset, it is left out",
    )
    env: EnvEntry | None = Field(
        default=None, description="the Python environment the variant needs (Ray runtime_env)"
    )

    @model_validator(mode="before")
    @classmethod
    def _path_alone(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"use": data}
        if not isinstance(data, Mapping):
            raise PydanticCustomError(
                "variant_shape", "a variant is an import path or {use: path, requires_env: [...]}"
            )
        return data

    @field_validator("requires_env", mode="before")
    @classmethod
    def _one_name(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value  # `requires_env: OPENAI_API_KEY`

    def available(self) -> bool:
        """Whether every environment variable the variant needs is set (and not empty)."""
        return all(os.environ.get(name) for name in self.requires_env)


class ScorerEntry(BaseModel):
    """A scorer: a built-in's name or an import path, with options for it."""

    # Any other key is an option of the scorer: the built-in (or the factory the import path
    # names) takes them as keyword arguments and rejects the ones it does not know.
    model_config = ConfigDict(extra="allow", frozen=True)

    use: str = Field(description="a built-in scorer's name, or the import path of a scorer")

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"use": data}
        if not isinstance(data, Mapping):
            raise PydanticCustomError(
                "scorer_shape", "a scorer is a name, an import path, or a mapping with 'use'"
            )
        return data

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelPrice(_Strict):
    """What a chat model costs, in USD per million tokens (`prices:` in `wtb.yaml`)."""

    input_per_1m: float = Field(ge=0, description="USD per million input (prompt) tokens")
    output_per_1m: float = Field(ge=0, description="USD per million output (completion) tokens")


class NodeEntry(_Strict):
    """Settings of one node of a workflow (`nodes: {generate: {independent: true}}`)."""

    independent: bool = Field(
        default=False,
        description="run this node in every thread itself, never share it from another combo",
    )
    workspace: bool = Field(
        default=False,
        description="give the threads a folder of their own for the files this node writes",
    )


class WorkspaceEntry(_Strict):
    """`workspace: true`, or `workspace: {template: folder}` (relative to the wtb.yaml)."""

    template: str | None = Field(
        default=None, description="folder whose files every new thread's workspace starts with"
    )


class WorkflowEntry(_Strict):
    """One entry of `workflows:` in a `wtb.yaml`."""

    graph: str = Field(description="import path of the StateGraph factory")
    description: str = ""
    dataset: str | None = Field(
        default=None, description="JSONL or CSV file of test cases, relative to the wtb.yaml"
    )
    variants: dict[str, dict[str, VariantEntry]] = Field(
        default_factory=dict, description="per node, variant name → import path"
    )
    scorers: list[ScorerEntry] = Field(default_factory=list)
    combos: list[str] | None = Field(default=None, description="explicit combo keys")
    include: list[str] | None = Field(default=None, description="combo filters to keep")
    exclude: list[str] | None = Field(default=None, description="combo filters to drop")
    trials: int = Field(
        default=1, ge=1, le=1000, description="runs of every (combo, case), each its own thread"
    )
    share_prefix: bool = Field(
        default=True,
        description="start a combo's thread from another combo's checkpoint where they agree",
    )
    nodes: dict[str, NodeEntry] = Field(default_factory=dict, description="per node settings")
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="model name → price; adds to (and overrides) the top-level prices",
    )
    env: EnvEntry | None = Field(
        default=None, description="the Python environment every combo needs (Ray runtime_env)"
    )
    workspace: WorkspaceEntry | None = Field(
        default=None,
        description="a folder per thread for the files its nodes write, restored on rollback",
    )

    @field_validator("workspace", mode="before")
    @classmethod
    def _workspace_switch(cls, value: Any) -> Any:
        # `workspace: true` turns it on with no template; `false` is the same as leaving it out
        if isinstance(value, bool):
            return {} if value else None
        return value

    @field_validator("description", "variants", "scorers", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any, info: Any) -> Any:
        # `variants:` with nothing under it is YAML's null: the same as leaving the key out.
        if value is None:
            return {"description": "", "variants": {}, "scorers": []}[info.field_name]
        return value


class WtbConfig(_Strict):
    """A whole `wtb.yaml`."""

    workflows: dict[str, WorkflowEntry] = Field(description="workflow name → entry")
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="model name → {input_per_1m, output_per_1m} in USD, for every workflow",
    )


# -- errors --------------------------------------------------------------------------------------

_SHAPES = {
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


def explain(
    error: ValidationError,
    model: type[BaseModel],
    where: str,
    *,
    loc_prefix: tuple[str | int, ...] = (),
    json: bool = False,
) -> str:
    """`error` (from validating `model`) as one line: `where: a.b.c: what is wrong; …`.

    `loc_prefix` is where `model` sits in the document (for the locations shown); `json`
    switches the words to JSON's (field, object) from YAML's (key, mapping).
    """
    key_word, mapping = ("field", "an object") if json else ("key", "a mapping")
    details = error.errors(include_url=False)
    unknown: dict[tuple[Any, ...], list[str]] = {}
    for detail in details:
        if detail["type"] == "extra_forbidden":
            loc = tuple(detail["loc"])
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
    problems: list[tuple[tuple[Any, ...], str]] = []
    meant: set[tuple[Any, ...]] = set()
    for parent, keys in unknown.items():  # first: a misspelt key is the cause of what follows
        allowed = _allowed(_type_at(model, parent))
        text = f"unknown {key_word}{'s' if len(keys) > 1 else ''} {', '.join(map(repr, keys))}"
        close = [m for key in keys for m in difflib.get_close_matches(key, allowed, n=1)]
        if len(keys) == 1 and close:
            text += f" (did you mean {close[0]!r}?)"
        meant.update((*parent, name) for name in close)
        problems.append((parent, f"{text}; allowed: {', '.join(allowed)}"))
    for detail in details:
        loc, kind, value = tuple(detail["loc"]), detail["type"], detail.get("input")
        parent, last = loc[:-1], (loc[-1] if loc else None)
        field = _field(model, loc)
        if (
            field is None
            and kind != "model_type"
            and typing.get_origin(_type_at(model, parent)) is dict
        ):
            field = _field(model, parent)  # a value of a mapping: the mapping's description
        hint = f" ({field.description})" if field is not None and field.description else ""
        if kind == "extra_forbidden" or (kind == "missing" and loc in meant):
            continue  # reported above
        if kind == "missing":
            problems.append((parent, f"{last!r}{hint} is required"))
        elif last == "[key]":
            problems.append((loc[:-2], f"{key_word} {value!r} must be a string (quote it)"))
        elif kind in _SHAPES:
            shape = mapping if _SHAPES[kind] == "a mapping" else _SHAPES[kind]
            required = _required(_type_at(model, loc)) if kind == "model_type" else []
            if required:
                shape += " with " + " and ".join(repr(name) for name in required)
            if isinstance(last, str):
                problems.append((parent, f"{last!r} must be {shape}{hint}, got {_shown(value)}"))
            else:
                problems.append((loc, f"expected {shape}, got {_shown(value)}"))
        else:
            problems.append((loc, f"{detail['msg']}, got {_shown(value)}"))
    texts = [
        f"{_dotted(loc_prefix + loc)}: {text}" if loc_prefix + loc else text
        for loc, text in problems
    ]
    more = len(texts) - _SHOWN_ERRORS
    shown = "; ".join(texts[:_SHOWN_ERRORS]) + (f"; and {more} more" if more > 0 else "")
    return f"{where}: {shown}"


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The annotation at `loc` inside `model`, through models, dicts and lists (None if lost)."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        origin = typing.get_origin(annotation)
        if _is_model(annotation):
            field = annotation.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation = field.annotation
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        elif origin is list:
            annotation = typing.get_args(annotation)[0]
        else:
            return None
    return _unwrap(annotation)


def _field(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    parent = _type_at(model, loc[:-1])
    if loc and _is_model(parent) and isinstance(loc[-1], str):
        return parent.model_fields.get(loc[-1])
    return None


def _allowed(annotation: Any) -> list[str]:
    return list(annotation.model_fields) if _is_model(annotation) else []


def _required(annotation: Any) -> list[str]:
    if not _is_model(annotation):
        return []
    return [name for name, field in annotation.model_fields.items() if field.is_required()]
