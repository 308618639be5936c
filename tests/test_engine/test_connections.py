"""URLs shown with the password as ***, and PostgreSQL connection errors: permanent ones fail at
once with the server's message, transient ones are retried (real errors from the local server)."""

from __future__ import annotations

import socket
import time
import traceback
import uuid

import psycopg
import pytest
import sqlalchemy as sa

from wtb_dagster import connections
from wtb_dagster.checkpoints import open_checkpointer
from wtb_dagster.connections import connect_with_retry, is_transient
from wtb_dagster.errors import ConfigError
from wtb_dagster.store import ResultsStore, normalise_url
from wtb_dagster.urls import redact_url, scrub


def _open_checkpointer(url: str) -> None:
    with open_checkpointer(url, pool_size=1):
        pass


# -- redact_url / scrub --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///data/results.db", "sqlite:///data/results.db"),
        ("sqlite:////abs/results.db", "sqlite:////abs/results.db"),
        ("memory://toy", "memory://toy"),
        # what SQLAlchemy cannot parse: several hosts, a bad port, an unencoded "@"
        ("postgresql://u:pw@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        ("postgresql://u:pw@h:badport/db", "postgresql://u:***@h:badport/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=pw&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("host=h user=u password=pw dbname=db", "host=h user=u password=*** dbname=db"),
    ],
)  # fmt: skip
def test_redact_url_shows_the_password_as_stars(url, shown):
    assert redact_url(url) == shown


def test_scrub_removes_the_password_in_every_form_it_may_take():
    url = "postgresql://u:p%40ss-word@h/db"
    text = "p%40ss-word / p@ss-word / ss-word@h / postgresql://x:other@h/db"
    cleaned = scrub(text, url)
    assert "p@ss" not in cleaned and "ss-word" not in cleaned and "other" not in cleaned
    assert cleaned.count("***") == 4
    # libpq's view of an unencoded "@": host "ss@h" (a short piece is masked only before "@")
    message = "failed to resolve host 'ss@h': Name or service not known; port 5432"
    assert scrub(message, "postgresql://u:p@ss@h:5432/db") == message.replace("ss@h", "***@h")


def test_unsupported_urls_are_named_without_their_password():
    with pytest.raises(ConfigError) as store_error:
        normalise_url("mysql://u:hunter22@h/db")
    with pytest.raises(ConfigError) as checkpointer_error:
        _open_checkpointer("postgresq://u:hunter22@h/db")
    for error in (store_error, checkpointer_error):
        assert "hunter22" not in str(error.value) and "u:***@h/db" in str(error.value)


def test_a_malformed_results_url_is_a_config_error_without_its_password():
    with pytest.raises(ConfigError, match="WTB_RESULTS_URL") as info:
        ResultsStore("postgresql://u:hunter22@h:badport/db")
    assert "hunter22" not in str(info.value) and "u:***@h:badport" in str(info.value)


# -- classification on real errors ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _missing_db_url(role: str, password: str) -> str:
    return f"postgresql://{role}:{password}@127.0.0.1:5432/wtb_missing_{uuid.uuid4().hex[:8]}"


def _error_of(connect) -> BaseException:
    try:
        connect()
    except Exception as exc:
        return exc
    raise AssertionError("connected")


@pytest.mark.postgres
def test_classifier_on_real_psycopg_and_sqlalchemy_errors(pg_password_role):
    role, password = pg_password_role
    closed = f"postgresql://{role}:{password}@127.0.0.1:{_free_port()}/postgres"
    missing_db = _missing_db_url(role, password)
    missing_role = f"postgresql://wtb_nobody_{uuid.uuid4().hex[:8]}:pw@127.0.0.1:5432/postgres"
    bad_option = f"postgresql://{role}:{password}@127.0.0.1:5432/postgres?bogus=1"

    def psycopg_error(url: str) -> BaseException:
        return _error_of(lambda: psycopg.connect(url, connect_timeout=2))

    def sqlalchemy_error(url: str) -> BaseException:
        engine = sa.create_engine(normalise_url(url))
        try:
            return _error_of(lambda: engine.connect().close())
        finally:
            engine.dispose()

    for error_of in (psycopg_error, sqlalchemy_error):
        refused = error_of(closed)
        assert "Connection refused" in str(refused) and is_transient(refused)
        no_db = error_of(missing_db)
        assert "does not exist" in str(no_db) and not is_transient(no_db)
        no_role = error_of(missing_role)
        assert "does not exist" in str(no_role) and not is_transient(no_role)
        assert not is_transient(error_of(bad_option))


