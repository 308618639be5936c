"""Per-variant environments: declared in wtb.yaml, combined per combo, built by Ray per worker.

The Ray tests build two real wheels of a tiny package `wtbprobe` (1.0 and 2.0, whose
`version()` returns its version) and let Ray's pip `runtime_env` install them offline
(`--no-index`). The variants' node is defined here: workers import this module by name, and
it imports `wtbprobe` only inside the node, as a variant that needs its own environment must
(the driver imports the variant's module, in its own environment).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path
from typing import TypedDict

import pytest
from langgraph.graph import END, START, StateGraph

from wtb_dagster.batches import plan_tasks, run_batch
from wtb_dagster.checkpoints import open_checkpointer, thread_config
from wtb_dagster.datasets import TestCase
from wtb_dagster.environments import (
    EnvBuildError,
    EnvConflictError,
    Environment,
    combine,
    installer_message,
    parse_env,
)
from wtb_dagster.errors import ConfigError
from wtb_dagster.execution import LocalExecutor
from wtb_dagster.store import ResultsStore
from wtb_dagster.threads import thread_id_for
from wtb_dagster.workflows import Workflow, load_registry

ray = pytest.importorskip("ray")

# -- the package under test, as wheels ---------------------------------------------------------


def build_wheel(out: Path, version: str, name: str = "wtbprobe") -> Path:
    """A real, installable pure-Python wheel of `name` (a wheel is a zip with its metadata):
    `name.version()` returns `version`."""
    out.mkdir(parents=True, exist_ok=True)
    tag = "py3-none-any"
    path = out / f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"def version() -> str:\n    return {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: wtb-test\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as archive:
        for name_in_zip, text in files.items():
            data = text.encode()
            archive.writestr(name_in_zip, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name_in_zip},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    return {version: build_wheel(out, version) for version in ("1.0", "2.0")}


OFFLINE = ["--no-index"]  # nothing from a registry: the wheels are local files

# -- the workflow -----------------------------------------------------------------------------


class ProbeState(TypedDict, total=False):
    x: int
    version: str
    python: str
    pid: int


def probe(state: ProbeState) -> dict:
    """Which wtbprobe this process has: its version, or 'absent'."""
    try:
        import wtbprobe
    except ImportError:
        version = "absent"
    else:
        version = wtbprobe.version()
    return {"version": version, "python": sys.executable, "pid": os.getpid()}


def probe_again(state: ProbeState) -> dict:  # a variant: the same probe, other code
    return probe(state)


def probe_graph() -> StateGraph:
    graph = StateGraph(ProbeState)
    graph.add_node("probe", probe)
    graph.add_edge(START, "probe")
    graph.add_edge("probe", END)
    return graph


def two_node_graph() -> StateGraph:
    graph = StateGraph(ProbeState)
    graph.add_node("first", probe)
    graph.add_node("second", probe)
    graph.add_edge(START, "first")
    graph.add_edge("first", "second")
    graph.add_edge("second", END)
    return graph


def cases(n: int = 3) -> list[TestCase]:
    return [TestCase(id=f"p{i}", input={"x": i}) for i in range(n)]


def probe_workflow(variant_envs: dict, name: str = "probe", **kwargs) -> Workflow:
    return Workflow(
        name=name,
        graph=probe_graph,
        variants={"probe": {variant: probe_again for variant in variant_envs}},
        variant_envs={"probe": variant_envs},
        dataset=cases(),
        **kwargs,
    )


def pip(*packages: object, options: list[str] = OFFLINE) -> dict:
    return {"pip": [str(p) for p in packages], "install_options": options}


# -- declaring and combining (no Ray) --------------------------------------------------------


def test_a_combo_environment_is_the_union_of_its_variants(wheels):
    one = parse_env(pip(wheels["1.0"]), "a")
    tool = parse_env(
        {"pip": ["wtbtool>=1"], "install_options": OFFLINE, "env_vars": {"M": "x"}}, "b"
    )
    env = combine([("variant a=x", one), ("variant b=y", tool)], "combo")
    assert env.packages == (str(wheels["1.0"]), "wtbtool>=1")
    assert env.env_vars == (("M", "x"),)
    assert combine([("a", one), ("b", parse_env(pip(wheels["1.0"]), "b"))], "c") == one
    assert not combine([("the workflow's env", Environment())], "c")  # the driver's own


def test_conflicting_pins_in_one_combo_are_refused_naming_both_variants(wheels, tmp_path):
    w1, w2 = (str(wheels[v]) for v in ("1.0", "2.0"))
    with pytest.raises(
        EnvConflictError,
        match=r"variant first=old and variant second=new pin "
        r"wtbprobe differently \(wtbprobe-1.0-py3-none-any.whl vs wtbprobe==2.0\)",
    ):
        Workflow(
            name="clash",
            graph=two_node_graph,
            variants={"first": {"old": probe_again}, "second": {"new": probe_again}},
            variant_envs={"first": {"old": pip(w1)}, "second": {"new": pip("wtbprobe==2.0")}},
            dataset=cases(),
        )
    # an exact pin against a range that excludes it, two files of one package, a variable
    # set twice, two installers: each refused, each naming both sides
    refused = [
        ({"pip": [w1]}, {"pip": ["wtbprobe>=2"]}, "pin wtbprobe differently"),
        ({"pip": [w1]}, {"pip": [w2]}, "pin wtbprobe differently"),
        ({"env_vars": {"MODE": "a"}}, {"env_vars": {"MODE": "b"}}, "set environment variable MODE"),
        ({"pip": ["x==1"]}, {"uv": ["y==1"]}, "installs with pip and variant b=y with uv"),
        ({"pip": ["x"]}, {"pip": ["y"], "install_options": OFFLINE}, "different install_options"),
    ]
    for first, second, words in refused:
        with pytest.raises(EnvConflictError, match=words) as caught:
            combine(
                [("variant a=x", parse_env(first, "a")), ("variant b=y", parse_env(second, "b"))],
                "combo",
            )
        assert "variant a=x" in str(caught.value) and "variant b=y" in str(caught.value)
    # a range the pin satisfies is no conflict: both go to the installer
    kept = combine(
        [("a", parse_env({"pip": [w1]}, "a")), ("b", parse_env({"pip": ["wtbprobe>=1,<2"]}, "b"))],
        "c",
    )
    assert kept.packages == (w1, "wtbprobe>=1,<2")


def test_conflict_in_wtb_yaml_is_refused_at_load_and_excluding_the_combo_loads(wheels, tmp_path):
    shutil.copy(wheels["1.0"], tmp_path)
    config = textwrap.dedent(
        """
        workflows:
          clash:
            graph: tests.test_engine.test_environments:two_node_graph
            variants:
              first:
                old:
                  use: tests.test_engine.test_environments:probe_again
                  env: {pip: [wtbprobe-1.0-py3-none-any.whl], install_options: [--no-index]}
              second:
                new:
                  use: tests.test_engine.test_environments:probe_again
                  env: {pip: ["wtbprobe==2.0"], install_options: [--no-index]}
        """
    )
    (tmp_path / "wtb.yaml").write_text(config)
    with pytest.raises(
        EnvConflictError,
        match=r"wtb.yaml.*combo 'first=old\+second=new'.*"
        r"variant first=old and variant second=new",
    ):
        load_registry(tmp_path / "wtb.yaml")
    (tmp_path / "wtb.yaml").write_text(config + "    exclude: ['first=old+second=new']\n")
    workflow = load_registry(tmp_path / "wtb.yaml").get("clash")
    env = workflow.combo_env("first=old")
    local_wheel = str((tmp_path / wheels["1.0"].name).resolve())  # from the yaml's folder
    assert env.packages == (local_wheel,)
    assert not workflow.combo_env("baseline")


def test_bad_env_declarations_are_refused_with_the_fix(tmp_path):
    for spec, words in [
        ({"pip": ["wtbprobe=1.0"]}, "not a requirement pip can read"),
        ({"pip": ["--no-index"]}, "put options under env.install_options"),
        ({"pip": ["./missing-1.0-py3-none-any.whl"]}, "does not exist"),
        ({"pip": ["x"], "uv": ["x"]}, "give either 'pip' or 'uv'"),
        ({"pipp": ["x"]}, "unknown key 'pipp' \\(did you mean 'pip'\\?\\)"),
        ({"install_options": OFFLINE}, "nothing is installed"),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse_env(spec, "workflow 'w': variant n=v", tmp_path)


def test_runtime_env_is_rays_pip_or_uv_form_with_default_options_kept(wheels):
    pip_env = parse_env({**pip(wheels["1.0"]), "env_vars": {"A": "1"}}, "w").runtime_env(60)
    digest = hashlib.sha256(wheels["1.0"].read_bytes()).hexdigest()
    assert pip_env == {
        "pip": {
            # the file pinned by its content: pip checks it, and Ray's cache is keyed by it
            "packages": [f"wtbprobe @ {wheels['1.0'].as_uri()}#sha256={digest}"],
            "pip_install_options": ["--no-index", "--disable-pip-version-check", "--no-cache-dir"],
        },
        "env_vars": {"A": "1"},
        "config": {"setup_timeout_seconds": 60},
    }
    uv_env = parse_env({"uv": ["wtbprobe==2.0"]}, "w").runtime_env()
    assert uv_env == {
        "uv": {"packages": ["wtbprobe==2.0"], "uv_pip_install_options": ["--no-cache"]}
    }
    assert Environment().runtime_env(60) == {}


def test_a_wheel_rebuilt_in_place_is_another_environment_for_ray(wheels, tmp_path):
    wheel = tmp_path / wheels["1.0"].name
    shutil.copy(wheels["1.0"], wheel)
    env = parse_env(pip(wheel), "w")
    key, version = env.key, env.fingerprint()
    wheel.write_bytes(wheels["2.0"].read_bytes())
    os.utime(wheel, ns=(1, 1))  # a new mtime, whatever the clock's resolution
    # the same declaration, but Ray builds it anew rather than serve its cache, and the
    # combo's code version changes with it
    assert env.key != key and env.fingerprint() != version


def test_installer_message_is_pips_error_lines():
    text = (
        "Failed to set up runtime environment.\nTraceback ...\nLast 50 lines of stdout:\n"
        "    Looking in links: /opt/wheels\n"
        "    ERROR: Could not find a version that satisfies the requirement wtbprobe==3.0\n"
        "    ERROR: No matching distribution found for wtbprobe==3.0\n"
    )
    assert installer_message(RuntimeError(text)) == (
        "ERROR: Could not find a version that satisfies the requirement wtbprobe==3.0 | "
        "ERROR: No matching distribution found for wtbprobe==3.0"
    )


def test_local_executor_refuses_env_combos_naming_the_combo(wheels, sqlite_urls):
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    workflow = probe_workflow({"v1": pip(wheels["1.0"])})
    refusal = (
        r"combo 'probe=v1' needs its own environment \(pip: wtbprobe-1.0-py3-none-any.whl; "
        r"options: --no-index\).*use `--executor ray`"
    )
    with pytest.raises(ConfigError, match=refusal):
        run_batch(workflow, store, checkpoint_url, combos=["probe=v1"], executor=LocalExecutor())
    assert store.count() == 0  # refused before any thread ran
    # a batch of the whole matrix is refused before its first combo runs, not half-way
    with pytest.raises(ConfigError, match=refusal):
        run_batch(workflow, store, checkpoint_url, executor=LocalExecutor())
    assert store.count() == 0


def test_changing_a_pin_changes_the_combos_code_version_and_makes_it_stale(wheels, tmp_path):
    first = probe_workflow({"v": pip(wheels["1.0"])})
    second = probe_workflow({"v": pip(wheels["2.0"])})
    assert first.combo_code_version("probe=v") != second.combo_code_version("probe=v")
    # a combo without an environment keeps the version it had before environments existed
    plain = Workflow(name="probe", graph=probe_graph, variants={"probe": {"v": probe_again}})
    assert first.combo_code_version("baseline") == plain.combo_code_version("baseline")
    assert first.combo_code_version("probe=v") != plain.combo_code_version("probe=v")
    # a wheel counts by name and content: moved, the same; rebuilt in place, another version
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(wheels["1.0"], moved)
    again = probe_workflow({"v": pip(moved / wheels["1.0"].name)})
    assert again.combo_code_version("probe=v") == first.combo_code_version("probe=v")
    before = again.combo_code_version("probe=v")
    (moved / wheels["1.0"].name).write_bytes(wheels["2.0"].read_bytes())
    assert (
        probe_workflow({"v": pip(moved / wheels["1.0"].name)}).combo_code_version("probe=v")
        != before
    )

    # stored under the old pin, the combo's threads are planned again, from scratch
    store = ResultsStore(f"sqlite:///{tmp_path}/results.db")
    store.setup()
    from wtb_dagster.execution import ThreadTask, new_result
    from wtb_dagster.threads import SUCCEEDED

    rows = []
    for task in plan_tasks(first, ["probe=v"], None, store)[0]:
        result = new_result(task, "probe", "ray", None)
        result.status = SUCCEEDED
        rows.append(result)
    store.upsert_results(rows)
    assert plan_tasks(first, ["probe=v"], None, store) == ([], 3)
    tasks, skipped = plan_tasks(second, ["probe=v"], None, store)
    assert skipped == 0 and len(tasks) == 3 and all(t.fresh for t in tasks)
    assert isinstance(tasks[0], ThreadTask)


def test_nodes_under_another_environment_do_not_share_a_prefix(wheels):
    workflow = probe_workflow({"v1": pip(wheels["1.0"]), "plain": None})
    code = workflow.code_versions()
    under_env = workflow.node_versions("probe=v1", code)
    assert under_env["probe"] != code["probe"]["v1"]  # same code, another environment
    assert workflow.node_versions("probe=plain", code) == {"probe": code["probe"]["plain"]}


def test_the_dagster_assets_show_each_combos_environment(wheels, tmp_path):
    from dagster import DagsterInstance, materialize

    from assets import BENCH_ASSETS
    from assets.partitions import batch_key, workflows_partitions
    from tests.dagster_fixtures import TOY_YAML, bench_resources, write_toy_registry

    def pinned(wheel: Path) -> Path:
        config = write_toy_registry(tmp_path)
        config.write_text(
            TOY_YAML.replace(
                "double: tests.toy_graphs:node_b_double",
                "double: {use: tests.toy_graphs:node_b_double, "
                f"env: {{pip: ['{wheel}'], install_options: [--no-index]}}}}",
            )
        )
        return config

    def definitions(instance, resources) -> tuple[dict, str, dict]:
        result = materialize(
            BENCH_ASSETS,
            selection=["workflow_definitions", "variant_matrix"],
            partition_key="toy",
            instance=instance,
            resources=resources,
        )
        done = result.asset_materializations_for_node("workflow_definitions")[0]
        matrix = result.asset_materializations_for_node("variant_matrix")[0].metadata["matrix"]
        rows = {r.data["combo"]: r.data["environment"] for r in matrix.value.records}
        return done.metadata["environments"].value, done.tags["dagster/data_version"], rows

    one = "pip: wtbprobe-1.0-py3-none-any.whl; options: --no-index"
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(workflows_partitions.name, ["toy"])
        resources = bench_resources(tmp_path, pinned(wheels["1.0"]))  # the local executor
        envs, version, rows = definitions(instance, resources)
        assert envs == {"b=double": one}
        assert rows == {"baseline": "driver's environment", "b=double": one}
        runs = {
            combo: materialize(
                BENCH_ASSETS,
                selection=["batch_runs"],
                partition_key=batch_key("toy", combo),
                instance=instance,
                resources=resources,
                raise_on_error=False,
            )
            for combo in ("baseline", "b=double")
        }
        assert runs["baseline"].success
        assert not runs["b=double"].success  # its partition fails, saying what to do
        (failure,) = [e for e in runs["b=double"].all_events if e.is_step_failure]
        assert "use `--executor ray`" in str(failure.event_specific_data.error)
        compared = materialize(
            BENCH_ASSETS,
            selection=["comparison_matrix"],
            partition_key="toy",
            instance=instance,
            resources=resources,
        )
        metadata = compared.asset_materializations_for_node("comparison_matrix")[0].metadata
        assert metadata["environments"].value == {"b=double": one}

        resources = bench_resources(tmp_path, pinned(wheels["2.0"]))
        envs_2, version_2, _ = definitions(instance, resources)  # another pin: another version
        assert envs_2 == {"b=double": one.replace("1.0", "2.0")}
        assert version_2 != version


# -- on a real local Ray ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    # Ray retries a failed build 3 times by default; once is enough to show its message.
    # Its own temp dir: each pip environment is a clone of this virtualenv (~1 GB).
    saved = os.environ.get("RUNTIME_ENV_RETRY_TIMES")
    os.environ["RUNTIME_ENV_RETRY_TIMES"] = "1"
    temp_dir = tempfile.mkdtemp(prefix="wtbray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
    if saved is None:
        os.environ.pop("RUNTIME_ENV_RETRY_TIMES", None)
    else:
        os.environ["RUNTIME_ENV_RETRY_TIMES"] = saved


@pytest.mark.ray
def test_two_versions_of_one_package_run_side_by_side_on_ray(
    local_ray, wheels, sqlite_urls, tmp_path, capsys
):
    from wtb_dagster.ray_execution import RayExecutor

    with pytest.raises(ImportError):
        import wtbprobe  # noqa: F401  (the driver has neither version)
    module_dir = tmp_path / "modules"  # a third version, as a directory on the path
    (module_dir / "wtbprobe").mkdir(parents=True)
    (module_dir / "wtbprobe" / "__init__.py").write_text(
        "def version() -> str:\n    return '3.0-module'\n"
    )
    workflow = probe_workflow(
        {
            "v1": pip(wheels["1.0"]),
            "v1_again": pip(wheels["1.0"]),  # the same environment: the same workers
            "v2": pip(wheels["2.0"]),
            "module": {"py_modules": [str(module_dir)], "env_vars": {"WTB_PROBE_MODE": "m"}},
        }
    )
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    executor = RayExecutor(num_workers=2, concurrency_per_worker=2)
    summary = run_batch(workflow, store, checkpoint_url, executor=executor)

    assert summary.statuses == {"succeeded": 15}, summary.statuses
    expected = {
        "baseline": "absent",  # no env: the driver's environment
        "probe=v1": "1.0",
        "probe=v1_again": "1.0",
        "probe=v2": "2.0",
        "probe=module": "3.0-module",
    }
    finals = {}
    for combo, version in expected.items():
        for case in cases():
            values = store.get_result(thread_id_for("probe", combo, case.id))["final_values"]
            assert values["version"] == version, (combo, case.id, values)
            finals.setdefault(combo, []).append(values)
    assert {v["python"] for v in finals["baseline"]} == {sys.executable}
    assert all(v["python"] != sys.executable for v in finals["probe=v1"] + finals["probe=v2"])

    envs = {tuple(e.combos): e for e in executor.stats.environments}
    assert set(envs) == {("probe=v1", "probe=v1_again"), ("probe=v2",), ("probe=module",)}
    shared = envs["probe=v1", "probe=v1_again"]
    pids = {combo: {v["pid"] for v in finals[combo]} for combo in expected}
    assert pids["probe=v1"] | pids["probe=v1_again"] <= set(shared.worker_pids)
    assert not pids["probe=v2"] & set(shared.worker_pids)
    first_build = {e.description: e.build_s for e in executor.stats.environments}

    # the next batch finds the environments built: Ray's cache, not the installer
    run_batch(workflow, store, checkpoint_url, executor=executor, force=True)
    cached = {e.description: e.build_s for e in executor.stats.environments}
    with capsys.disabled():
        print(f"\nenvironment build, first vs cached (s): {first_build} / {cached}")
    for description, seconds in cached.items():
        if description.startswith("pip:"):  # a virtualenv and an install, then none
            assert seconds < first_build[description], (description, seconds)
    latencies = store.results_frame("probe").latency_s
    assert latencies.max() < 2.0  # the builds are not in any case's latency


@pytest.mark.ray
def test_a_failing_build_fails_only_its_combo_with_pips_message(local_ray, wheels, sqlite_urls):
    from wtb_dagster.ray_execution import RayExecutor

    workflow = probe_workflow(
        {
            "v1": pip(wheels["1.0"]),
            "v3": pip(
                "wtbprobe==3.0", options=["--no-index", "--find-links", str(wheels["1.0"].parent)]
            ),
        }
    )
    checkpoint_url, results_url = sqlite_urls
    store = ResultsStore(results_url)
    executor = RayExecutor(num_workers=1, concurrency_per_worker=2)
    with pytest.raises(EnvBuildError) as caught:
        run_batch(workflow, store, checkpoint_url, executor=executor)
    message = str(caught.value)
    assert "combo(s) probe=v3" in message and "none of their cases ran" in message
    assert "No matching distribution found for wtbprobe==3.0" in message  # pip's own words
    stored = store.results_frame("probe")
    assert sorted(stored.combo.unique()) == ["baseline", "probe=v1"]  # the others ran
    assert set(stored.status) == {"succeeded"} and len(stored) == 6
    with open_checkpointer(checkpoint_url) as saver:  # and no thread of it was started
        for case in cases():
            thread = thread_id_for("probe", "probe=v3", case.id)
            assert list(saver.list(thread_config(thread))) == []
