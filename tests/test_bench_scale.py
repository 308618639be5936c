"""`python -m bench.scale` runs end to end on the real PostgreSQL at a small row count."""

from __future__ import annotations

import sqlalchemy as sa

from bench import scale
from tests.conftest import PG_ADMIN
from wtb_dagster.store import normalise_url


def _scale_databases() -> set[str]:
    engine = sa.create_engine(normalise_url(PG_ADMIN))
    try:
        with engine.connect() as conn:
            query = "SELECT datname FROM pg_database WHERE datname LIKE 'wtb_scale_%'"
            return set(conn.execute(sa.text(query)).scalars())
    finally:
        engine.dispose()


def test_scale_bench_measures_both_paths_and_drops_its_database(capsys):
    before = _scale_databases()
    code = scale.main(["--rows", "2000", "--resamples", "99", "--admin-url", PG_ADMIN])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| 2,000 | database |" in out and "| 2,000 | in memory |" in out
    assert "10 × 40 |" in out  # 10 combos × 40 cases compared
    assert "within 1024 MB" in out
    assert _scale_databases() <= before  # its own database is gone (others' may come and go)


def test_fill_writes_the_rows_asked_for_with_a_state_that_would_hurt_to_load(pg_url):
    _, table_mb = scale.fill(pg_url, 500)
    engine = sa.create_engine(normalise_url(pg_url))
    try:
        with engine.connect() as conn:
            count, state = conn.execute(
                sa.text(
                    "SELECT count(*), min(octet_length(final_values::text)) FROM wtb_thread_results"
                )
            ).one()
            combos = conn.execute(
                sa.text("SELECT count(DISTINCT combo) FROM wtb_thread_results")
            ).scalar_one()
    finally:
        engine.dispose()
    assert count == 500 and combos == scale.COMBOS
    assert state >= 1200  # ~1.3 KB of final state per thread
    assert table_mb > 0
