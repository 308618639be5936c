"""Workflows: validation errors, the registry, `wtb.yaml` loading, code versions and structure."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import sys
import threading
from typing import Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_config
from langgraph.errors import NodeError
from langgraph.graph import END, START, StateGraph
from langgraph.types import CachePolicy, RetryPolicy

from tests import toy_graphs
from tests.conftest import toy_workflow
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ConfigError, VariantError, WorkflowError
from wtb_dagster.workflows import (
    Registry,
    Workflow,
    config_path,
    load_registry,
    node_function,
    runs_async,
)

# -- validation ----------------------------------------------------------------------------------


def test_variant_for_a_node_the_graph_lacks_names_the_graphs_nodes():
    with pytest.raises(VariantError) as info:
        Workflow(name="w", graph=toy_graphs.linear, variants={"zz": {"v": toy_graphs.node_b}})
    message = str(info.value)
    assert "'zz'" in message
    assert "its nodes: a, b, c" in message


def test_unimportable_graph_path_names_the_path_and_the_import_error():
    with pytest.raises(WorkflowError) as info:
        Workflow(name="w", graph="nope.mod:fn")
    message = str(info.value)
    assert "'nope.mod:fn'" in message
    assert "ModuleNotFoundError" in message and "nope" in message


def test_variant_import_path_with_a_missing_attribute_is_a_workflow_error():
    with pytest.raises(WorkflowError) as info:
        Workflow(
            name="w", graph=toy_graphs.linear, variants={"b": {"v": "tests.toy_graphs:no_such_fn"}}
        )
    message = str(info.value)
    assert "'tests.toy_graphs:no_such_fn'" in message
    assert "has no attribute 'no_such_fn'" in message
    assert "variant b=v" in message


def test_import_path_without_a_colon_is_rejected():
    with pytest.raises(WorkflowError, match=r"must look like 'package\.module:name'"):
        Workflow(name="w", graph="tests.toy_graphs.linear")


def test_non_callable_import_target_is_rejected():
    with pytest.raises(WorkflowError, match="is not callable"):
        Workflow(name="w", graph="tests.toy_graphs:CALLS.__class__.__name__")


def test_factory_returning_a_compiled_graph_is_rejected_with_the_fix():
    with pytest.raises(WorkflowError) as info:
        Workflow(name="w", graph=toy_graphs.returns_compiled)
    message = str(info.value)
    assert "uncompiled StateGraph" in message
    assert "do not call .compile()" in message
    assert "tests.toy_graphs:returns_compiled" in message


def test_factory_that_raises_is_reported_with_its_error():
    def broken() -> StateGraph:
        raise RuntimeError("no graph today")

    with pytest.raises(WorkflowError, match="raised RuntimeError: no graph today"):
        Workflow(name="w", graph=broken)


def test_variant_named_baseline_is_rejected():
    with pytest.raises(VariantError, match="'baseline' is the name of the node's own"):
        Workflow(name="w", graph=toy_graphs.linear, variants={"b": {"baseline": toy_graphs.node_b}})


@pytest.mark.parametrize("bad", ["a,b", "a|b", "a[0]", "a b", "a+b", "a=b", ""])
def test_workflow_name_outside_the_partition_key_alphabet_is_rejected(bad):
    with pytest.raises(VariantError, match="may only hold letters"):
        Workflow(name=bad, graph=toy_graphs.linear)


@pytest.mark.parametrize("bad", ["x,y", "x|y", "x]", "x+y"])
def test_variant_name_outside_the_partition_key_alphabet_is_rejected(bad):
    with pytest.raises(VariantError, match="variant name"):
        Workflow(name="w", graph=toy_graphs.linear, variants={"b": {bad: toy_graphs.node_b_double}})


def test_explicit_combo_naming_an_undeclared_variant_fails_at_definition():
    with pytest.raises(VariantError, match="node 'b' has no variant 'triple'"):
        toy_workflow(combos=["b=triple"])


def test_workflow_without_dataset_says_so_when_cases_are_asked_for():
    wf = Workflow(name="w", graph=toy_graphs.linear)
    with pytest.raises(WorkflowError, match="has no dataset"):
        wf.cases()


# -- registry ------------------------------------------------------------------------------------


def test_registry_rejects_a_name_registered_twice():
    registry = Registry([toy_workflow("one")])
    with pytest.raises(WorkflowError, match="'one' is registered twice"):
        registry.add(toy_workflow("one"))
    assert registry.names() == ["one"]


def test_unknown_workflow_error_lists_the_registered_ones():
    registry = Registry([toy_workflow("alpha"), toy_workflow("beta")])
    with pytest.raises(WorkflowError) as info:
        registry.get("gamma")
    assert "unknown workflow 'gamma'" in str(info.value)
    assert "registered: alpha, beta" in str(info.value)
    assert registry.get("beta").name == "beta"
    assert len(registry) == 2 and [w.name for w in registry] == ["alpha", "beta"]


def test_unknown_workflow_in_an_empty_registry_says_none():
    with pytest.raises(WorkflowError, match="registered: none"):
        Registry().get("x")


# -- wtb.yaml ------------------------------------------------------------------------------------

YAML = """\
workflows:
  toy:
    description: a toy
    graph: tests.toy_graphs:linear
    dataset: data/cases.jsonl
    variants:
      b:
        double: tests.toy_graphs:node_b_double
        async: tests.toy_graphs:node_b_async
        paid:
          use: tests.toy_graphs:node_b_double
          requires_env: [WTB_TEST_SECRET_KEY]
    scorers:
      - exact_match
      - use: token_f1
        field: answer
        name: f1
      - tests.toy_graphs:answer_scorer
