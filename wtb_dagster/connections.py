"""Opening PostgreSQL connections: permanent errors fail at once, transient ones are retried.

A missing database or a rejected role will not fix itself: the server's message is shown at
once. A server that is starting, full or not reachable yet may be back in a moment: the
connection is tried again with backoff until `CONNECT_DEADLINE_S`, then the last message is
shown. The checkpointer and the results store both connect through `connect_with_retry`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

from wtb_dagster.errors import ConfigError
from wtb_dagster.urls import redact_url, scrub

T = TypeVar("T")

CONNECT_DEADLINE_S = 15.0  # how long transient errors are retried (read at each call)
CONNECT_TIMEOUT_S = 5  # libpq connect_timeout of one attempt (libpq's minimum is 2)

# SQLSTATEs a connection can clear by waiting: the server is full (53300), starting or
# stopping (57P01-57P03), or out of memory/resources (53000, 53200); class 08 is the
# connection itself failing.
TRANSIENT_SQLSTATES = frozenset({"53000", "53200", "53300", "57P01", "57P02", "57P03"})

# libpq reports a failed connection without a SQLSTATE (there is no result to carry one), so
# the text is all there is. Anything else the server refuses (FATAL: database "x" does not
# exist, role "x" does not exist, password authentication failed, no pg_hba.conf entry…)
# and any malformed URL is permanent.
TRANSIENT_MESSAGES = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "too many clients",
    "remaining connection slots are reserved",
    "terminating connection due to administrator command",
    "connection refused",
    "timeout expired",
    "timed out",
    "server closed the connection unexpectedly",
    "connection reset",
    "could not receive data from server",
    "could not send data to server",
    "no route to host",
    "network is unreachable",
    "temporary failure in name resolution",
    # an orchestrator's DNS name may not resolve until the service is up
    "failed to resolve host",
    "could not translate host name",
)


def driver_error(exc: BaseException) -> BaseException:
    """The DBAPI (psycopg) error under a SQLAlchemy wrapper, else `exc` itself."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def is_transient(exc: BaseException) -> bool:
    """Whether connecting again later may succeed (else the error is permanent)."""
    exc = driver_error(exc)
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        return sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith("08")
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import psycopg
        from psycopg_pool import PoolTimeout
    except ImportError:  # pragma: no cover - both are dependencies
        return False
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False  # ProgrammingError (a malformed URL), InterfaceError…
    text = str(exc).lower()
    return any(message in text for message in TRANSIENT_MESSAGES)


def connect_with_retry(connect: Callable[[], T], deadline_s: float | None = None) -> T:
    """`connect()`, again with backoff while it fails transiently, until `deadline_s`.

    A permanent error, or the last transient one at the deadline, is raised as it came (with
    `wtb_waited_s` set on it when attempts were repeated).
    """
    deadline_s = CONNECT_DEADLINE_S if deadline_s is None else deadline_s
    start = time.monotonic()
    delay = 0.25
    while True:
        try:
            return connect()
        except Exception as exc:
            waited = time.monotonic() - start
            if not is_transient(exc) or waited + delay > deadline_s:
                if waited > 0.5:
                    exc.wtb_waited_s = waited  # type: ignore[attr-defined]
                raise
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def attempt_timeout(deadline_s: float | None = None) -> int:
    """A libpq `connect_timeout` (whole seconds, at least 2) for one attempt."""
    deadline_s = CONNECT_DEADLINE_S if deadline_s is None else deadline_s
    return max(2, min(CONNECT_TIMEOUT_S, math.ceil(deadline_s)))


def connection_error(what: str, url: str, setting: str, exc: BaseException) -> ConfigError:
    """A `ConfigError` naming the store, its URL (password as `***`), the setting, and the
    server's own message (scrubbed of the password)."""
    message = " ".join(str(driver_error(exc)).split())
    waited = getattr(driver_error(exc), "wtb_waited_s", None)
    retried = f" (still failing after {waited:.0f} s of retries)" if waited else ""
    return ConfigError(
        f"cannot open the {what} at {redact_url(url)} (setting {setting}){retried}: "
        + scrub(message or type(driver_error(exc)).__name__, url)
    )


def safe_cause(exc: BaseException, url: str) -> BaseException | None:
    """`exc` to chain under a `connection_error`, or None when its text (or its causes')
    would show the URL's password."""
    seen: BaseException | None = exc
    while seen is not None:
        if scrub(str(seen), url) != str(seen):
            return None
        seen = seen.__cause__ or seen.__context__
    return exc


def retry_transient_connects(
    dialect: Any, connection_record: Any, cargs: Any, cparams: dict[str, Any]
) -> Any:
    """A SQLAlchemy `do_connect` hook: each new connection of the engine is made with
    `connect_with_retry` (and a `connect_timeout` unless the URL sets one)."""
    cparams.setdefault("connect_timeout", attempt_timeout())
    return connect_with_retry(lambda: dialect.connect(*cargs, **cparams))
