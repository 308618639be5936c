"""A batch through the Dagster resource on a Ray cluster started apart (`ray start --head`) and
reached by address — the path users take when one machine is not enough.

The head gets its own temp dir, ports and process group, and is stopped by those alone:
`ray stop` would end every Ray on the machine, other test runs' included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance, EnvVar, materialize

from assets import BENCH_ASSETS
from assets.partitions import batch_key, combos_partitions, workflows_partitions
from resources import ExecutorResource, RayClusterByAddress
from tests.dagster_fixtures import bench_resources, write_toy_registry
from wtb_dagster.store import ResultsStore

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
PORT_OPTIONS = [
    "--port", "--ray-client-server-port", "--dashboard-port", "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
    "--node-manager-port", "--object-manager-port",
]  # fmt: skip


@dataclass
class Head:
    port: int
    group: int  # the process group of everything `ray start` launched
    temp_dir: Path


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid → (parent pid, process group, state) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def _cluster_pids(group: int) -> set[int]:
    """The head's processes (its process group) and their descendants (the worker processes,
    which Ray puts in sessions of their own), zombies left out."""
    table = _processes()
    found = {pid for pid, (_, pgid, state) in table.items() if pgid == group and state != "Z"}
    while True:
        children = {
            pid
            for pid, (ppid, _, state) in table.items()
            if ppid in found and pid not in found and state != "Z"
        }
        if not children:
            return found
        found |= children


def _stop(head: Head, deadline_s: float = 30.0) -> None:
    pids = _cluster_pids(head.group)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            alive = {p for p in pids if _processes().get(p, (0, 0, "Z"))[2] != "Z"}
            if not alive:
                return
            time.sleep(0.2)
        pids = alive
    raise AssertionError(f"Ray head processes {sorted(pids)} survived SIGKILL")


def _clean_environ() -> dict[str, str]:
    """This process's environment less the settings earlier tests may have left in it (the
    bench's, Dagster's, Ray's and test hooks'): the cluster and its driver start as a user's."""
    prefixes = ("WTB_", "DAGSTER_", "RAY_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@pytest.fixture
def ray_head() -> Iterator[Head]:
    # Short: Ray's unix socket paths under the temp dir must fit in 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="wtbray", dir="/tmp"))
    ports = _free_ports(len(PORT_OPTIONS))
    env = {
        **_clean_environ(),
        "RAY_AUTH_MODE": "disabled",  # explicit: no token auth on this throwaway cluster
        "PYTHONPATH": str(REPO),  # the code on the cluster's nodes: tests.toy_graphs
    }
    # The dashboard serves Ray's state API (`list_actors`), which the test asks afterwards.
    command = [RAY, "start", "--head", "--num-cpus", "2", "--include-dashboard=true",
               "--temp-dir", str(temp_dir), "--disable-usage-stats"]  # fmt: skip
    for option, port in zip(PORT_OPTIONS, ports, strict=True):
        command += [option, str(port)]
    starter = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    head = Head(port=ports[0], group=starter.pid, temp_dir=temp_dir)
    try:
        output, _ = starter.communicate(timeout=180)
        assert starter.returncode == 0, output[-3000:]
        yield head
    finally:
        if starter.poll() is None:
            starter.kill()
        _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _materialize_on_cluster(folder: str) -> dict:
    """`batch_runs` of the toy workflow through the resource, as `definitions.py` wires it for
    `RAY_ADDRESS`; returns the materialization's metadata values. Run in a process of its own
    so that no state of earlier tests (an in-process Ray, paths on `sys.path`) reaches it."""
    tmp_path = Path(folder)
    config = write_toy_registry(tmp_path, n_cases=6)
    resources = bench_resources(tmp_path, config)
    resources["executor"] = ExecutorResource(
        kind="ray",
        ray=RayClusterByAddress(address=EnvVar("RAY_ADDRESS")),
        num_workers=2,
        concurrency_per_worker=2,
    )
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(workflows_partitions.name, ["toy"])
        instance.add_dynamic_partitions(combos_partitions.name, ["baseline"])
        result = materialize(
            BENCH_ASSETS,
            selection=["batch_runs"],
            partition_key=batch_key("toy", "baseline"),
            instance=instance,
            resources=resources,
        )
    assert result.success
    metadata = result.asset_materializations_for_node("batch_runs")[0].metadata
    return {
        "threads": metadata["threads"].value,
        "failures": metadata["failures"].value,
        "executor": metadata["executor"].value,
        "ray_gcs_address": metadata["ray_gcs_address"].value,
        "ray_worker_pids": list(metadata["ray_worker_pids"].value),
        "ray_initialized_after": ray.is_initialized(),
    }


def test_a_batch_through_the_resource_runs_on_the_cluster_at_ray_address(ray_head, tmp_path):
    address = f"127.0.0.1:{ray_head.port}"
    script = (
        "import json, sys\n"
        "from tests.test_resources.test_ray_cluster import _materialize_on_cluster\n"
        "print('RESULT ' + json.dumps(_materialize_on_cluster(sys.argv[1])))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        env={**_clean_environ(), "RAY_ADDRESS": address, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    metadata = json.loads(line[len("RESULT ") :])
    assert metadata["threads"] == 6 and metadata["failures"] == 0
    assert metadata["executor"] == (
        f"ray: 2 workers × 2 threads = 4 at once, on the Ray cluster at {address}"
    )
    # where the driver attached, as Ray names the head: this host's address and the head's port
    assert metadata["ray_gcs_address"].endswith(f":{ray_head.port}")
    worker_pids = metadata["ray_worker_pids"]
    assert len(worker_pids) == 2
    assert not metadata["ray_initialized_after"]  # the resource disconnected when the step ended
    frame = ResultsStore(f"sqlite:///{tmp_path}/results.db").results_frame("toy")
    assert set(frame.status) == {"succeeded"} and set(frame.executor) == {"ray"}

    # The cluster's own record: the batch's two workers were actors on its (only) node.
    from ray.util.state import list_actors, list_nodes

    (node,) = list_nodes(address=address)
    actors = list_actors(address=address, filters=[("class_name", "=", "Worker")], detail=True)
    assert {actor.pid for actor in actors} == set(worker_pids)
    assert {actor.node_id for actor in actors} == {node.node_id}
    assert {actor.state for actor in actors} == {"DEAD"}  # ended with the batch