"""


def write_config(tmp_path, text: str = YAML):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "cases.jsonl").write_text(
        '{"id": "k1", "input": {"x": 1}, "expected": {"answer": "1012"}}\n'
        '{"id": "k2", "input": {"x": 2}, "expected": {"answer": "0"}}\n'
    )
    path = tmp_path / "wtb.yaml"
    path.write_text(text)
    return path


def test_yaml_registry_loads_graph_variants_scorers_and_dataset(tmp_path, monkeypatch):
    monkeypatch.delenv("WTB_TEST_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path.parent)  # the dataset path is relative to the yaml, not the cwd
    registry = load_registry(write_config(tmp_path))
    assert registry.names() == ["toy"]
    wf = registry.get("toy")
    assert wf.description == "a toy"
    assert wf.node_names() == ["a", "b", "c"]
    assert wf.variant_names() == {"b": ["async", "double"]}
    assert [c.id for c in wf.cases()] == ["k1", "k2"]
    assert wf.dataset == tmp_path / "data" / "cases.jsonl"
    # scorers: a built-in by name, a built-in with options, a user function by import path
    assert [s.__name__ for s in wf.scorers] == ["exact_match", "f1", "answer_scorer"]
    case = TestCase(id="k", input={}, expected={"answer": "1012"})
    state = {"answer": "1012"}
    assert [s(case, state) for s in wf.scorers] == [
        {"exact_match": 1.0},
        {"f1": 1.0},
        {"right_answer": 1.0},
    ]
    # the variants named by import path really run
    assert wf.build("b=double").invoke({"x": 1})["x"] == 1004


def test_yaml_variant_requiring_an_env_var_is_kept_when_it_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("WTB_TEST_SECRET_KEY", "s3cret")
    wf = load_registry(write_config(tmp_path)).get("toy")
    assert wf.variant_names() == {"b": ["async", "double", "paid"]}
    assert "b=paid" in [c.key for c in wf.matrix()]


def test_yaml_requires_env_accepts_a_single_name(tmp_path, monkeypatch):
    text = YAML.replace("requires_env: [WTB_TEST_SECRET_KEY]", "requires_env: WTB_TEST_SECRET_KEY")
    monkeypatch.setenv("WTB_TEST_SECRET_KEY", "s3cret")
    assert "paid" in load_registry(write_config(tmp_path, text)).get("toy").variant_names()["b"]
    monkeypatch.delenv("WTB_TEST_SECRET_KEY")
    assert "paid" not in load_registry(write_config(tmp_path, text)).get("toy").variant_names()["b"]


def test_yaml_absolute_dataset_path_is_used_as_is(tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "set.jsonl").write_text('{"id": "z", "input": {}}\n')
    text = YAML.replace("data/cases.jsonl", str(other / "set.jsonl"))
    wf = load_registry(write_config(tmp_path, text)).get("toy")
    assert [c.id for c in wf.cases()] == ["z"]


def test_yaml_unknown_key_is_an_error_listing_the_allowed_ones(tmp_path):
    text = YAML.replace("    description: a toy\n", "    descripton: a toy\n")
    with pytest.raises(ConfigError) as info:
        load_registry(write_config(tmp_path, text))
    assert str(info.value) == (
        f"{tmp_path / 'wtb.yaml'}: workflows.toy: unknown key 'descripton' (did you mean "
        "'description'?); allowed: graph, description, dataset, variants, scorers, combos, "
        "include, exclude, trials, share_prefix, nodes, prices, env, workspace"
    )


def test_yaml_workflow_without_graph_is_an_error(tmp_path):
    text = YAML.replace("    graph: tests.toy_graphs:linear\n", "")
    with pytest.raises(
        ConfigError, match=r"'graph' \(import path of the StateGraph factory\) is required"
    ):
        load_registry(write_config(tmp_path, text))


def test_yaml_workflow_entry_that_is_not_a_mapping_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="workflows: 'toy' must be a mapping with 'graph', got"):
        load_registry(write_config(tmp_path, "workflows:\n  toy: tests.toy_graphs:linear\n"))


@pytest.mark.parametrize(
    "text",
    ["- just\n- a list\n", "workflows: []\n", "workflows: {}\n", "", "other: 1\n"],
    ids=["list", "workflows-list", "workflows-empty", "empty-file", "no-workflows-key"],
)
def test_yaml_without_a_workflows_mapping_is_an_error(tmp_path, text):
    with pytest.raises(ConfigError, match="expected a top-level 'workflows:' mapping"):
        load_registry(write_config(tmp_path, text))


def test_yaml_syntax_error_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registry(write_config(tmp_path, "workflows: [unclosed\n"))


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ("variants: [double]", "'variants' must be a mapping"),
        ("scorers: token_f1", "'scorers' must be a list"),
        ("combos: b=double", "'combos' must be a list"),
        ("exclude: b=double", "'exclude' must be a list"),
        (
            "variants: {b: [tests.toy_graphs:node_b_double]}",
            r"workflows\.toy\.variants: 'b' must be a mapping \(per node, variant name → import",
        ),
        ("variants: {b: {v: 3}}", "a variant is an import path"),
    ],
)
def test_yaml_values_of_the_wrong_shape_are_config_errors(tmp_path, entry, match):
    text = f"workflows:\n  toy:\n    graph: tests.toy_graphs:linear\n    {entry}\n"
    with pytest.raises(ConfigError, match=match):
        load_registry(write_config(tmp_path, text))


def test_yaml_scorer_options_for_a_plain_function_are_a_config_error(tmp_path):
    text = YAML.replace(
        "      - tests.toy_graphs:answer_scorer\n",
        "      - use: tests.toy_graphs:answer_scorer\n        field: answer\n",
    )
    with pytest.raises(ConfigError, match=r"scorer tests\.toy_graphs:answer_scorer with options"):
        load_registry(write_config(tmp_path, text))


def test_yaml_unknown_builtin_scorer_is_a_config_error(tmp_path):
    text = YAML.replace("      - exact_match\n", "      - exact_matsch\n")
    with pytest.raises(ConfigError, match="unknown built-in scorer 'exact_matsch'"):
        load_registry(write_config(tmp_path, text))


def test_config_path_honours_wtb_config(tmp_path, monkeypatch):
    path = write_config(tmp_path)
    monkeypatch.setenv("WTB_CONFIG", str(path))
    monkeypatch.chdir(tmp_path.parent)
    assert config_path() == path.resolve()
    assert load_registry().names() == ["toy"]


def test_config_path_argument_beats_wtb_config(tmp_path, monkeypatch):
    path = write_config(tmp_path)
    monkeypatch.setenv("WTB_CONFIG", str(tmp_path / "missing.yaml"))
    assert config_path(path) == path.resolve()


def test_config_path_defaults_to_wtb_yaml_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("WTB_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="set WTB_CONFIG"):
        config_path()
    write_config(tmp_path)
    assert config_path() == (tmp_path / "wtb.yaml").resolve()


def test_missing_wtb_config_file_is_a_config_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WTB_CONFIG", str(tmp_path / "nowhere.yaml"))
    with pytest.raises(ConfigError, match=r"nowhere\.yaml not found"):
        load_registry()


# -- code versions -------------------------------------------------------------------------------

MODULE_V1 = """\
def fast_b(state):
    return {"x": state["x"] + 1}
