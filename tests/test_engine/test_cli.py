"""The `wtb` command line: the installed console script, and its errors for user mistakes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.dagster_fixtures import write_toy_registry
from wtb_dagster.cli import main

WTB = str(Path(sys.executable).parent / "wtb")


def test_wtb_run_prints_progress_and_a_comparison_where_combos_differ(tmp_path):
    config = write_toy_registry(tmp_path)
    env = {
        **os.environ,
        "WTB_CONFIG": str(config),
        "WTB_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),  # tests.toy_graphs
    }
    completed = subprocess.run(
        [WTB, "run", "toy"], env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "8/8 threads" in completed.stderr  # the progress line
    assert "toy: 8 threads executed, 0 already stored" in completed.stdout
    rows = [line for line in completed.stdout.splitlines() if line.startswith("| b=double |")]
    assert rows and "| 0.000 |" in rows[0].replace(" ± 0.000", "")
    assert "| baseline | 4 | 0 |" in completed.stdout

    again = subprocess.run(
        [WTB, "run", "toy"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "0 threads executed, 8 already stored" in again.stdout


def test_wtb_workflows_lists_the_registry(tmp_path, capsys):
    config = write_toy_registry(tmp_path)
    assert main(["--config", str(config), "workflows"]) == 0
    out = capsys.readouterr().out
    assert "| toy | 3 | b: double | 2 | 4 |" in out


def test_unknown_workflow_is_one_error_line_not_a_traceback(tmp_path, capsys):
    config = write_toy_registry(tmp_path)
    code = main(["--config", str(config), "run", "nope", "--results", f"sqlite:///{tmp_path}/r.db"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "error: unknown workflow 'nope'; registered: toy"


def test_unknown_combo_names_the_declared_variants(tmp_path, capsys):
    config = write_toy_registry(tmp_path)
    urls = [
        "--checkpointer",
        f"sqlite:///{tmp_path}/c.db",
        "--results",
        f"sqlite:///{tmp_path}/r.db",
    ]
    code = main(["--config", str(config), "run", "toy", "--combo", "b=triple", *urls])
    assert code == 2
    assert "node 'b' has no variant 'triple'; declared: baseline, double" in capsys.readouterr().err


def test_missing_registry_says_how_to_point_at_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WTB_CONFIG", raising=False)
    assert main(["workflows"]) == 2
    assert "set WTB_CONFIG" in capsys.readouterr().err


def test_compare_without_results_says_what_to_run(tmp_path, capsys):
    config = write_toy_registry(tmp_path)
    code = main(
        ["--config", str(config), "compare", "toy", "--results", f"sqlite:///{tmp_path}/r.db"]
    )
    assert code == 1
    assert "run `wtb run toy` first" in capsys.readouterr().out


def _toy_urls(tmp_path):
    return [
        "--checkpointer",
        f"sqlite:///{tmp_path}/c.db",
        "--results",
        f"sqlite:///{tmp_path}/r.db",
    ]


def test_history_fork_and_rerun_from_the_command_line(tmp_path, capsys):
    config = write_toy_registry(tmp_path, n_cases=2)
    urls = _toy_urls(tmp_path)
    assert main(["--config", str(config), "run", "toy", "--combo", "baseline", *urls]) == 0
    capsys.readouterr()

    assert main(["--config", str(config), "history", "toy/baseline/c1", *urls]) == 0
    history = capsys.readouterr().out
    writers = [line.split("|")[2].strip() for line in history.splitlines()[2:]]
    assert writers == ["input", "__start__", "a", "b", "c"]

    code = main(
        ["--config", str(config), "fork", "toy/baseline/c1", "--before-node", "c",
         "--set", "x=5", *urls]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "toy/baseline/c1@fork-" in out and "nodes executed: c" in out
    assert '"x": 1005' in out

    code = main(
        ["--config", str(config), "rerun", "toy", "--combo", "baseline", "--before-node", "b",
         "--variant", "b=double", "--now", *urls]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "rerun request 1: 2 forks" in out
    assert out.count("nodes executed: b_double, c") == 0  # node names, not function names
    assert out.count("nodes executed: b, c") == 2

    assert main(["--config", str(config), "reruns", *urls]) == 0
    assert "| 1 | toy | baseline | b |" in capsys.readouterr().out


def test_fork_from_an_unknown_node_is_one_error_line(tmp_path, capsys):
    config = write_toy_registry(tmp_path, n_cases=1)
    urls = _toy_urls(tmp_path)
    main(["--config", str(config), "run", "toy", "--combo", "baseline", *urls])
    capsys.readouterr()
    code = main(["--config", str(config), "fork", "toy/baseline/c0", "--before-node", "zz", *urls])
    assert code == 2
    assert capsys.readouterr().err.startswith(
        "error: workflow 'toy' has no node 'zz'; its nodes: a, b, c"
    )


REPO = Path(__file__).resolve().parents[2]


def _bench_env(tmp_path, **settings):
    """The environment of a `wtb bench` subprocess: stores and instance under tmp_path, none of
    the code-location settings or search paths of the test process."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WTB_CODE_LOCATION", "WTB_CONFIG", "WTB_EXECUTOR", "PYTHONPATH")
    }
    return {
        **env,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "WTB_DATA_DIR": str(tmp_path / "data"),
        **settings,
    }


