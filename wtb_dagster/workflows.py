"""Workflows: a graph factory plus node variants, scorers and a dataset; the registry of them.

A workflow's graph comes from a factory returning an *uncompiled* `StateGraph`. Variants are
applied when the graph is built, by replacing the callable of the varied node before compiling,
so conditional edges, cycles and subgraphs stay as the factory made them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml
from langgraph.graph import StateGraph

from wtb_dagster.code_versions import code_version
from wtb_dagster.config import ModelPrice, ScorerEntry, WorkflowEntry, WtbConfig, explain
from wtb_dagster.datasets import TestCase, load_cases
from wtb_dagster.environments import Environment, combine, parse_env
from wtb_dagster.errors import ConfigError, VariantError, WorkflowError, WTBError
from wtb_dagster.matrix import BASELINE, Combo, build_matrix, check_name
from wtb_dagster.scoring import Scorer, builtin
from wtb_dagster.workspaces import check_template, tree_digest

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


# -- the LangGraph seam --------------------------------------------------------------------------
# LangGraph has no public API to swap the callable of a node of an uncompiled StateGraph, nor to
# read it back. These two functions are the only code that relies on how it keeps nodes: a node
# spec is a dataclass with a `runnable`, and the runnable `add_node` makes from a function keeps
# it as `func` (sync) or `afunc` (async). The runnable itself comes from the public `add_node`.
# tests/test_engine/test_workflows.py "seam" tests fail when an upgrade changes either.


def node_function(spec: Any) -> Any:
    """The function a node spec of a `StateGraph` runs (the runnable itself if it is not one)."""
    runnable = spec.runnable
    return getattr(runnable, "func", None) or getattr(runnable, "afunc", None) or runnable


def replace_node(graph: StateGraph, node: str, fn: Callable[..., Any]) -> None:
    """Make `node` of `graph` run `fn`, keeping every other setting of the node.

    Metadata, input schema, retry and cache policies, timeout, error handler, destinations and
    `defer` stay as the factory set them; `fn` is wrapped as `add_node` would wrap it (an async
    `fn` stays async, for `ainvoke`/`astream`).
    """
    scratch = StateGraph(graph.state_schema)
    scratch.add_node(node, fn)
    graph.nodes[node] = dataclasses.replace(
        graph.nodes[node], runnable=scratch.nodes[node].runnable
    )


def is_coroutine_function(fn: Any) -> bool:
    """Whether calling `fn` returns a coroutine: an `async def`, or an object with one as `__call__`."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        type(fn).__call__  # an object whose __call__ is async
    )


# -- async nodes -----------------------------------------------------------------------------------
# A graph with an async node runs on LangGraph's own async path (`ainvoke` / `astream`): the
# executors drive such a graph with `astream` on an event loop of the thread run's own (see
# `execution.run_thread`), and the savers they open serve LangGraph's async calls
# (`checkpoints.bench_saver`). Nothing here runs a coroutine synchronously: LangGraph's
# sync `invoke` of such a graph raises TypeError ("No synchronous function provided").
# Each thread run has a loop of its own, closed when the run ends, so an async client a node
# keeps across calls (httpx, openai) must be made per loop — in the node, or cached by
# `asyncio.get_running_loop()`: one made at import fails on the next loop ("Event loop is
# closed").


