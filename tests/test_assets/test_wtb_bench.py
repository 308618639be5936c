"""`wtb bench` and `wtb ui` as a user runs them: the installed command, another registry, the
named jobs on the instance, failing combos named, one error line for a failed run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from tests.dagster_fixtures import write_toy_registry
from wtb_dagster.cli import _executor, _width, build_parser
from wtb_dagster.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
WTB = str(Path(sys.executable).parent / "wtb")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "WTB_DATA_DIR": str(tmp_path / "data"),
        "WTB_EXECUTOR": "local",
        "PYTHONPATH": str(REPO),  # tests.toy_graphs, the toy registry's graph
        **extra,
    }
    env.pop("WTB_CONFIG", None)
    env.pop("RAY_ADDRESS", None)
    return {**env, **extra}


def _wtb(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # from a folder with no wtb.yaml: the registry comes from WTB_CONFIG or --config only
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [WTB, *args], cwd=cwd, env=_env(tmp_path, **env), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _runs(tmp_path: Path):
    with DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        return instance.get_runs()


def test_wtb_bench_with_wtb_config_runs_the_named_jobs_and_names_the_failing_combos(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    config = write_toy_registry(registry, n_cases=6)  # b=double answers every case wrong
    completed = _wtb(tmp_path, "bench", "toy", WTB_CONFIG=str(config))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Attempted to directly retrieve" not in completed.stderr
    out = completed.stdout
    assert "(prepare_workflow, run_batches ×1, compare_workflow); checks: 4 passed, 1 failed" in out
    assert (
        "FAILED comparison_matrix:no_regression_vs_baseline [toy] — failing combos: b=double" in out
    )
    assert "b=double Δ -1.000" in out
    assert "Open the UI: " in out and out.rstrip().endswith(" ui")
    runs = _runs(tmp_path)
    assert Counter(run.job_name for run in runs) == {
        "prepare_workflow": 1,
        "run_batches": 1,  # both combos in one run, as a single-run backfill of the range
        "compare_workflow": 1,
    }
    assert all(run.status == DagsterRunStatus.SUCCESS for run in runs)
    assert {run.tags["wtb/workflow"] for run in runs} == {"toy"}
    (batch,) = [run for run in runs if run.job_name == "run_batches"]
    assert batch.tags["dagster/asset_partition_range_start"] == "baseline|toy"
    assert batch.tags["dagster/asset_partition_range_end"] == "b=double|toy"
    with DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        materialized = instance.get_materialized_partitions(AssetKey("batch_runs"))
    assert materialized == {"baseline|toy", "b=double|toy"}  # one per combo, as before


def test_wtb_bench_reads_the_registry_named_by_config(tmp_path):
    config = write_toy_registry(tmp_path, n_cases=2)
    completed = _wtb(tmp_path, "--config", str(config), "bench", "toy", "--combo", "baseline")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "checks: 3 passed, 0 failed" in completed.stdout
    assert f"--config {config} ui" in completed.stdout  # the UI hint serves the same registry
    (batch,) = [run for run in _runs(tmp_path) if run.job_name == "run_batches"]
    assert batch.tags["wtb/combo"] == "baseline"


def test_a_failed_run_is_one_error_line_with_its_run_id_and_exit_2(tmp_path):
    config = write_toy_registry(tmp_path, n_cases=2)
    with (tmp_path / "cases.jsonl").open("a") as handle:
        handle.write('{"id": "c9", "input": \n')
    completed = _wtb(tmp_path, "--config", str(config), "bench", "toy")
    assert completed.returncode == 2
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    (failed,) = [run for run in _runs(tmp_path) if run.status == DagsterRunStatus.FAILURE]
    assert errors == [
        f"error: run {failed.run_id} (prepare_workflow [toy]) failed: {tmp_path}/cases.jsonl:3: "
        "not valid JSON (Expecting value at column 1) — its logs are in the UI (`wtb ui`, then "
        f"Runs → {failed.run_id[:8]})"
    ]
    assert "Traceback" not in completed.stderr and "Stack Trace" not in completed.stderr
    assert len(completed.stderr.splitlines()) < 10


def test_workers_and_concurrency_mean_the_same_on_both_executors_or_are_refused():
    assert _width("local", None, 12) == {"max_concurrency": 12}
    assert _width("ray", 3, 12) == {"num_workers": 3, "concurrency_per_worker": 4}
    assert _width("ray", None, 8) == {"concurrency_per_worker": 4}  # over the default 2
    assert _width("ray", 4, None) == {"num_workers": 4}
    assert _width("local", None, None) == {} == _width("ray", None, None)
    with pytest.raises(ConfigError, match="--workers is the number of Ray worker processes"):
        _width("local", 2, 8)
    with pytest.raises(ConfigError, match="--concurrency 10 does not split evenly over 4"):
        _width("ray", 4, 10)
    with pytest.raises(ConfigError, match="--concurrency 0: must be at least 1"):
        _width("local", None, 0)
    parser = build_parser()
    ray = _executor(parser.parse_args(["run", "demo", "--executor", "ray", "--workers", "3",
                                       "--concurrency", "24"]))  # fmt: skip
    assert (ray.num_workers, ray.concurrency_per_worker) == (3, 8)  # type: ignore[union-attr]
    local = _executor(parser.parse_args(["run", "demo", "--concurrency", "5"]))
    assert local.max_concurrency == 5  # type: ignore[union-attr]
    args = parser.parse_args(["bench", "demo", "--executor", "ray", "--workers", "2"])
    assert (args.workers, args.concurrency) == (2, None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]


def test_wtb_ui_serves_the_bench_instance_and_code_location_on_localhost(tmp_path):
    config = write_toy_registry(tmp_path, n_cases=2)
    bench = _wtb(tmp_path, "--config", str(config), "bench", "toy", "--combo", "baseline")
    assert bench.returncode == 0, bench.stderr[-3000:]
    port = _free_port()
    cwd = tmp_path / "elsewhere"
    env = _env(tmp_path)
    env["PATH"] = "/usr/bin:/bin"  # `dagster` is found beside the interpreter, not on PATH
    log = (tmp_path / "ui.log").open("w")  # a file, not a pipe nobody drains while we wait
    ui = subprocess.Popen(
        [WTB, "--config", str(config), "ui", "--port", str(port)], cwd=cwd, env=env,
        stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        runs = data = None
        while time.monotonic() < deadline and ui.poll() is None:
            try:
                data = _graphql(
                    port,
                    "{ runsOrError { ... on Runs { results { runId jobName status } } }"
                    " workspaceOrError { ... on Workspace { locationEntries { name "
                    "locationOrLoadError { __typename } } } } }",
                )
            except OSError as exc:
                data = exc
                time.sleep(1)
                continue
            entries = data["workspaceOrError"]["locationEntries"]
            if entries and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation":
                runs = data["runsOrError"]["results"]
                break
            time.sleep(1)
        output = (tmp_path / "ui.log").read_text()
        assert runs is not None, f"the UI did not serve the code location in time: {data}"
        assert output.startswith(f"Dagster UI: http://127.0.0.1:{port} (instance ")
        assert entries[0]["name"] == "wtb_bench"
        assert Counter(r["jobName"] for r in runs) == {
            "prepare_workflow": 1,
            "run_batches": 1,
            "compare_workflow": 1,
        }
        assert {r["runId"] for r in runs} == {run.run_id for run in _runs(tmp_path)}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: finds this host's own address
            address = probe.getsockname()[0]
        if not address.startswith("127."):  # bound to 127.0.0.1 only, not to every interface
            with socket.socket() as sock:
                assert sock.connect_ex((address, port)) != 0
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait(timeout=30)
        log.close()
