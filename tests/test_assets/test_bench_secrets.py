"""A failed `wtb bench` on a PostgreSQL URL with a password: the password is in no output, no
Dagster event and no file under DAGSTER_HOME; the server's reason and the redacted URL are."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from dagster import DagsterInstance, serialize_value

REPO = Path(__file__).resolve().parents[2]
WTB = str(Path(sys.executable).parent / "wtb")


@pytest.mark.postgres
@pytest.mark.parametrize("setting", ["WTB_RESULTS_URL", "WTB_CHECKPOINT_URL"])
def test_a_failed_bench_never_shows_the_password(tmp_path, pg_password_role, setting):
    role, password = pg_password_role
    missing = f"wtb_missing_{uuid.uuid4().hex[:8]}"
    url = f"postgresql://{role}:{password}@127.0.0.1:5432/{missing}"
    home = tmp_path / "dagster_home"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "WTB_DATA_DIR": str(tmp_path / "data"),
        "WTB_EXECUTOR": "local",
        setting: url,
    }
    completed = subprocess.run(
        [WTB, "bench", "demo", "--combo", "baseline"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode != 0
    assert password not in completed.stdout and password not in completed.stderr

    events: list[str] = []
    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert runs
        for run in runs:
            assert password not in serialize_value(run)
            events += [serialize_value(event) for event in instance.all_logs(run.run_id)]
    assert all(password not in event for event in events)
    # the failure is in the event log, with the server's reason and the redacted URL
    reported = [e for e in events if f'database \\"{missing}\\" does not exist' in e]
    assert reported and all(f"{role}:***@127.0.0.1" in e for e in reported)
    assert any(setting in e for e in reported)

    files = [path for path in home.rglob("*") if path.is_file()]
    assert any("compute_logs" in path.parts for path in files)
    for path in files:
        assert password.encode() not in path.read_bytes(), path
