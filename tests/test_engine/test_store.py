"""The results store on SQLite files and on the local PostgreSQL: schema, upserts, filters, JSON."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from wtb_dagster.errors import ConfigError, WTBError
from wtb_dagster.migrations import LATEST, migrate
from wtb_dagster.rerun_request import rerun_request
from wtb_dagster.store import ResultsStore, metadata, normalise_url
from wtb_dagster.threads import ThreadResult, thread_id_for


@pytest.fixture
def store(store_urls):
    results = ResultsStore(store_urls[1])
    results.setup()
    yield results
    results.close()


def result(
    combo: str = "baseline",
    case_id: str = "c0",
    status: str = "succeeded",
    lineage: str = "",
    workflow: str = "w",
    **fields,
) -> ThreadResult:
    return ThreadResult(
        workflow=workflow,
        combo=combo,
        case_id=case_id,
        thread_id=thread_id_for(workflow, combo, case_id, lineage),
        status=status,
        lineage=lineage,
        **fields,
    )


# -- schema --------------------------------------------------------------------------------------


def test_setup_is_idempotent_and_records_every_schema_version(store_urls):
    first = ResultsStore(store_urls[1])
    first.setup()
    first.setup()
    first.upsert_results([result()])
    second = ResultsStore(store_urls[1])  # another process starting on the same database
    second.setup()
    try:
        assert first.schema_version() == second.schema_version() == LATEST == 7
        with second.engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version FROM wtb_schema_version")).all()
            tables = set(sa.inspect(conn).get_table_names())
        assert [v for (v,) in versions] == [1, 2, 3, 4, 5, 6, 7]
        assert {
            "wtb_thread_results",
            "wtb_rerun_requests",
            "wtb_thread_leases",
            "wtb_judge_cache",
            "wtb_node_events",
            "wtb_schema_version",
        } <= tables
        assert second.count("w") == 1  # the second setup kept the data
    finally:
        first.close()
        second.close()


def _schema(engine: sa.Engine) -> dict[str, dict]:
    """Every wtb table's columns (name, type, nullable, default), indexes and unique keys."""
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        return {
            table: {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                    for c in inspector.get_columns(table)
                ],
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in inspector.get_indexes(table)
                ),
                "unique": sorted(
                    tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
                ),
                "pk": tuple(inspector.get_pk_constraint(table)["constrained_columns"]),
            }
            for table in sorted(inspector.get_table_names())
            if table.startswith("wtb_")
        }


def test_database_upgraded_from_version_1_equals_a_fresh_one_and_the_live_tables(
    store_urls, tmp_path
):
    old = ResultsStore(store_urls[1])
    with old.engine.begin() as conn:
        assert migrate(conn, target=1) == 1  # a database as version 1 left it
    old.upsert_results([result(case_id="kept")])  # live writes work on version-1 columns
    old.setup()  # an upgrade by the next release
    assert old.schema_version() == LATEST
    assert old.count("w") == 1

    if store_urls[1].startswith("sqlite"):
        fresh = ResultsStore(f"sqlite:///{tmp_path}/fresh.db")
    else:  # a schema of its own in the same database, built from nothing by setup()
        with old.engine.begin() as conn:
            conn.execute(sa.text("CREATE SCHEMA fresh"))
        fresh = ResultsStore(store_urls[1])
        fresh.engine = sa.create_engine(fresh.url, connect_args={"options": "-csearch_path=fresh"})
    fresh.setup()
    try:
        upgraded, built = _schema(old.engine), _schema(fresh.engine)
        assert upgraded == built
        # and the tables the code queries are the ones the migrations build
        live = {
            name: sorted(c.name for c in table.columns) for name, table in metadata.tables.items()
        }
        built_columns = {name: sorted(c[0] for c in t["columns"]) for name, t in built.items()}
        del built_columns["wtb_schema_version"]  # the migrations' own bookkeeping
        assert built_columns == live
    finally:
        old.close()
        fresh.close()


def test_url_forms_are_normalised_and_unknown_schemes_rejected():
    assert normalise_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert normalise_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="WTB_RESULTS_URL"):
        normalise_url("mysql://u@h/db")


def test_unreachable_postgres_is_a_config_error(monkeypatch):
    # a refused connection is transient: retried until the (here shortened) deadline
    monkeypatch.setattr("wtb_dagster.connections.CONNECT_DEADLINE_S", 1.0)
    unreachable = ResultsStore("postgresql://postgres@127.0.0.1:1/nothing")
    with pytest.raises(ConfigError, match="cannot open the results store"):
        unreachable.setup()
    unreachable.close()


