"""The bench's assets: dataset, workflow structure, variant matrix, batch runs, comparison."""

from assets.batch_runs import batch_runs
from assets.comparison import comparison_matrix
from assets.workflows import test_cases, variant_matrix, workflow_definitions

BENCH_ASSETS = [test_cases, workflow_definitions, variant_matrix, batch_runs, comparison_matrix]

__all__ = [
    "BENCH_ASSETS",
    "batch_runs",
    "comparison_matrix",
    "test_cases",
    "variant_matrix",
    "workflow_definitions",
]
