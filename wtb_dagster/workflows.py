"""Workflows: a graph factory plus node variants, scorers and a dataset; the registry of them.

A workflow's graph comes from a factory returning an *uncompiled* `StateGraph`. Variants are
applied when the graph is built, by replacing the callable of the varied node before compiling,
so conditional edges, cycles and subgraphs stay as the factory made them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from langgraph._internal._runnable import coerce_to_runnable
from langgraph.graph import StateGraph

from wtb_dagster.datasets import TestCase, load_cases
from wtb_dagster.errors import ConfigError, VariantError, WorkflowError
from wtb_dagster.matrix import BASELINE, Combo, build_matrix, check_name
from wtb_dagster.scoring import Scorer, builtin

NodeWrapper = Callable[[str, Callable[..., Any]], Callable[..., Any]]


def import_object(path: str, what: str = "object") -> Any:
    """Import `package.module:attribute` (dots allowed after the colon)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise WorkflowError(f"{what} import path {path!r} must look like 'package.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise WorkflowError(
            f"{what} import path {path!r}: cannot import module {module_name!r} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise WorkflowError(
                f"{what} import path {path!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return obj


def _callable(value: Any, what: str) -> Callable[..., Any]:
    obj = import_object(value, what) if isinstance(value, str) else value
    if not callable(obj):
        raise WorkflowError(f"{what} {value!r} is not callable")
    return obj


def code_version(fn: Any) -> str:
    """A short hash of a callable's source (bytecode when there is no source)."""
    if isinstance(fn, functools.partial):
        # bound arguments are part of the code's behaviour; the partial's repr holds an address
        bound = repr((fn.args, sorted(fn.keywords.items())))
        return hashlib.sha256((code_version(fn.func) + bound).encode()).hexdigest()[:12]
    target = inspect.unwrap(fn) if callable(fn) else fn
    try:
        text = inspect.getsource(target)
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        text = repr((code.co_code, code.co_consts)) if code is not None else repr(target)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _node_callable(spec: Any) -> Any:
    runnable = spec.runnable
    return getattr(runnable, "func", None) or getattr(runnable, "afunc", None) or runnable


def _sync(fn: Callable[..., Any]) -> Callable[..., Any]:
    # The executors invoke graphs synchronously (one OS thread per running case); an async node
    # runs to completion on its own event loop inside that thread.
    if not inspect.iscoroutinefunction(fn):
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return run


@dataclass
class Workflow:
    """A named LangGraph workflow with its variants, scorers and test cases.

    >>> wf = Workflow(
    ...     name="qa",
    ...     graph="my_pkg.graphs:build_qa",            # returns an uncompiled StateGraph
    ...     variants={"retrieve": {"bm25": "my_pkg.retrievers:bm25"}},
    ...     scorers=[builtin("token_f1", field="answer")],
    ...     dataset="data/qa.jsonl",
    ... )
    """

    name: str
    graph: Callable[[], StateGraph] | str
    variants: dict[str, dict[str, Callable[..., Any] | str]] = field(default_factory=dict)
    scorers: list[Scorer] = field(default_factory=list)
    dataset: str | Path | list[TestCase] | None = None
    description: str = ""
    combos: list[str] | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None

    def __post_init__(self) -> None:
        check_name("workflow", self.name)
        self._factory = _callable(self.graph, f"workflow {self.name!r}: graph factory")
        self.graph_path = self.graph if isinstance(self.graph, str) else _qualified(self._factory)
        nodes = self.node_names()
        resolved: dict[str, dict[str, Callable[..., Any]]] = {}
        for node, impls in self.variants.items():
            if node not in nodes:
                raise VariantError(
                    f"workflow {self.name!r}: variants declared for node {node!r}, but the graph "
                    f"has no such node; its nodes: {', '.join(nodes)}"
                )
            resolved[node] = {}
            for variant, impl in impls.items():
                check_name("variant", variant)
                if variant == BASELINE:
                    raise VariantError(
                        f"workflow {self.name!r}, node {node!r}: 'baseline' is the name of the "
                        "node's own implementation; give the variant another name"
                    )
                resolved[node][variant] = _callable(
                    impl, f"workflow {self.name!r}: variant {node}={variant}"
                )
        self._variants = resolved
        self.matrix()  # validates the explicit combos and filters now, not at run time

    def base_graph(self) -> StateGraph:
        """A fresh uncompiled graph from the factory."""
        try:
            graph = self._factory()
        except Exception as exc:
            raise WorkflowError(
                f"workflow {self.name!r}: graph factory {self.graph_path} raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(graph, StateGraph):
            raise WorkflowError(
                f"workflow {self.name!r}: graph factory {self.graph_path} must return an "
                f"uncompiled StateGraph, got {type(graph).__name__} (do not call .compile())"
            )
        return graph

    def node_names(self) -> list[str]:
        return list(self.base_graph().nodes)

    def variant_names(self) -> dict[str, list[str]]:
        return {node: sorted(impls) for node, impls in self._variants.items()}

    def matrix(self) -> list[Combo]:
        """The combos to test: explicit list or cartesian product, with the filters applied."""
        return build_matrix(self.variant_names(), self.combos, self.include, self.exclude)

    def check_combo(self, combo: Combo | str) -> Combo:
        """Parse and validate a combo against this workflow's declared variants."""
        key = combo.key if isinstance(combo, Combo) else combo
        return build_matrix(self.variant_names(), [key])[0]

    def cases(self) -> list[TestCase]:
        if self.dataset is None:
            raise WorkflowError(f"workflow {self.name!r} has no dataset of test cases")
        if isinstance(self.dataset, list):
            return list(self.dataset)
        return load_cases(self.dataset)

    def build(
        self,
        combo: Combo | str = BASELINE,
        checkpointer: Any = None,
        wrap: NodeWrapper | None = None,
    ) -> Any:
        """Build the graph with the combo's variants in place and compile it.

        `wrap(node, fn)` may wrap each node callable (the executors time nodes with it).
        """
        combo = self.check_combo(combo)
        graph = self.base_graph()
        for node, spec in list(graph.nodes.items()):
            variant = combo.variant_for(node)
            fn = self._variants[node][variant] if variant != BASELINE else _node_callable(spec)
            if not callable(fn) or hasattr(fn, "get_graph"):
                continue  # a subgraph or other runnable node: left as the factory made it
            fn = _sync(fn)
            if wrap is not None:
                fn = wrap(node, fn)
            if variant != BASELINE or wrap is not None or fn is not _node_callable(spec):
                runnable = coerce_to_runnable(fn, name=node, trace=False)
                graph.nodes[node] = dataclasses.replace(spec, runnable=runnable)
        return graph.compile(checkpointer=checkpointer)

    def code_versions(self) -> dict[str, dict[str, str]]:
        """Per node, the code version of its baseline and of each variant."""
        graph = self.base_graph()
        versions: dict[str, dict[str, str]] = {}
        for node, spec in graph.nodes.items():
            versions[node] = {BASELINE: code_version(_node_callable(spec))}
            for variant, fn in self._variants.get(node, {}).items():
                versions[node][variant] = code_version(fn)
        return versions

    def combo_code_version(self, combo: Combo | str) -> str:
        """A hash of the code every node runs under this combo: it changes when any of them does."""
        combo = self.check_combo(combo)
        versions = self.code_versions()
        chosen = sorted((node, impls[combo.variant_for(node)]) for node, impls in versions.items())
        return hashlib.sha256(repr(chosen).encode()).hexdigest()[:12]

    def structure(self) -> dict[str, Any]:
        """Nodes, edges (with conditional ones marked) and the varied nodes, for display."""
        drawable = self.base_graph().compile().get_graph()
        edges = [
            {"source": e.source, "target": e.target, "conditional": bool(e.conditional)}
            for e in drawable.edges
        ]
        return {
            "nodes": self.node_names(),
            "edges": edges,
            "varied_nodes": self.variant_names(),
            "mermaid": drawable.draw_mermaid(),
        }


def _qualified(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


class Registry:
    """The registered workflows by name."""

    def __init__(self, workflows: Iterable[Workflow] = ()) -> None:
        self._workflows: dict[str, Workflow] = {}
        for workflow in workflows:
            self.add(workflow)

    def add(self, workflow: Workflow) -> Workflow:
        if workflow.name in self._workflows:
            raise WorkflowError(f"workflow {workflow.name!r} is registered twice")
        self._workflows[workflow.name] = workflow
        return workflow

    def get(self, name: str) -> Workflow:
        try:
            return self._workflows[name]
        except KeyError:
            raise WorkflowError(
                f"unknown workflow {name!r}; registered: {', '.join(self._workflows) or 'none'}"
            ) from None

    def names(self) -> list[str]:
        return list(self._workflows)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._workflows.values())

    def __len__(self) -> int:
        return len(self._workflows)


def _scorer_from_yaml(entry: Any, where: str) -> Scorer:
    if isinstance(entry, str):
        entry = {"use": entry}
    if not isinstance(entry, Mapping) or "use" not in entry:
        raise ConfigError(f"{where}: a scorer is a name, an import path, or a mapping with 'use'")
    options = {k: v for k, v in entry.items() if k != "use"}
    target = str(entry["use"])
    if ":" in target:
        scorer = import_object(target, f"{where}: scorer")
        if not options:
            return scorer
        try:
            return scorer(**options)  # with options, the path names a scorer factory
        except TypeError as exc:
            raise ConfigError(f"{where}: scorer {target} with options {options}: {exc}") from None
    return builtin(target, **options)


_WORKFLOW_KEYS = {
    "graph", "variants", "scorers", "dataset", "description", "combos", "include", "exclude",
}  # fmt: skip


def _variant_from_yaml(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and "use" in value:
        required = value.get("requires_env") or []
        if isinstance(required, str):
            required = [required]  # `requires_env: OPENAI_API_KEY`, one name
        missing = [name for name in required if not os.environ.get(name)]
        return None if missing else str(value["use"])
    raise ConfigError(f"{where}: a variant is an import path or {{use: path, requires_env: [...]}}")


def workflow_from_yaml(name: str, entry: Mapping[str, Any], base_dir: Path) -> Workflow:
    """One `workflows:` entry of a `wtb.yaml`; relative dataset paths are from the file's folder."""
    where = f"wtb.yaml workflow {name!r}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(entry) - _WORKFLOW_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_WORKFLOW_KEYS))}"
        )
    if "graph" not in entry:
        raise ConfigError(f"{where}: 'graph' (import path of the StateGraph factory) is required")
    kinds = {"variants": Mapping, "scorers": list, "combos": list, "include": list, "exclude": list}
    for key, kind in kinds.items():
        if entry.get(key) is not None and not isinstance(entry[key], kind):
            shape = "a mapping" if kind is Mapping else "a list"
            raise ConfigError(f"{where}: '{key}' must be {shape}, got {entry[key]!r:.60}")
    variants: dict[str, dict[str, Any]] = {}
    for node, impls in (entry.get("variants") or {}).items():
        if not isinstance(impls, Mapping):
            raise ConfigError(f"{where}: variants of node {node!r} must map variant name to path")
        chosen = {
            v: _variant_from_yaml(p, f"{where}, variant {node}={v}") for v, p in impls.items()
        }
        variants[str(node)] = {v: p for v, p in chosen.items() if p is not None}
    dataset = entry.get("dataset")
    if dataset is not None and not Path(dataset).is_absolute():
        dataset = base_dir / dataset
    return Workflow(
        name=name,
        graph=str(entry["graph"]),
        variants=variants,
        scorers=[_scorer_from_yaml(s, where) for s in entry.get("scorers") or []],
        dataset=dataset,
        description=str(entry.get("description", "")),
        combos=entry.get("combos"),
        include=entry.get("include"),
        exclude=entry.get("exclude"),
    )


def config_path(path: str | Path | None = None) -> Path:
    """The `wtb.yaml` to use: the argument, else `WTB_CONFIG`, else `./wtb.yaml`."""
    chosen = path or os.environ.get("WTB_CONFIG") or "wtb.yaml"
    resolved = Path(chosen).expanduser().resolve()
    if not resolved.is_file():
        raise ConfigError(
            f"workflow registry {resolved} not found; run from the repository root, "
            "or set WTB_CONFIG to the path of your wtb.yaml"
        )
    return resolved


def load_registry(path: str | Path | None = None) -> Registry:
    """Load the workflows declared in a `wtb.yaml` (see `config_path` for which file)."""
    resolved = config_path(path)
    # Workflow modules usually sit beside their wtb.yaml; make them importable from there.
    if str(resolved.parent) not in sys.path:
        sys.path.insert(0, str(resolved.parent))
    try:
        document = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{resolved}: not valid YAML: {exc}") from None
    entries = document.get("workflows") if isinstance(document, Mapping) else None
    if not isinstance(entries, Mapping) or not entries:
        raise ConfigError(f"{resolved}: expected a top-level 'workflows:' mapping of name → entry")
    return Registry(workflow_from_yaml(str(n), e, resolved.parent) for n, e in entries.items())
