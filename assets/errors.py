"""User mistakes become a Dagster `Failure` with the bench's message, not a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Failure

from wtb_dagster.errors import WTBError


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except WTBError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