# -- thread results ------------------------------------------------------------------------------


def test_upsert_twice_keeps_one_row_and_updates_its_values(store):
    store.upsert_results(
        [result(status="failed", error="ValueError: x", latency_s=1.0, attempts=1)]
    )
    store.upsert_results(
        [
            result(
                status="succeeded",
                scores={"m": 1.0},
                final_values={"answer": "42"},
                latency_s=2.5,
                attempts=2,
            )
        ]
    )
    assert store.count("w") == 1
    row = store.get_result("w/baseline/c0")
    assert row["status"] == "succeeded"
    assert row["error"] is None
    assert row["scores"] == {"m": 1.0}
    assert row["final_values"] == {"answer": "42"}
    assert row["latency_s"] == 2.5 and row["attempts"] == 2


def test_upsert_of_many_rows_returns_the_count_and_stores_each_once(store):
    batch = [result(case_id=f"c{i}") for i in range(1203)]  # more than one 500-row chunk
    assert store.upsert_results(batch) == 1203
    assert store.upsert_results(batch) == 1203
    assert store.count("w") == 1203
    assert store.upsert_results([]) == 0


def test_forks_are_separate_rows_and_left_out_of_the_main_frame_by_default(store):
    store.upsert_results(
        [
            result(scores={"m": 0.0}),
            result(
                lineage="fork-abc",
                scores={"m": 1.0},
                parent_thread_id="w/baseline/c0",
                parent_checkpoint_id="cp-1",
                change={"variant": "b=double"},
            ),
        ]
    )
    assert store.count("w") == 2
    main = store.results_frame("w")
    assert list(main.thread_id) == ["w/baseline/c0"]
    everything = store.results_frame("w", lineage=None)
    assert sorted(everything.lineage) == ["", "fork-abc"]
    fork = store.get_result("w/baseline/c0@fork-abc")
    assert fork["parent_thread_id"] == "w/baseline/c0"
    assert fork["parent_checkpoint_id"] == "cp-1"
    assert fork["change"] == {"variant": "b=double"}
    assert store.results_frame("w", lineage="fork-abc").scores.tolist() == [{"m": 1.0}]


def test_results_frame_filters_by_workflow_combo_and_status_and_orders_rows(store):
    store.upsert_results(
        [
            result(combo="b=x", case_id="c1"),
            result(combo="b=x", case_id="c0", status="failed"),
            result(combo="baseline", case_id="c0"),
            result(combo="b=y", case_id="c0"),
            result(workflow="other", case_id="c0"),
        ]
    )
    frame = store.results_frame("w")
    assert list(zip(frame.combo, frame.case_id, strict=True)) == [
        ("b=x", "c0"),
        ("b=x", "c1"),
        ("b=y", "c0"),
        ("baseline", "c0"),
    ]
    assert {"combo", "case_id", "status", "scores", "latency_s", "thread_id"} <= set(frame.columns)
    assert sorted(store.results_frame("w", combos=["b=x", "baseline"]).combo) == [
        "b=x",
        "b=x",
        "baseline",
    ]
    failed = store.results_frame("w", status="failed")
    assert list(failed.thread_id) == ["w/b=x/c0"]
    assert store.combos("w") == ["b=x", "b=y", "baseline"]  # distinct, this workflow's only
    assert store.combos("nothing stored") == []
    assert store.results_frame("w", combos=[]).empty
    assert store.results_frame("nobody").empty
    assert list(store.results_frame("other").workflow) == ["other"]


def test_statuses_maps_thread_ids_of_the_main_lineage_to_status_and_code_version(store):
    store.upsert_results(
        [
            result(combo="b=x", case_id="c0", status="failed", code_version="v1"),
            result(combo="b=x", case_id="c1"),
            result(combo="baseline", case_id="c0", status="timed_out"),
            result(combo="b=x", case_id="c0", lineage="fork-1"),
        ]
    )
    assert store.statuses("w") == {
        "w/b=x/c0": ("failed", "v1"),
        "w/b=x/c1": ("succeeded", None),
        "w/baseline/c0": ("timed_out", None),
    }
    assert store.statuses("w", combo="baseline") == {"w/baseline/c0": ("timed_out", None)}
    assert store.statuses("w", lineage="fork-1") == {"w/b=x/c0@fork-1": ("succeeded", None)}
    assert store.get_result("w/nothing/c9") is None