def test_wtb_bench_in_another_dagster_project_runs_this_repositorys_code_location(tmp_path):
    # A user's own Dagster project: its workspace.yaml, definitions.py and `assets` package
    # would break the run if `wtb bench` imported them; its wtb.yaml is the registry to run.
    project = tmp_path / "their_project"
    (project / "assets").mkdir(parents=True)
    (project / "assets" / "__init__.py").write_text("raise RuntimeError('their assets')\n")
    (project / "definitions.py").write_text("raise RuntimeError('their definitions')\n")
    (project / "workspace.yaml").write_text("load_from:\n  - python_file: definitions.py\n")
    config = write_toy_registry(project, n_cases=2)
    (project / "their_graphs.py").write_text((REPO / "tests" / "toy_graphs.py").read_text())
    config.write_text(config.read_text().replace("tests.toy_graphs", "their_graphs"))
    completed = subprocess.run(
        [WTB, "bench", "toy", "--executor", "local"],
        cwd=project, env=_bench_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "their assets" not in completed.stderr and "their definitions" not in completed.stderr
    assert "| baseline | 2 |" in completed.stdout  # the comparison of the toy workflow
    assert "3 Dagster runs on " in completed.stdout  # prepare, one batch of both combos, compare
    assert (tmp_path / "dagster_home" / "dagster.yaml").read_text() == (
        REPO / "dagster.yaml"
    ).read_text()


def test_wtb_bench_with_code_location_at_an_empty_folder_is_one_error_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    completed = subprocess.run(
        [WTB, "bench", "toy"],
        cwd=tmp_path, env=_bench_env(tmp_path, WTB_CODE_LOCATION=str(empty)),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        f"error: WTB_CODE_LOCATION={empty} has no definitions.py; point it at the folder "
        "holding the bench's definitions.py (the root of a wtb_dagster checkout)"
    ]


def test_code_location_is_the_option_then_the_setting_then_the_installed_repository(
    tmp_path, monkeypatch
):
    from wtb_dagster import cli

    other = tmp_path / "other"
    other.mkdir()
    (other / "definitions.py").write_text("")
    monkeypatch.delenv("WTB_CODE_LOCATION", raising=False)
    monkeypatch.chdir(other)  # the working directory plays no part
    assert cli._code_location() == REPO  # installed in editable mode from this repository
    monkeypatch.setenv("WTB_CODE_LOCATION", str(REPO))
    assert cli._code_location() == REPO
    assert cli._code_location(str(other)) == other
    monkeypatch.setenv("WTB_CODE_LOCATION", str(other))
    assert cli._code_location() == other


def test_wtb_bench_without_a_code_location_names_the_setting(tmp_path, monkeypatch, capsys):
    from wtb_dagster import cli

    monkeypatch.delenv("WTB_CODE_LOCATION", raising=False)
    monkeypatch.setattr(cli, "_installed_from", lambda: None)  # installed from a wheel
    assert main(["bench", "toy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Dagster code location: set WTB_CODE_LOCATION")
    assert len(err.splitlines()) == 1
    assert main(["bench", "toy", "--code-location", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --code-location {tmp_path} has no ")


def test_wtb_bench_refuses_an_assets_package_imported_from_elsewhere(tmp_path, monkeypatch, capsys):
    import types

    theirs = types.ModuleType("assets")
    theirs.__file__ = str(tmp_path / "assets" / "__init__.py")
    monkeypatch.setitem(sys.modules, "assets", theirs)
    monkeypatch.setenv("WTB_CODE_LOCATION", str(REPO))
    assert main(["bench", "toy"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"error: module 'assets' is already imported from {theirs.__file__}, not from the code "
        f"location {REPO}; run `wtb bench` in a fresh process"
    )


def test_history_marks_the_checkpoints_a_thread_shares_with_another(tmp_path, capsys):
    config = write_toy_registry(tmp_path, n_cases=2)
    urls = _toy_urls(tmp_path)
    assert main(["--config", str(config), "run", "toy", *urls]) == 0
    capsys.readouterr()

    assert main(["--config", str(config), "history", "toy/b=double/c1", *urls]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:7]]
    assert [row[1] for row in table] == ["input", "__start__", "a", "b", "c"]
    # input, __start__'s and a's checkpoints came from the baseline; b and c ran here
    assert [row[-1] for row in table] == ["shared", "shared", "shared", "", ""]
    assert "3 checkpoints shared with toy/baseline/c1" in lines[-1]

    assert main(["--config", str(config), "history", "toy/baseline/c1", *urls]) == 0
    assert "shared" not in capsys.readouterr().out