def runs_async(graph: Any) -> bool:
    """Whether a graph (a `StateGraph`, or one compiled from it) has a node that is a coroutine
    function, so that only `ainvoke` / `astream` run it."""
    builder = getattr(graph, "builder", graph)
    return any(is_coroutine_function(node_function(spec)) for spec in builder.nodes.values())


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
    # Runs of every (combo, case): agent workflows are stochastic, one run is not a measurement.
    trials: int = 1
    # Shared prefixes (`prefixes`): a combo's thread starts from the checkpoint of another
    # combo's thread of the same case where the two ran the same node code so far.
    share_prefix: bool = True
    # Nodes every thread runs itself (samples that must be independent across combos).
    independent: list[str] = field(default_factory=list)
    # The Python environment (a Ray runtime_env, see `environments`) every combo needs, and
    # per node and variant the one that variant adds: `{"pip": ["pkg==2.0"], "env_vars": …}`.
    env: Mapping[str, Any] | Environment | None = None
    variant_envs: dict[str, dict[str, Mapping[str, Any] | Environment]] = field(
        default_factory=dict
    )
    # Model name → price (USD per million tokens), for the cost of the chat-model calls of
    # its nodes (`usage`); a model not listed has its tokens counted and its cost unknown.
    prices: dict[str, ModelPrice] = field(default_factory=dict)
    # A folder of its own per thread run for the files its nodes write, snapshotted at every
    # checkpoint and restored from one (`workspaces`); seeded from `workspace_template`.
    workspace: bool = False
    workspace_template: str | Path | None = None

    def __post_init__(self) -> None:
        check_name("workflow", self.name)
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"workflow {self.name!r}: trials must be a whole number ≥ 1")
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
        unknown = sorted(set(self.independent) - set(nodes))
        if unknown:
            raise VariantError(
                f"workflow {self.name!r}: nodes.{unknown[0]}: the graph has no such node; its "
                f"nodes: {', '.join(nodes)}"
            )
        self.prices = _checked_prices(self.name, self.prices)
        if self.workspace_template is not None:
            where = f"workflow {self.name!r}"
            self.workspace_template = check_template(Path(self.workspace_template), where)
            self.workspace = True
        self.matrix()  # validates the explicit combos and filters now, not at run time
        self._env, self._variant_envs = self._declared_envs()
        for combo in self.matrix():  # conflicting environments are refused before any run
            self.combo_env(combo)

    def _declared_envs(self) -> tuple[Environment, dict[str, dict[str, Environment]]]:
        where = f"workflow {self.name!r}"
        envs: dict[str, dict[str, Environment]] = {}
        for node, impls in self.variant_envs.items():
            for variant, spec in impls.items():
                known = self._variants.get(node, {})
                if variant not in known:
                    raise VariantError(
                        f"{where}: an environment is declared for variant {node}={variant}, "
                        f"which the workflow does not have; variants of {node!r}: "
                        f"{', '.join(sorted(known)) or 'none'}"
                    )
                envs.setdefault(node, {})[variant] = parse_env(
                    spec, f"{where}: variant {node}={variant}"
                )
        return parse_env(self.env, where), envs

    def combo_env(self, combo: Combo | str) -> Environment:
        """The environment `combo` runs in: the union of the workflow's and its variants'
        (`environments.combine`, which refuses conflicting pins); empty: the driver's own."""
        combo = self.check_combo(combo)
        declared = [("the workflow's env", self._env)]
        for node, impls in sorted(self._variant_envs.items()):
            variant = combo.variant_for(node)
            if variant in impls:
                declared.append((f"variant {node}={variant}", impls[variant]))
        return combine(declared, f"workflow {self.name!r}, combo {combo.key!r}")

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

    def _chosen(self, combo: Combo, graph: StateGraph) -> Iterator[tuple[str, Any, bool]]:
        """(node, function it runs under `combo`, whether that is a variant) for every node."""
        for node, spec in list(graph.nodes.items()):
            variant = combo.variant_for(node)
            if variant == BASELINE:
                yield node, node_function(spec), False
            else:
                yield node, self._variants[node][variant], True

    def is_async(self, combo: Combo | str = BASELINE) -> bool:
        """Whether a node this combo runs is a coroutine function: its graph runs only with
        `ainvoke` / `astream` (`runs_async` of the built graph)."""
        combo = self.check_combo(combo)
        return any(is_coroutine_function(fn) for _, fn, _ in self._chosen(combo, self.base_graph()))

    def build(
        self,
        combo: Combo | str = BASELINE,
        checkpointer: Any = None,
        wrap: NodeWrapper | None = None,
    ) -> Any:
        """Build the graph with the combo's variants in place and compile it.

        `wrap(node, fn)` may wrap each node callable (the executors time nodes with it); it
        receives an async node's coroutine function and must return one. A combo with an async
        node (`is_async`) compiles to a graph that runs with `ainvoke` / `astream`, whose
        checkpointer must serve LangGraph's async calls (those `open_checkpointer` returns do).
        """
        combo = self.check_combo(combo)
        graph = self.base_graph()
        for node, original, is_variant in self._chosen(combo, graph):
            if not callable(original) or hasattr(original, "get_graph"):
                continue  # a subgraph or other runnable node: left as the factory made it
            fn = wrap(node, original) if wrap is not None else original
            if is_variant or fn is not original:
                replace_node(graph, node, fn)
        return graph.compile(checkpointer=checkpointer)

    def code_versions(self) -> dict[str, dict[str, str]]:
        """Per node, the code version of its baseline and of each variant."""
        graph = self.base_graph()
        versions: dict[str, dict[str, str]] = {}
        for node, spec in graph.nodes.items():
            versions[node] = {BASELINE: code_version(node_function(spec))}
            for variant, fn in self._variants.get(node, {}).items():
                versions[node][variant] = code_version(fn)
        return versions

    def node_versions(
        self, combo: Combo | str, versions: dict[str, dict[str, str]] | None = None
    ) -> dict[str, str]:
        """Node → code version of what it runs under `combo` (`versions`: `code_versions()`,
        passed in when asked for many combos). Shared prefixes compare these."""
        combo = self.check_combo(combo)
        versions = versions if versions is not None else self.code_versions()
        env = self.combo_env(combo)
        # a node run in another environment is not the same code: never shared across them
        suffix = f"@env:{env.fingerprint()}" if env else ""
        if self.workspace_template is not None:  # nor one that starts from other files
            suffix += f"@files:{self.template_digest()}"
        return {node: impls[combo.variant_for(node)] + suffix for node, impls in versions.items()}

    def combo_code_version(
        self, combo: Combo | str, versions: dict[str, dict[str, str]] | None = None
    ) -> str:
        """A hash of the code every node runs under this combo: it changes when any of them does.

        `versions`: `code_versions()`, passed in when asked for many combos (it reads every
        node's source)."""
        combo = self.check_combo(combo)
        versions = versions if versions is not None else self.code_versions()
        chosen = sorted((node, impls[combo.variant_for(node)]) for node, impls in versions.items())
        env = self.combo_env(combo)
        # the environment is part of the code: a changed pin makes the combo stale (and a
        # combo without one keeps the version it had before environments existed)
        material = repr((chosen, env.fingerprint())) if env else repr(chosen)
        if self.workspace_template is not None:  # the template's files are input the nodes read
            material += f"@files:{self.template_digest()}"
        return hashlib.sha256(material.encode()).hexdigest()[:12]

    def template_digest(self) -> str:
        """A digest of the workspace template's files (part of every combo's code version)."""
        if self.workspace_template is None:
            return ""
        if getattr(self, "_template_digest", None) is None:
            self._template_digest = tree_digest(Path(self.workspace_template))
        return self._template_digest

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


