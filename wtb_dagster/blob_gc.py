"""`wtb gc`: delete the blobs no checkpoint's manifest references.

Safe beside a running batch: a blob is deleted only if it is unreferenced *and* was last
written (or reused, which refreshes its time: `blobs.REFRESH_AFTER_S`) longer ago than the
minimum age. A batch writes a snapshot's blobs just before the checkpoint that references
them, so what it is about to reference is always young. The blob store must belong to this
checkpointer alone: blobs another checkpointer references look unreferenced from here.

>>> with open_checkpointer(url) as saver:
...     report = collect_garbage(saver, BlobStore(blob_url), apply=False)  # a dry run
>>> report.deletable
0
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from wtb_dagster.blobs import REFRESH_AFTER_S, BlobStore, BlobStoreError
from wtb_dagster.checkpoints import saver_backend
from wtb_dagster.errors import ConfigError
from wtb_dagster.workspaces import METADATA_KEY, load_manifest

DEFAULT_MIN_AGE_S = 3600.0
# well above the reuse refresh interval: a blob reused by a running batch is never this old
MIN_AGE_FLOOR_S = 2 * REFRESH_AFTER_S


@dataclass(frozen=True)
class GcReport:
    """What `collect_garbage` found and did."""

    blobs: int  # in the store when it was listed
    referenced: int
    young: int  # unreferenced but younger than the minimum age: kept
    deletable: int  # unreferenced and old: deleted unless a dry run
    bytes_deletable: int
    deleted: bool  # False for a dry run


def collect_garbage(
    saver: Any, blobs: BlobStore, min_age_s: float = DEFAULT_MIN_AGE_S, apply: bool = False
) -> GcReport:
    """Find (and with `apply`, delete) the blobs no manifest of this checkpointer references."""
    if min_age_s < MIN_AGE_FLOOR_S:
        raise ConfigError(
            f"--min-age {min_age_s:g} s is too short: a running batch may reuse a blob it "
            f"found up to {REFRESH_AFTER_S:g} s old; use at least {MIN_AGE_FLOOR_S:g} s"
        )
    # Listed before the references are read: a blob written after this listing is not even a
    # candidate, and one referenced by a checkpoint committed before the read is kept.
    listed = list(blobs.blobs())
    referenced = referenced_blobs(saver, blobs)
    young = deletable = size = 0
    for digest, _mtime, blob_size in listed:
        if digest in referenced:
            continue
        age = blobs.age_s(digest)  # read again: a batch may have reused it meanwhile
        if age is None:
            continue
        if age < min_age_s:
            young += 1
            continue
        deletable += 1
        size += blob_size
        if apply:
            blobs.delete(digest)
    return GcReport(
        len(listed), sum(d in referenced for d, _, _ in listed), young, deletable, size, apply
    )


def referenced_blobs(saver: Any, blobs: BlobStore) -> set[str]:
    """Every manifest the checkpoints reference, and every file blob those list."""
    manifests = set(_manifest_digests(saver))
    referenced = set(manifests)
    for digest in manifests:
        try:
            referenced.update(e.digest for e in load_manifest(blobs, digest).values())
        except BlobStoreError:
            continue  # a manifest already gone keeps nothing else alive
    return referenced


def _manifest_digests(saver: Any) -> Iterator[str]:
    """The manifest digests in the checkpoints' metadata, read in the database when it can."""
    backend = saver_backend(saver)
    if backend == "sqlite":
        with saver.lock:
            rows = saver.conn.execute(
                "SELECT DISTINCT json_extract(metadata, '$.wtb_files.manifest') FROM checkpoints "
                "WHERE json_extract(metadata, '$.wtb_files.manifest') IS NOT NULL"
            ).fetchall()
        yield from (row[0] for row in rows)
    elif backend == "postgres":
        with saver.conn.connection() as conn:
            rows = conn.execute(
                "SELECT DISTINCT metadata -> 'wtb_files' ->> 'manifest' AS digest "
                "FROM checkpoints WHERE metadata ? 'wtb_files'"
            ).fetchall()
        yield from (row["digest"] if isinstance(row, dict) else row[0] for row in rows)
    else:
        for item in saver.list(None):
            reference = (item.metadata or {}).get(METADATA_KEY)
            if reference:
                yield reference["manifest"]
