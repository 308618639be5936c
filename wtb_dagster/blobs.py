"""Content-addressed blobs behind an fsspec URL: the bytes of the files thread workspaces wrote.

A blob's name is the SHA-256 of its content (`ab/abcdef…`), so identical content written by
any thread, combo or run is stored once. `WTB_BLOB_URL` chooses where: by default a folder
under `WTB_DATA_DIR`; `s3://bucket/prefix`, `gcs://…` or any fsspec URL for a Ray cluster
whose workers share no disk (the matching fsspec package, e.g. s3fs, must be installed).

>>> store = BlobStore("file:///tmp/wtb-blobs")
>>> digest, size = store.put_bytes(b"hello")
>>> store.read_bytes(digest)
b'hello'
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wtb_dagster.errors import ConfigError
from wtb_dagster.urls import redact_url

_CHUNK = 1 << 20  # files are hashed and copied in 1 MiB chunks: a large file never sits in memory
# A blob reused (deduplicated) more than this long after it was written has its modification
# time refreshed, so `wtb gc`, which deletes only unreferenced blobs older than its minimum age
# (well above this), never deletes one a running batch is about to reference again.
REFRESH_AFTER_S = 600.0


class BlobStoreError(ConfigError):
    """The blob store (`WTB_BLOB_URL`) cannot be reached, written or read."""


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class BlobStore:
    """Blobs named by their SHA-256 under one fsspec URL; picklable (Ray ships it by URL)."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise BlobStoreError(
                f"blob store {redact_url(url)!r} (WTB_BLOB_URL) cannot be opened: {exc}; use a "
                "folder path, file:///path, or an fsspec URL whose package is installed "
                "(s3:// needs s3fs, gcs:// needs gcsfs)"
            ) from None
        self.root = root.rstrip("/")
        self.local = "file" in _protocols(self.fs)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return BlobStore, (self.url,)

    def path(self, digest: str) -> str:
        return f"{self.root}/{digest[:2]}/{digest}"

    def check_writable(self) -> None:
        """Write, read back and delete a probe blob: a bad URL fails before any thread runs."""
        probe = f"{self.root}/.probe-{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, b"wtb")
            if self.fs.cat_file(probe) != b"wtb":
                raise OSError("the probe read back differs from what was written")
            self.fs.rm_file(probe)
        except Exception as exc:
            raise BlobStoreError(
                f"blob store {redact_url(self.url)!r} (WTB_BLOB_URL) is not writable: "
                f"{type(exc).__name__}: {exc}; point WTB_BLOB_URL at a folder or bucket this "
                "process (and every Ray worker) can write"
            ) from None

    def put_file(self, local: Path, digest: str | None = None) -> tuple[str, bool]:
        """Store a local file; returns its digest and whether its content was new here."""
        digest = digest or file_digest(local)
        target = self.path(digest)
        if self._reuse(target):
            return digest, False
        self._write(target, lambda tmp: self.fs.put_file(str(local), tmp))
        return digest, True

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store bytes; returns their digest and whether they were new here."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if self._reuse(target):
            return digest, False
        self._write(target, lambda tmp: self.fs.pipe_file(tmp, data))
        return digest, True

    def get_file(self, digest: str, local: Path) -> None:
        """Copy a blob to a local file (streamed)."""
        try:
            self.fs.get_file(self.path(digest), str(local))
        except FileNotFoundError:
            raise BlobStoreError(
                f"blob {digest[:12]} is missing from {redact_url(self.url)!r}: was it deleted "
                "by hand, or is WTB_BLOB_URL not the store this thread was run with?"
            ) from None

    def read_bytes(self, digest: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(digest)))
        except FileNotFoundError:
            raise BlobStoreError(
                f"blob {digest[:12]} is missing from {redact_url(self.url)!r}"
            ) from None

    def blobs(self) -> Iterator[tuple[str, float, int]]:
        """Every blob as (digest, modification time, size)."""
        if not self.fs.exists(self.root):
            return
        for info in self.fs.find(self.root, withdirs=False, detail=True).values():
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
                yield name, _mtime(info), int(info.get("size") or 0)

    def age_s(self, digest: str) -> float | None:
        """Seconds since the blob was written or refreshed; None when it does not exist."""
        try:
            return time.time() - _mtime(self.fs.info(self.path(digest)))
        except FileNotFoundError:
            return None

    def delete(self, digest: str) -> None:
        self.fs.rm_file(self.path(digest))

    def _reuse(self, target: str) -> bool:
        """Whether the content is already stored (refreshing an old blob's time if so)."""
        try:
            info = self.fs.info(target)
        except FileNotFoundError:
            return False
        if time.time() - _mtime(info) > REFRESH_AFTER_S:
            try:
                self.fs.touch(target, truncate=False)
            except (NotImplementedError, ValueError, TypeError):
                # object stores cannot touch: writing the same bytes again renews the time
                self.fs.pipe_file(target, self.fs.cat_file(target))
        return True

    def _write(self, target: str, write: Any) -> None:
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        if not self.local:
            write(target)  # an object store's put is atomic: readers see all or nothing
            return
        # on a disk, write beside it and rename: a killed writer never leaves a torn blob
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        write(tmp)
        os.replace(tmp, target)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _mtime(info: dict[str, Any]) -> float:
    value = info.get("mtime") or info.get("LastModified") or info.get("updated") or 0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)
