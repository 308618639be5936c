"""The real `dagster` CLI, as the README uses it: a batch_runs partition on SQLite and on
dagster-postgres storage (the local PostgreSQL server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance

from assets.partitions import combos_partitions, workflows_partitions
from wtb_dagster.store import ResultsStore

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).parent / "dagster")


def _home(tmp_path: Path, instance_yaml: dict | None = None) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    if instance_yaml is None:
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    else:
        (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    return home


def _materialize_partition(tmp_path: Path, home: Path, extra_env: dict | None = None) -> str:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "WTB_DATA_DIR": str(tmp_path / "data"),
        "WTB_EXECUTOR": "local",
        **(extra_env or {}),
    }
    # The partitions a sensor or `wtb bench` would add, so the CLI can target one.
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(workflows_partitions.name, ["demo"])
            instance.add_dynamic_partitions(combos_partitions.name, ["retrieve=bm25"])
    finally:
        os.environ.pop("DAGSTER_HOME", None)
    completed = subprocess.run(
        [DAGSTER, "asset", "materialize", "-f", "definitions.py", "--select", "batch_runs",
         "--partition", "retrieve=bm25|demo"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stderr


def _check_stored(tmp_path: Path, results_url: str | None = None) -> None:
    store = ResultsStore(results_url or f"sqlite:///{tmp_path}/data/results.db")
    frame = store.results_frame("demo")
    assert set(frame.combo) == {"retrieve=bm25"}
    assert len(frame) == 57 and set(frame.status) == {"succeeded"}


def test_dagster_cli_materializes_a_batch_runs_partition_on_sqlite(tmp_path):
    home = _home(tmp_path)
    logs = _materialize_partition(tmp_path, home)
    assert "57/57 threads" in logs
    _check_stored(tmp_path)
    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_latest_materialization_event(
            __import__("dagster").AssetKey("batch_runs")
        )
        assert records.asset_materialization.partition == "retrieve=bm25|demo"


@pytest.mark.postgres
def test_dagster_cli_materializes_a_batch_runs_partition_on_dagster_postgres(tmp_path, pg_url):
    # Dagster's runs and events, the checkpoints and the results all in PostgreSQL.
    with (REPO / "dagster.postgres.yaml").open() as handle:
        instance_yaml = yaml.safe_load(handle)
    home = _home(tmp_path, instance_yaml)
    # dagster-postgres speaks psycopg2; SQLAlchemy 2.1 would pick psycopg 3 for a bare URL.
    dagster_url = pg_url.replace("postgresql://", "postgresql+psycopg2://")
    env = {"DAGSTER_PG_URL": dagster_url, "WTB_CHECKPOINT_URL": pg_url, "WTB_RESULTS_URL": pg_url}
    os.environ["DAGSTER_PG_URL"] = dagster_url
    try:
        _materialize_partition(tmp_path, home, env)
    finally:
        os.environ.pop("DAGSTER_PG_URL", None)
    _check_stored(tmp_path, pg_url)
    import psycopg

    with psycopg.connect(pg_url) as conn:
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        checkpoints = conn.execute("SELECT count(DISTINCT thread_id) FROM checkpoints").fetchone()[
            0
        ]
    assert runs == 1
    assert checkpoints == 57
