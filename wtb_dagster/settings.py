"""Embedded defaults, overridable by environment variables (the Dagster resources use these too).

| variable | default |
| --- | --- |
| `WTB_DATA_DIR` | `./data` |
| `WTB_CHECKPOINT_URL` | `sqlite:///$WTB_DATA_DIR/checkpoints.db` |
| `WTB_RESULTS_URL` | `sqlite:///$WTB_DATA_DIR/results.db` |
| `WTB_CONFIG` | `./wtb.yaml` |
| `WTB_GROUP_COMMIT` | `auto`: PostgreSQL checkpoint writes of concurrent threads share commits (`on`: SQLite too; `off`: neither) |
| `WTB_BLOB_URL` | `$WTB_DATA_DIR/blobs` (files of thread workspaces; any fsspec URL) |
"""

from __future__ import annotations

import os
from pathlib import Path

from wtb_dagster.errors import ConfigError


def data_dir() -> Path:
    return Path(os.environ.get("WTB_DATA_DIR") or "data")


def _sqlite_url(path: Path) -> str:
    # sqlite:/// + relative path, or sqlite://// + absolute path (SQLAlchemy's convention)
    return f"sqlite:///{path}"


def checkpoint_url() -> str:
    return os.environ.get("WTB_CHECKPOINT_URL") or _sqlite_url(data_dir() / "checkpoints.db")


def results_url() -> str:
    return os.environ.get("WTB_RESULTS_URL") or _sqlite_url(data_dir() / "results.db")


def blob_url() -> str:
    # absolute: Ray workers do not run in the driver's working directory
    return os.environ.get("WTB_BLOB_URL") or str((data_dir() / "blobs").resolve())


GROUP_COMMIT_CHOICES = ("auto", "on", "off")


def group_commit() -> str:
    """Which checkpointers group-commit concurrent threads' writes (`WTB_GROUP_COMMIT`):
    `auto` (default) PostgreSQL only, `on` PostgreSQL and SQLite, `off` neither."""
    value = (os.environ.get("WTB_GROUP_COMMIT") or "auto").strip().lower()
    if value not in GROUP_COMMIT_CHOICES:
        raise ConfigError(
            f"WTB_GROUP_COMMIT={value!r}: use one of {', '.join(GROUP_COMMIT_CHOICES)}"
        )
    return value
