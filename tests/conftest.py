"""Shared fixtures: toy workflows, SQLite URLs under tmp_path, a throwaway PostgreSQL database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests import toy_graphs
from wtb_dagster.datasets import TestCase
from wtb_dagster.scoring import builtin
from wtb_dagster.workflows import Workflow

PG_ADMIN = os.environ.get("WTB_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def toy_cases(n: int = 4) -> list[TestCase]:
    # a(+1) → b(+10) → c(+1000) on the baseline combo
    return [
        TestCase(id=f"c{i}", input={"x": i}, expected={"answer": str(i + 1011)}) for i in range(n)
    ]


def toy_workflow(name: str = "toy", cases: list[TestCase] | None = None, **kwargs) -> Workflow:
    return Workflow(
        name=name,
        graph=toy_graphs.linear,
        variants=kwargs.pop(
            "variants",
            {"b": {"double": toy_graphs.node_b_double, "async": toy_graphs.node_b_async}},
        ),
        scorers=[builtin("exact_match", field="answer")],
        dataset=cases if cases is not None else toy_cases(),
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _blobs_in_tmp(tmp_path, monkeypatch) -> None:
    # workspace files of any test (the demo's SQL branch writes one) go to the test's own
    # folder, never to ./data/blobs of the checkout the tests run in
    monkeypatch.setenv("WTB_BLOB_URL", str(tmp_path / "blobs"))


@pytest.fixture(autouse=True)
def _reset_counts() -> Iterator[None]:
    toy_graphs.CALLS.clear()
    yield


@pytest.fixture
def sqlite_urls(tmp_path) -> tuple[str, str]:
    return f"sqlite:///{tmp_path}/checkpoints.db", f"sqlite:///{tmp_path}/results.db"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own on the local server, dropped afterwards."""
    name = f"wtb_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # the brief promises a server; say so loudly
        pytest.fail(f"the local PostgreSQL at {PG_ADMIN} is not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def store_urls(request, tmp_path) -> Iterator[tuple[str, str]]:
    """(checkpoint URL, results URL) on SQLite files, then on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/checkpoints.db", f"sqlite:///{tmp_path}/results.db"
    else:
        url = request.getfixturevalue("pg_url")
        yield url, url


@pytest.fixture
def pg_password_role() -> Iterator[tuple[str, str]]:
    """(role, password) of a login role with a password on the local server, dropped afterwards.

    Request it before `pg_url` when the role owns that database: fixtures end in reverse.
    """
    suffix = uuid.uuid4().hex[:12]
    role, password = f"wtb_pw_{suffix}", f"s3cr3t-{suffix}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    try:
        yield role, password
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')
