"""The rerun job on its own, launched as from the launchpad with a new request as run config."""

from __future__ import annotations

from dagster import DagsterInstance

from jobs.rerun import rerun_job
from resources import (
    CheckpointerResource,
    ExecutorResource,
    QualityGates,
    ResultsStoreResource,
    WorkflowRegistryResource,
)
from tests.dagster_fixtures import write_toy_registry
from wtb_dagster.api import Bench
from wtb_dagster.execution import LocalExecutor


def _resources(config, checkpoint_url, results_url):
    return {
        "registry": WorkflowRegistryResource(config_path=str(config)),
        "checkpointer": CheckpointerResource(url=checkpoint_url),
        "results": ResultsStoreResource(url=results_url),
        "executor": ExecutorResource(kind="local", max_concurrency=4),
        "quality": QualityGates(),
    }


def test_rerun_job_from_the_launchpad_stores_and_runs_a_new_request(tmp_path, sqlite_urls):
    checkpoint_url, results_url = sqlite_urls
    config = write_toy_registry(tmp_path, n_cases=2)
    bench = Bench(config, checkpoint_url, results_url, LocalExecutor(2))
    bench.run_batch("toy", combos=["baseline"])
    run_config = {
        "ops": {
            "execute_rerun": {
                "config": {"workflow": "toy", "combo": "baseline", "before_node": "b",
                           "variant": "b=double"}
            }
        }
    }  # fmt: skip
    with DagsterInstance.ephemeral() as instance:
        result = rerun_job.execute_in_process(
            run_config=run_config,
            resources=_resources(config, checkpoint_url, results_url),
            instance=instance,
        )
    assert result.success
    forks = bench.store.results_frame("toy", lineage=None)
    forks = forks[forks.lineage != ""]
    assert sorted(forks.combo) == ["b=double", "b=double"]
    assert set(forks.parent_thread_id) == {"toy/baseline/c0", "toy/baseline/c1"}
