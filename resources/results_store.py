"""The results store resource: one row per thread, rerun requests (SQLAlchemy; SQLite or PostgreSQL)."""

from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from wtb_dagster import settings
from wtb_dagster.store import ResultsStore


class ResultsStoreResource(ConfigurableResource):
    """The bench's source of truth for results; the assets' metadata summarises it."""

    url: str = Field(
        default_factory=settings.results_url,
        description="Results store URL (env: WTB_RESULTS_URL; default: SQLite under WTB_DATA_DIR).",
    )
    _store: ResultsStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._store = ResultsStore(self.url)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()

    @property
    def store(self) -> ResultsStore:
        if self._store is None:  # used outside a run, e.g. by a sensor
            self._store = ResultsStore(self.url)
        self._store.setup()
        return self._store
