"""Embedded defaults, overridable by environment variables (the Dagster resources use these too).

| variable | default |
| --- | --- |
| `WTB_DATA_DIR` | `./data` |
| `WTB_CHECKPOINT_URL` | `sqlite:///$WTB_DATA_DIR/checkpoints.db` |
| `WTB_RESULTS_URL` | `sqlite:///$WTB_DATA_DIR/results.db` |
| `WTB_CONFIG` | `./wtb.yaml` |
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    return Path(os.environ.get("WTB_DATA_DIR") or "data")


def _sqlite_url(path: Path) -> str:
    # sqlite:/// + relative path, or sqlite://// + absolute path (SQLAlchemy's convention)
    return f"sqlite:///{path}"


def checkpoint_url() -> str:
    return os.environ.get("WTB_CHECKPOINT_URL") or _sqlite_url(data_dir() / "checkpoints.db")


def results_url() -> str:
    return os.environ.get("WTB_RESULTS_URL") or _sqlite_url(data_dir() / "results.db")