"""

MODULE_V2 = """\
def fast_b(state):
    # a changed implementation
    return {"x": state["x"] + 2}
"""


def import_fresh(name: str):
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return importlib.import_module(name)


def test_code_version_changes_only_for_the_node_whose_variant_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no stale .pyc within one second
    monkeypatch.syspath_prepend(str(tmp_path))
    module_name = "wtb_test_variant_mod"
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    source = tmp_path / f"{module_name}.py"

    def workflow() -> Workflow:
        return Workflow(
            name="w", graph=toy_graphs.linear, variants={"b": {"fast": f"{module_name}:fast_b"}}
        )

    source.write_text(MODULE_V1)
    import_fresh(module_name)
    first = workflow()
    before = first.code_versions()
    assert first.build("b=fast").invoke({"x": 0})["x"] == 1 + 1 + 1000

    source.write_text(MODULE_V2)
    import_fresh(module_name)
    second = workflow()
    after = second.code_versions()
    assert second.build("b=fast").invoke({"x": 0})["x"] == 1 + 2 + 1000  # really the new code

    assert set(before) == set(after) == {"a", "b", "c"}
    assert before["b"]["fast"] != after["b"]["fast"]
    assert before["b"]["baseline"] == after["b"]["baseline"]
    assert before["a"] == after["a"] and before["c"] == after["c"]
    # the hash is of the code, so the same code gives the same version again
    assert second.code_versions() == after


def test_code_versions_differ_between_different_node_functions():
    versions = toy_workflow().code_versions()
    assert set(versions["b"]) == {"baseline", "double", "async"}
    assert len({versions["b"]["baseline"], versions["b"]["double"], versions["b"]["async"]}) == 3
    assert all(len(v) == 12 for node in versions.values() for v in node.values())


# -- structure -----------------------------------------------------------------------------------


def test_structure_lists_nodes_edges_and_varied_nodes():
    structure = toy_workflow().structure()
    assert structure["nodes"] == ["a", "b", "c"]
    edges = {(e["source"], e["target"]) for e in structure["edges"]}
    assert edges == {("__start__", "a"), ("a", "b"), ("b", "c"), ("c", "__end__")}
    assert not any(e["conditional"] for e in structure["edges"])
    assert structure["varied_nodes"] == {"b": ["async", "double"]}
    assert "graph" in structure["mermaid"].lower()


# -- conditional edges and cycles survive variant replacement -------------------------------------


class LoopState(TypedDict, total=False):
    x: int
    trail: list[str]
    done: str


def _inc_one(state: LoopState) -> dict:
    return {"x": state.get("x", 0) + 1, "trail": [*state.get("trail", []), "inc"]}


def _inc_two(state: LoopState) -> dict:
    return {"x": state.get("x", 0) + 2, "trail": [*state.get("trail", []), "inc2"]}


def _finish(state: LoopState) -> dict:
    return {"done": "plain", "trail": [*state.get("trail", []), "finish"]}


def _finish_loud(state: LoopState) -> dict:
    return {"done": "LOUD", "trail": [*state.get("trail", []), "finish_loud"]}


def _skip(state: LoopState) -> dict:
    return {"done": "skipped", "trail": [*state.get("trail", []), "skip"]}


def _route(state: LoopState) -> str:
    if state["x"] < 0:
        return "negative"
    return "again" if state["x"] < 5 else "stop"


def looping_graph() -> StateGraph:
    """inc loops on itself until x >= 5, then finish; a negative start goes to skip."""
    graph = StateGraph(LoopState)
    graph.add_node("inc", _inc_one)
    graph.add_node("finish", _finish)
    graph.add_node("skip", _skip)
    graph.add_edge(START, "inc")
    graph.add_conditional_edges(
        "inc", _route, {"again": "inc", "stop": "finish", "negative": "skip"}
    )
    graph.add_edge("finish", END)
    graph.add_edge("skip", END)
    return graph


def looping_workflow() -> Workflow:
    return Workflow(
        name="loop",
        graph=looping_graph,
        variants={"inc": {"by_two": _inc_two}, "finish": {"loud": _finish_loud}},
    )


def test_baseline_build_routes_through_the_loop_and_the_conditional_edge():
    graph = looping_workflow().build()
    assert graph.invoke({"x": 0})["trail"] == ["inc"] * 5 + ["finish"]
    assert graph.invoke({"x": -10})["trail"] == ["inc", "skip"]


def test_variant_inside_a_loop_keeps_the_loop_and_the_routing():
    graph = looping_workflow().build("inc=by_two")
    final = graph.invoke({"x": 0})
    assert final["trail"] == ["inc2", "inc2", "inc2", "finish"]  # 2, 4, 6 -> stop
    assert final["x"] == 6
    assert graph.invoke({"x": -10})["trail"] == ["inc2", "skip"]  # -8 is still negative


def test_variant_on_a_branch_target_is_reached_through_the_conditional_edge():
    graph = looping_workflow().build("finish=loud+inc=by_two")
    final = graph.invoke({"x": 3})
    assert final["trail"] == ["inc2", "finish_loud"]
    assert final["done"] == "LOUD"
    # the other branch is untouched by the variant of `finish`
    assert graph.invoke({"x": -10})["done"] == "skipped"


def test_compiled_variant_graph_has_the_same_edges_as_the_baseline():
    wf = looping_workflow()

    def edges(combo: str) -> set[tuple[str, str, bool]]:
        drawable = wf.build(combo).get_graph()
        return {(e.source, e.target, bool(e.conditional)) for e in drawable.edges}

    assert edges("baseline") == edges("finish=loud+inc=by_two")
    assert ("inc", "inc", True) in edges("baseline")
    conditional = {e["target"] for e in wf.structure()["edges"] if e["conditional"]}
    assert conditional == {"inc", "finish", "skip"}


def test_building_a_variant_does_not_change_the_factory_graph():
    wf = looping_workflow()
    wf.build("inc=by_two")
    assert wf.build().invoke({"x": 4})["trail"] == ["inc", "finish"]


# -- wtb.yaml validation messages ----------------------------------------------------------------


def test_yaml_misspelt_variant_key_names_file_path_key_and_the_allowed_ones(tmp_path):
    text = YAML.replace("          use: tests.toy_graphs:node_b_double\n", "          usee: x\n")
    with pytest.raises(ConfigError) as info:
        load_registry(write_config(tmp_path, text))
    assert str(info.value) == (
        f"{tmp_path / 'wtb.yaml'}: workflows.toy.variants.b.paid: unknown key 'usee' "
        "(did you mean 'use'?); allowed: use, requires_env, env"
    )


def test_yaml_path_is_shown_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_registry(write_config(tmp_path, YAML + "  other:\n    graph: [1]\n"))
    assert str(info.value) == (
        "wtb.yaml: workflows.other: 'graph' must be a string "
        "(import path of the StateGraph factory), got [1]"
    )


def test_yaml_unknown_top_level_key_is_rejected(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"wtb\.yaml: unknown key 'workflow' \(did you mean 'workflows'\?\); allowed: workflows, prices$",
    ):
        load_registry(write_config(tmp_path, YAML + "workflow: {}\n"))


def test_yaml_every_problem_is_named_in_one_line_without_a_pydantic_dump(tmp_path):
    text = (
        "workflows:\n  toy:\n    graph: tests.toy_graphs:linear\n"
        "    combos: [b=double, null]\n    scorers: [3, {field: answer}]\n    extra: 1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_registry(write_config(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert "workflows.toy: unknown key 'extra'" in message
    assert "workflows.toy.combos[1]: expected a string, got None" in message
    assert "workflows.toy.scorers[0]: a scorer is a name, an import path, or a mapping" in message
    assert "workflows.toy.scorers[1]: 'use' (a built-in scorer's name" in message
    for pydantic_words in ("validation error", "pydantic.dev", "Input should", "Field required"):
        assert pydantic_words not in message


def test_yaml_key_read_as_a_boolean_is_rejected_instead_of_renamed(tmp_path):
    # YAML 1.1 reads `on:` as true; the old loader silently made it a variant named "True"
    text = YAML.replace("        double: tests", "        on: tests")
    with pytest.raises(
        ConfigError, match=r"workflows\.toy\.variants\.b: key True must be a string"
    ):
        load_registry(write_config(tmp_path, text))


def test_yaml_empty_variants_and_scorers_keys_mean_none(tmp_path):
    text = "workflows:\n  toy:\n    graph: tests.toy_graphs:linear\n    variants:\n    scorers:\n"
    wf = load_registry(write_config(tmp_path, text)).get("toy")
    assert wf.variant_names() == {} and wf.scorers == []


def test_yaml_scorer_error_names_the_scorer_position(tmp_path):
    text = YAML.replace("      - exact_match\n", "      - exact_matsch\n")
    with pytest.raises(ConfigError, match=r"workflows\.toy\.scorers\[0\]: unknown built-in scorer"):
        load_registry(write_config(tmp_path, text))


def test_yaml_semantic_error_of_a_workflow_names_the_file(tmp_path):
    text = YAML.replace("      b:\n        double:", "      zz:\n        double:")
    with pytest.raises(VariantError) as info:
        load_registry(write_config(tmp_path, text))
    assert str(info.value).startswith(f"{tmp_path / 'wtb.yaml'}: workflow 'toy': ")
    assert "node 'zz'" in str(info.value)


# -- the LangGraph seam: replacing a node keeps everything but its function ------------------------


class SeamState(TypedDict, total=False):
    by: str
    recovered: str


SEAM_CALLS: dict[str, int] = {}


def _seam_base(state: SeamState) -> dict:
    return {"by": "base"}


def _seam_flaky(state: SeamState) -> dict:
    SEAM_CALLS["flaky"] = SEAM_CALLS.get("flaky", 0) + 1
    if SEAM_CALLS["flaky"] < 3:
        raise ValueError("not yet")
    return {"by": "flaky"}


def _seam_broken(state: SeamState) -> dict:
    raise RuntimeError("boom")


async def _seam_async(state: SeamState) -> dict:
    await asyncio.sleep(0)
    return {"by": "async"}


def _seam_recover(state: SeamState, error: NodeError) -> dict:
    return {"recovered": f"{error.node}: {error.error}"}


def seam_graph() -> StateGraph:
    graph = StateGraph(SeamState)
    graph.add_node(
        "n",
        _seam_base,
        metadata={"team": "qa"},
        retry_policy=RetryPolicy(
            max_attempts=3, initial_interval=0.0, jitter=False, retry_on=ValueError
        ),
        cache_policy=CachePolicy(ttl=60),
        error_handler=_seam_recover,
    )
    graph.add_edge(START, "n")
    graph.add_edge("n", END)
    return graph


def plain_graph() -> StateGraph:
    """One node `n`, no retry policy nor error handler: its errors reach the caller."""
    graph = StateGraph(SeamState)
    graph.add_node("n", _seam_base)
    graph.add_edge(START, "n")
    graph.add_edge("n", END)
    return graph


def seam_workflow() -> Workflow:
    variants = {"flaky": _seam_flaky, "broken": _seam_broken, "async": _seam_async}
    return Workflow(name="seam", graph=seam_graph, variants={"n": variants})


def test_seam_replaced_node_keeps_every_setting_of_the_factory_node():
    base = seam_graph().nodes["n"]
    for combo in ("n=flaky", "n=async"):
        replaced = seam_workflow().build(combo).builder.nodes["n"]
        for spec_field in dataclasses.fields(base):
            if spec_field.name != "runnable":
                assert getattr(replaced, spec_field.name) == getattr(base, spec_field.name)
        assert node_function(replaced) is seam_workflow()._variants["n"][combo[2:]]


def test_seam_replaced_node_runs_with_the_factory_nodes_retry_policy_and_error_handler():
    SEAM_CALLS.clear()
    wf = seam_workflow()
    assert wf.build("n=flaky").invoke({}) == {"by": "flaky"}
    assert SEAM_CALLS["flaky"] == 3  # two failures retried by the policy
    assert wf.build("n=broken").invoke({}) == {"recovered": "n: boom"}
    assert wf.build("n=broken").get_graph().nodes["n"].metadata == {"team": "qa"}


def test_seam_node_function_reads_back_sync_and_async_functions():
    graph = StateGraph(SeamState)
    graph.add_node("s", _seam_base)
    graph.add_node("a", _seam_async)
    assert node_function(graph.nodes["s"]) is _seam_base
    assert node_function(graph.nodes["a"]) is _seam_async


# -- async nodes ---------------------------------------------------------------------------------

LOOPS: list[Any] = []


async def _async_with_config(state: SeamState, config: RunnableConfig) -> dict:
    LOOPS.append((asyncio.get_running_loop(), threading.current_thread()))
    # LangGraph's context-based API works inside the coroutine
    assert get_config()["configurable"]["thread_id"] == config["configurable"]["thread_id"]
    return {"by": config["configurable"]["thread_id"]}


async def _async_failing(state: SeamState) -> dict:
    raise KeyError("missing")


def test_is_async_tells_which_combos_run_a_coroutine_node():
    wf = seam_workflow()
    assert wf.is_async("n=async")
    assert not wf.is_async() and not wf.is_async("n=flaky")
    assert runs_async(wf.build("n=async")) and not runs_async(wf.build("n=flaky"))


def test_async_node_runs_as_a_task_on_the_loop_that_runs_the_graph():
    LOOPS.clear()
    wf = Workflow(name="a", graph=plain_graph, variants={"n": {"cfg": _async_with_config}})
    graph = wf.build("n=cfg", checkpointer=InMemorySaver())

    async def run(thread_id: str) -> tuple[dict, asyncio.AbstractEventLoop]:
        values = await graph.ainvoke({}, {"configurable": {"thread_id": thread_id}})
        return values, asyncio.get_running_loop()

    first, first_loop = asyncio.run(run("t1"))
    second, second_loop = asyncio.run(run("t2"))
    assert (first["by"], second["by"]) == ("t1", "t2")
    # no bridge: the node ran on the caller's loop, in the caller's thread, each time
    assert [loop for loop, _ in LOOPS] == [first_loop, second_loop]
    assert {thread for _, thread in LOOPS} == {threading.current_thread()}


def test_async_node_error_reaches_the_caller_of_ainvoke():
    wf = Workflow(name="a", graph=plain_graph, variants={"n": {"bad": _async_failing}})
    with pytest.raises(KeyError, match="missing"):
        asyncio.run(wf.build("n=bad").ainvoke({}))


def test_graph_with_an_async_node_runs_only_on_langgraphs_async_path():
    wf = Workflow(name="a", graph=plain_graph, variants={"n": {"async": _seam_async}})
    graph = wf.build("n=async", checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}}
    assert asyncio.run(graph.ainvoke({}, config)) == {"by": "async"}
    with pytest.raises(TypeError, match="No synchronous function provided"):
        graph.invoke({}, {"configurable": {"thread_id": "u"}})