def test_timestamps_are_stored_as_datetimes(store):
    store.upsert_results([result(started_at=1_700_000_000.0, finished_at=1_700_000_002.5)])
    row = store.get_result("w/baseline/c0")
    assert (row["finished_at"] - row["started_at"]).total_seconds() == 2.5
    assert row["started_at"].year == 2023


class Answer(BaseModel):
    text: str
    score: float


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


def test_non_json_values_are_stored_safely(store):
    store.upsert_results(
        [
            result(
                status="failed",
                error="ValueError: bad \x00 byte",
                input={"x": 1, 2: "int key"},
                final_values={
                    "nan": math.nan,
                    "inf": -math.inf,
                    "nested": [{"nan": float("nan")}, (1, 2)],
                    "set": {3},
                    "model": Answer(text="hi", score=math.nan),
                    "object": Opaque(),
                    "numpy": [np.int64(7), np.float32(0.5), np.bool_(True), np.array([1, 2])],
                    "nul\x00key": "a\x00b",
                },
                scores={"m": math.nan},
                node_timings={"a": [0.1, math.inf]},
            )
        ]
    )
    row = store.get_result("w/baseline/c0")
    assert row["final_values"] == {
        "nan": None,
        "inf": None,
        "nested": [{"nan": None}, [1, 2]],
        "set": [3],
        "model": {"text": "hi", "score": None},
        "object": "<Opaque>",
        "numpy": [7, 0.5, True, [1, 2]],
        "nul\ufffdkey": "a\ufffdb",
    }
    assert row["input"] == {"x": 1, "2": "int key"}
    assert row["scores"] == {"m": None}
    assert row["node_timings"] == {"a": [0.1, None]}
    assert row["error"] == "ValueError: bad \ufffd byte"


def test_a_thread_without_final_values_stores_null(store):
    store.upsert_results([result(status="interrupted", final_values=None)])
    assert store.get_result("w/baseline/c0")["final_values"] is None


# -- rerun requests ------------------------------------------------------------------------------


def test_rerun_request_add_list_update_round_trip(store):
    first = store.add_rerun_request(
        rerun_request(
            "w",
            thread_ids=["w/baseline/c0", "w/baseline/c1"],
            before_node="b",
            variant="b=double",
            state_patch={"x": math.nan, "note": "retry"},
            reason="try the other b",
        )
    )
    second = store.add_rerun_request(rerun_request("w", combo="b=x", status_filter="failed"))
    assert second > first

    pending = store.rerun_requests(status="pending")
    assert [r.id for r in pending] == [first, second]
    request = store.get_rerun_request(first)
    assert request.thread_ids == ["w/baseline/c0", "w/baseline/c1"]
    assert request.state_patch == {"x": None, "note": "retry"}
    assert request.before_node == "b" and request.variant == "b=double"
    assert request.status == "pending"
    assert request.created_at == request.updated_at

    store.update_rerun_request(
        first, status="done", dagster_run_id="run-1", result_thread_ids=["w/baseline/c0@fork-1"]
    )
    done = store.get_rerun_request(first)
    assert done.status == "done" and done.dagster_run_id == "run-1"
    assert done.result_thread_ids == ["w/baseline/c0@fork-1"]
    assert done.updated_at >= done.created_at
    assert [r.id for r in store.rerun_requests(status="pending")] == [second]
    assert [r.id for r in store.rerun_requests(status="done")] == [first]
    assert [r.id for r in store.rerun_requests(after_id=first)] == [second]
    assert [r.id for r in store.rerun_requests()] == [first, second]


def test_rerun_request_with_an_unknown_field_is_rejected_and_nothing_written(store):
    with pytest.raises(WTBError, match="unknown field"):
        store.add_rerun_request(rerun_request("w", checkpoint="cp-1"))
    assert store.rerun_requests() == []


def test_unknown_rerun_request_id_is_an_error(store):
    with pytest.raises(WTBError, match="rerun request 999 does not exist"):
        store.get_rerun_request(999)


def test_rerun_request_error_text_with_a_nul_is_stored(store):
    request = store.add_rerun_request(rerun_request("w", reason="a\x00b"))
    store.update_rerun_request(request, status="failed", error="boom\x00")
    stored = store.get_rerun_request(request)
    assert stored.reason == "a\ufffdb" and stored.error == "boom\ufffd"
