"""Code versions cover what a node's code reaches, tested on a real package written to disk."""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import toy_graphs
from wtb_dagster.code_versions import code_version, reached_code
from wtb_dagster.demo import workflow as demo_workflow
from wtb_dagster.workflows import code_version as code_version_from_workflows
from wtb_dagster.workflows import load_registry

ROOT = Path(__file__).resolve().parents[2]
PKG = "wtb_cv_userpkg"

NODES = f"""\
import json

import {PKG}.util as u
from {PKG}.util import tokenize

K = 1.2
CACHE = {{}}


def _helper(n):
    return n * 2


def node(state):
    CACHE[state["q"]] = True
    return {{"x": _helper(len(tokenize(state["q"]))) + u.fn() + K}}


def json_node(state):
    return {{"x": json.dumps(state)}}


def make_node(k):
    def node(state):
        return {{"x": state["x"] + k}}

    return node
"""

UTIL = """\
def tokenize(text):
    return text.split()


def fn():
    return 1
"""


@pytest.fixture
def userpkg(tmp_path, monkeypatch):
    """Writes a small user package; `load()` (re)imports it freshly from disk."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no stale .pyc within one second
    monkeypatch.syspath_prepend(str(tmp_path))
    package = tmp_path / PKG
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nodes.py").write_text(NODES)
    (package / "util.py").write_text(UTIL)

    def forget() -> None:
        for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
            del sys.modules[name]

    def load():
        forget()
        importlib.invalidate_caches()
        return importlib.import_module(f"{PKG}.nodes")

    def edit(file: str, old: str, new: str) -> None:
        path = package / file
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))

    load.edit = edit  # type: ignore[attr-defined]
    yield load
    forget()


def test_the_same_code_gives_the_same_version_after_a_fresh_import(userpkg):
    first = code_version(userpkg().node)
    assert code_version(userpkg().node) == first
    assert code_version_from_workflows is code_version  # the old import path keeps working


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        ("nodes.py", "return n * 2", "return n * 3"),  # a helper of the node's module
        ("nodes.py", "K = 1.2", "K = 1.25"),  # a module constant the node reads
        ("util.py", "return text.split()", "return text.split(',')"),  # from util import ...
        ("util.py", "return 1", "return 2"),  # import util as u; u.fn()
        ("nodes.py", "CACHE = {}", "CACHE = dict()"),  # the definition of a mutable global
    ],
    ids=["helper", "constant", "imported-function", "module-attribute", "mutable-global"],
)
def test_editing_what_the_node_reaches_changes_its_version(userpkg, file, old, new):
    before = code_version(userpkg().node)
    userpkg.edit(file, old, new)
    nodes = userpkg()
    assert nodes.node({"q": "a b"})  # the edited package still runs
    assert code_version(nodes.node) != before


def test_runtime_contents_of_a_mutable_global_do_not_change_the_version(userpkg):
    nodes = userpkg()
    before = code_version(nodes.node)
    nodes.node({"q": "fills the cache"})
    assert nodes.CACHE  # the node really mutated module state
    assert code_version(nodes.node) == before


def test_stdlib_is_named_with_its_use_but_not_walked(userpkg):
    parts = reached_code(userpkg().json_node)
    # the node itself and the name `json`: nothing of json's source or internals
    assert set(parts) == {f"function {PKG}.nodes.json_node", "uses json"}
    assert not any("JSONEncoder" in text for text in parts.values())


def test_partial_arguments_and_closure_cells_are_part_of_the_version(userpkg):
    nodes = userpkg()
    assert code_version(nodes.make_node(1)) != code_version(nodes.make_node(2))
    assert code_version(nodes.make_node(1)) == code_version(nodes.make_node(1))
    one, two = functools.partial(nodes.json_node), functools.partial(nodes.json_node, extra=2)
    assert code_version(one) != code_version(two)
    assert code_version(one) != code_version(nodes.json_node)


# -- the demo workflow ----------------------------------------------------------------------------


def demo_versions() -> dict[str, dict[str, str]]:
    return load_registry(ROOT / "wtb.yaml").get("demo").code_versions()


def test_a_demo_constant_changes_only_the_variants_that_read_it(monkeypatch):
    before = demo_versions()
    monkeypatch.setattr(demo_workflow, "BM25_K1", demo_workflow.BM25_K1 + 0.1)
    after = demo_versions()
    assert after["retrieve"]["bm25"] != before["retrieve"]["bm25"]
    assert after["retrieve"]["baseline"] == before["retrieve"]["baseline"]
    assert after["retrieve"]["tfidf"] == before["retrieve"]["tfidf"]
    assert {n: v for n, v in after.items() if n != "retrieve"} == {
        n: v for n, v in before.items() if n != "retrieve"
    }


def test_a_demo_helper_constant_reached_transitively_changes_the_version(monkeypatch):
    # retrieve_bm25 -> _as_documents -> TOP_K; grade never reaches it
    before = demo_versions()
    monkeypatch.setattr(demo_workflow, "TOP_K", demo_workflow.TOP_K + 1)
    after = demo_versions()
    assert after["retrieve"]["bm25"] != before["retrieve"]["bm25"]
    assert after["grade"] == before["grade"]


def test_demo_code_versions_are_the_same_in_another_process():
    # STOPWORDS is a frozenset: its repr's order depends on the per-process string hash seed
    script = (
        "import json; from wtb_dagster.workflows import load_registry; "
        "print(json.dumps(load_registry('wtb.yaml').get('demo').code_versions()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == demo_versions()


def test_a_demo_variant_is_walked_without_entering_the_stdlib():
    parts = reached_code(demo_workflow.retrieve_bm25)
    assert "constant wtb_dagster.demo.workflow.BM25_K1" in parts
    assert "constant wtb_dagster.demo.workflow.STOPWORDS" in parts
    assert "function wtb_dagster.demo.workflow.stem" in parts  # via content_terms
    walked = [key for key in parts if not key.startswith("uses ")]
    assert all("wtb_dagster.demo.workflow." in key for key in walked)


def test_an_edited_source_file_is_seen_even_before_a_reimport(userpkg):
    # Source is read through linecache, which must not serve the old text of an edited file:
    # "stale" is the safe answer while the process still runs the old code.
    nodes = userpkg()
    before = code_version(nodes.node)
    userpkg.edit("nodes.py", "return n * 2", "return n * 2  # edited")
    assert code_version(nodes.node) != before


def test_a_compiled_subgraph_node_counts_by_the_code_of_its_nodes():
    parts = reached_code(toy_graphs.linear().compile())
    assert {"function tests.toy_graphs.node_b", "function tests.toy_graphs._step"} <= set(parts)
    assert not [key for key in parts if key.startswith(("function langgraph", "class langgraph"))]