@pytest.mark.postgres
def test_transient_errors_are_retried_and_permanent_ones_are_not(pg_password_role):
    role, password = pg_password_role
    closed = f"postgresql://{role}:{password}@127.0.0.1:{_free_port()}/postgres"
    missing_db = _missing_db_url(role, password)
    attempts: dict[str, int] = {closed: 0, missing_db: 0}

    def attempt(url: str):
        def connect():
            attempts[url] += 1
            return psycopg.connect(url, connect_timeout=2)

        return connect

    with pytest.raises(psycopg.OperationalError, match="Connection refused") as refused:
        connect_with_retry(attempt(closed), deadline_s=1.0)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        connect_with_retry(attempt(missing_db), deadline_s=30.0)
    assert attempts[closed] >= 2 and refused.value.wtb_waited_s > 0.5
    assert attempts[missing_db] == 1


# -- what the checkpointer and the results store report -----------------------------------------


def _assert_redacted(error: BaseException, password: str, setting: str) -> None:
    """The message (and the whole traceback, chained errors included) names the setting and
    the server's reason, shows *** for the password and never the password itself."""
    message = str(error)
    assert setting in message and "***" in message
    assert "does not exist" in message
    assert "pool initialization incomplete" not in message
    printed = "".join(traceback.format_exception(error))
    assert password not in printed


@pytest.mark.postgres
def test_checkpointer_on_a_missing_database_fails_at_once_with_the_servers_message(
    pg_password_role,
):
    role, password = pg_password_role
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        _open_checkpointer(_missing_db_url(role, password))
    assert time.monotonic() - started < 10  # the pool's wait (15 s) is not reached
    _assert_redacted(info.value, password, "WTB_CHECKPOINT_URL")
    assert f"{role}:***@127.0.0.1" in str(info.value)


@pytest.mark.postgres
def test_results_store_on_a_missing_database_fails_at_once_with_the_servers_message(
    pg_password_role,
):
    role, password = pg_password_role
    store = ResultsStore(_missing_db_url(role, password))
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        store.setup()
    store.close()
    assert time.monotonic() - started < 10
    _assert_redacted(info.value, password, "WTB_RESULTS_URL")
    assert "cannot open the results store" in str(info.value)


@pytest.mark.postgres
def test_an_unknown_role_fails_at_once_for_both_stores():
    url = f"postgresql://wtb_nobody_{uuid.uuid4().hex[:8]}:hunter22@127.0.0.1:5432/postgres"
    with pytest.raises(ConfigError, match=r'role "wtb_nobody_\w+" does not exist') as ckpt:
        _open_checkpointer(url)
    store = ResultsStore(url)
    with pytest.raises(ConfigError, match=r'role "wtb_nobody_\w+" does not exist') as results:
        store.setup()
    store.close()
    for error in (ckpt, results):
        assert "hunter22" not in "".join(traceback.format_exception(error.value))


@pytest.mark.postgres
def test_a_refused_connection_is_retried_until_the_deadline(monkeypatch, pg_password_role):
    role, password = pg_password_role
    monkeypatch.setattr(connections, "CONNECT_DEADLINE_S", 1.0)
    url = f"postgresql://{role}:{password}@127.0.0.1:{_free_port()}/postgres"
    with pytest.raises(ConfigError, match="Connection refused") as info:
        _open_checkpointer(url)
    assert "of retries" in str(info.value) and password not in str(info.value)
    store = ResultsStore(url)
    with pytest.raises(ConfigError, match="Connection refused") as info:
        store.setup()
    store.close()
    assert "of retries" in str(info.value) and password not in str(info.value)


@pytest.mark.postgres
def test_a_url_with_a_password_still_opens_both_stores(pg_password_role, pg_url):
    role, password = pg_password_role
    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO "{role}"')
    url = f"postgresql://{role}:{password}@127.0.0.1:5432/{database}"
    with open_checkpointer(url, pool_size=1) as saver:
        assert saver.get_tuple({"configurable": {"thread_id": "none"}}) is None
    store = ResultsStore(url)
    try:
        store.setup()
        assert password not in repr(store.engine)
    finally:
        store.close()
