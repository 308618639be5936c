"""Helpers for the Dagster-layer tests: a toy registry on disk and resources around tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resources import (
    CheckpointerResource,
    ExecutorResource,
    QualityGates,
    ResultsStoreResource,
    WorkflowRegistryResource,
)

TOY_YAML = """
workflows:
  toy:
    graph: tests.toy_graphs:linear
    dataset: cases.jsonl
    variants:
      b:
        double: tests.toy_graphs:node_b_double
    scorers:
      - use: exact_match
        field: answer
"""


def write_toy_registry(folder: Path, n_cases: int = 4, extra_yaml: str = "") -> Path:
    """A wtb.yaml with the toy workflow (a → b → c) and its dataset; returns the yaml path."""
    with (folder / "cases.jsonl").open("w") as handle:
        for i in range(n_cases):
            record = {"id": f"c{i}", "input": {"x": i}, "expected": {"answer": str(i + 1011)}}
            handle.write(json.dumps(record) + "\n")
    path = folder / "wtb.yaml"
    path.write_text(TOY_YAML + extra_yaml)
    return path


def bench_resources(folder: Path, config_path: Path, **quality: Any) -> dict[str, Any]:
    return {
        "registry": WorkflowRegistryResource(config_path=str(config_path)),
        "checkpointer": CheckpointerResource(url=f"sqlite:///{folder}/checkpoints.db"),
        "results": ResultsStoreResource(url=f"sqlite:///{folder}/results.db"),
        "executor": ExecutorResource(kind="local", max_concurrency=4),
        "quality": QualityGates(**quality),
    }
