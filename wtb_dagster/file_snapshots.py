"""Reading the workspace files stored with a thread's checkpoints (`wtb files`).

>>> with open_checkpointer(url) as saver:
...     manifest = files_at(saver, BlobStore(blob_url), "docs/baseline/c0")
>>> sorted(manifest)
['answer.md']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wtb_dagster.blobs import BlobStore
from wtb_dagster.errors import ThreadNotFoundError, WTBError
from wtb_dagster.workspaces import Manifest, load_manifest, reference_at, write_files


@dataclass(frozen=True)
class FileChange:
    """How one path differs between two snapshots."""

    path: str
    change: str  # "added", "deleted", "modified" (bytes) or "mode" (permissions only)
    size_before: int | None
    size_after: int | None


def files_at(
    saver: Any, blobs: BlobStore, thread_id: str, checkpoint_id: str | None = None
) -> Manifest:
    """The workspace files of a thread at a checkpoint (its newest when no id is given)."""
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    if checkpoint_id:
        config["configurable"]["checkpoint_id"] = checkpoint_id
    if saver.get_tuple(config) is None:
        what = f"checkpoint {checkpoint_id!r}" if checkpoint_id else "checkpoints"
        raise ThreadNotFoundError(
            f"thread {thread_id!r} has no {what} in this checkpointer; see `wtb history "
            f"{thread_id}`"
        )
    reference = reference_at(saver, thread_id, checkpoint_id)
    return {} if reference is None else load_manifest(blobs, reference["manifest"])


def diff(before: Manifest, after: Manifest) -> list[FileChange]:
    """What changed from `before` to `after`, by path."""
    changes = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        if old is None or new is None:
            kind = "added" if old is None else "deleted"
        else:
            kind = "modified" if old.digest != new.digest else "mode"
        changes.append(FileChange(path, kind, old.size if old else None, new.size if new else None))
    return changes


def export(blobs: BlobStore, manifest: Manifest, folder: Path) -> int:
    """Write a snapshot's files into an empty (or new) folder; returns the bytes written."""
    if folder.exists() and any(folder.iterdir()):
        raise WTBError(f"{folder} is not empty: export a snapshot into a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    return write_files(blobs, manifest, folder)