def _checked_prices(workflow: str, prices: Mapping[str, Any]) -> dict[str, ModelPrice]:
    """`prices` as `ModelPrice`s (mappings from Python are validated like `wtb.yaml`'s)."""
    checked: dict[str, ModelPrice] = {}
    for model, price in dict(prices or {}).items():
        try:
            checked[str(model)] = ModelPrice.model_validate(price)
        except pydantic.ValidationError as exc:
            raise ConfigError(
                explain(exc, ModelPrice, f"workflow {workflow!r}: prices.{model}")
                + " (expected {input_per_1m: USD, output_per_1m: USD}, both ≥ 0)"
            ) from None
    return checked


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


def _scorer_from_entry(entry: ScorerEntry, where: str) -> Scorer:
    options = entry.options
    if ":" in entry.use:
        scorer = import_object(entry.use, f"{where}: scorer")
        if not options:
            return scorer
        try:
            return scorer(**options)  # with options, the path names a scorer factory
        except TypeError as exc:
            raise ConfigError(
                f"{where}: scorer {entry.use} with options {options}: {exc}"
            ) from None
    try:
        return builtin(entry.use, **options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def workflow_from_yaml(name: str, entry: Any, base_dir: Path, source: str = "wtb.yaml") -> Workflow:
    """One `workflows:` entry of a `wtb.yaml`; relative dataset paths are from the file's folder.

    Every error names `source` and the entry's key path (`workflows.qa.variants.retrieve`).
    """
    loc = ("workflows", name)
    try:
        parsed = WorkflowEntry.model_validate(entry)
    except pydantic.ValidationError as exc:
        raise ConfigError(explain(exc, WorkflowEntry, source, loc_prefix=loc)) from None
    return _workflow_from_entry(name, parsed, base_dir, source)


def _workflow_from_entry(
    name: str,
    entry: WorkflowEntry,
    base_dir: Path,
    source: str,
    prices: Mapping[str, ModelPrice] | None = None,
) -> Workflow:
    where = f"{source}: workflows.{name}"
    # a variant whose environment variables are unset is left out of the matrix, not an error
    variants: dict[str, dict[str, Callable[..., Any] | str]] = {
        node: {variant: spec.use for variant, spec in impls.items() if spec.available()}
        for node, impls in entry.variants.items()
    }
    dataset: Path | None = None
    if entry.dataset is not None:
        dataset = Path(entry.dataset)
        dataset = dataset if dataset.is_absolute() else base_dir / dataset
    try:
        return Workflow(
            name=name,
            graph=entry.graph,
            variants=variants,
            scorers=[
                _scorer_from_entry(scorer, f"{where}.scorers[{i}]")
                for i, scorer in enumerate(entry.scorers)
            ],
            dataset=dataset,
            description=entry.description,
            combos=entry.combos,
            include=entry.include,
            exclude=entry.exclude,
            trials=entry.trials,
            share_prefix=entry.share_prefix,
            independent=[node for node, spec in entry.nodes.items() if spec.independent],
            workspace=entry.workspace is not None
            or any(spec.workspace for spec in entry.nodes.values()),
            workspace_template=(
                base_dir / entry.workspace.template
                if entry.workspace is not None and entry.workspace.template
                else None
            ),
            env=parse_env(entry.env, where, base_dir),
            variant_envs={
                node: {
                    variant: parse_env(spec.env, f"{where}.variants.{node}.{variant}", base_dir)
                    for variant, spec in impls.items()
                    if spec.available() and spec.env is not None
                }
                for node, impls in entry.variants.items()
            },
            prices={**(prices or {}), **entry.prices},
        )
    except WTBError as exc:
        if str(exc).startswith(source):
            raise
        raise type(exc)(f"{source}: {exc}") from exc


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
    source = _shown_path(resolved)
    # Workflow modules usually sit beside their wtb.yaml; make them importable from there.
    if str(resolved.parent) not in sys.path:
        sys.path.insert(0, str(resolved.parent))
    try:
        document = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(document, Mapping) or not document.get("workflows"):
        raise ConfigError(f"{source}: expected a top-level 'workflows:' mapping of name → entry")
    try:
        config = WtbConfig.model_validate(document)
    except pydantic.ValidationError as exc:
        raise ConfigError(explain(exc, WtbConfig, source)) from None
    return Registry(
        _workflow_from_entry(name, entry, resolved.parent, source, config.prices)
        for name, entry in config.workflows.items()
    )


def _shown_path(path: Path) -> str:
    """`path` relative to the working directory when it is under it (as a user would type it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
