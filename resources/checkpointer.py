"""The LangGraph checkpointer resource, chosen by URL (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource
from langgraph.checkpoint.base import BaseCheckpointSaver
from pydantic import Field

from wtb_dagster import settings
from wtb_dagster.checkpoints import check_checkpoint_url, open_checkpointer


class CheckpointerResource(ConfigurableResource):
    """Where threads' checkpoints live: `sqlite:///…`, `postgresql://…` or `memory://` (tests)."""

    url: str = Field(
        default_factory=settings.checkpoint_url,
        description="Checkpointer URL (env: WTB_CHECKPOINT_URL; default: SQLite under WTB_DATA_DIR).",
    )
    pool_size: int = Field(default=4, description="PostgreSQL connections per process.")

    def checked_url(self) -> str:
        return check_checkpoint_url(self.url)

    @contextmanager
    def open(self) -> Iterator[BaseCheckpointSaver]:
        with open_checkpointer(self.checked_url(), pool_size=self.pool_size) as saver:
            yield saver
