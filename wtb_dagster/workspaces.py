"""Thread workspaces: a private folder per thread run for the files its nodes write,
snapshotted at every checkpoint and rebuilt exactly when a thread starts from one.

LangGraph checkpoints the state, not the files nodes write. A workflow that declares
`workspace: true` (or a node that does, in `wtb.yaml`) gives each thread run a folder of its
own, handed to the nodes in their config (`workspace_dir`); threads that run at once in one
process never share a folder, and nothing changes the process's working directory.

- **Snapshot.** Each time LangGraph saves a checkpoint of a thread with a workspace (after
  every super-step, before the next one starts: durability "sync"), the saver asks
  `on_put` for a snapshot: changed files go to the blob store (`blobs`, SHA-256, stored once
  whatever thread wrote them) and the manifest (path → digest, size, mode) is stored as a
  blob too; the checkpoint's own metadata carries the manifest's digest under `wtb_files`.
  The link is written with the checkpoint in one statement, so the two cannot disagree, and
  every copy of a chain (forks, shared prefixes) carries it along.
- **Restore.** A thread run that starts from a checkpoint (resume, retry, rollback, fork,
  shared prefix) rebuilds its folder from that checkpoint's manifest before any node runs. A
  checkpoint written outside a run (a fork's `update_state`) has no manifest of its own: its
  files are its parent's.

Only regular files are tracked (not symlinks or empty folders), as in Git.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from wtb_dagster.blobs import BlobStore, file_digest
from wtb_dagster.errors import ConfigError, WTBError

# The node config key of the folder; LangGraph never copies `__…` keys into checkpoint metadata.
WORKSPACE_KEY = "__wtb_workspace__"
METADATA_KEY = "wtb_files"  # checkpoint metadata: {"manifest": digest, "files": n, "bytes": n}
# A file whose stat is unchanged is trusted to be unchanged only if it was last modified this
# long before it was hashed: a rewrite within one tick of the file system's clock keeps its
# modification time (Git's "racily clean" rule).
_RACY_S = 2.0


@dataclass(frozen=True)
class FileEntry:
    digest: str
    size: int
    mode: int


Manifest = dict[str, FileEntry]  # path relative to the workspace, with "/" → its entry


@dataclass(frozen=True)
class WorkspaceSetup:
    """What a thread run needs to set up its workspace; built once by the driver (`prepare`)."""

    blob_url: str
    template: str | None = None  # manifest digest of the template folder, stored as blobs


@overload
def workspace_dir(config: Any = None, missing_ok: Literal[False] = False) -> Path: ...


@overload
def workspace_dir(config: Any = None, missing_ok: bool = ...) -> Path | None: ...


def workspace_dir(config: Any = None, missing_ok: bool = False) -> Path | None:
    """The workspace folder of the thread running this node.

    >>> def write_report(state, config):
    ...     (workspace_dir(config) / "report.md").write_text(state["answer"])
    ...     return {}

    Without `config`, LangGraph's `get_config()` of the running node is used. A node run
    without a workspace raises, or with `missing_ok` gets None (a node that writes only
    when it can).
    """
    if config is None:
        from langgraph.config import get_config

        config = get_config()
    folder = (config.get("configurable") or {}).get(WORKSPACE_KEY)
    if not folder:
        if missing_ok:
            return None
        raise WTBError(
            "this node runs without a workspace: declare `workspace: true` for its workflow "
            "(or `nodes: {<node>: {workspace: true}}`) in wtb.yaml, or Workflow(workspace=True)"
        )
    return Path(folder)


def manifest_bytes(manifest: Manifest) -> bytes:
    body = {path: [e.digest, e.size, e.mode] for path, e in sorted(manifest.items())}
    return json.dumps({"files": body}, separators=(",", ":")).encode()


def load_manifest(blobs: BlobStore, digest: str) -> Manifest:
    body = json.loads(blobs.read_bytes(digest))["files"]
    return {path: FileEntry(d, int(size), int(mode)) for path, (d, size, mode) in body.items()}


def write_files(blobs: BlobStore, manifest: Manifest, folder: Path) -> int:
    """Write a manifest's files (bytes and modes) under `folder`; returns their bytes."""
    for path, entry in sorted(manifest.items()):
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        blobs.get_file(entry.digest, target)
        os.chmod(target, entry.mode)
    return sum(entry.size for entry in manifest.values())


def tree_digest(folder: Path) -> str:
    """A digest of a folder's files (paths, bytes, modes): a template's code version."""
    return hashlib.sha256(manifest_bytes(_scan(folder, {}, time.time()))).hexdigest()[:12]


def prepare(blob_url: str, template: Path | None) -> WorkspaceSetup:
    """Check the blob store is writable and store the template: run before any thread runs."""
    blobs = BlobStore(blob_url)
    blobs.check_writable()
    if template is None:
        return WorkspaceSetup(blob_url)
    manifest = _scan(template, {}, time.time())
    for path, entry in manifest.items():
        blobs.put_file(template / path, entry.digest)
    return WorkspaceSetup(blob_url, blobs.put_bytes(manifest_bytes(manifest))[0])


@dataclass
class Workspace:
    """The folder of one thread run, and what it has stored so far."""

    blobs: BlobStore
    path: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wtb-ws-")))
    manifest: Manifest = field(default_factory=dict)
    reference: dict[str, Any] | None = None  # the metadata value of `manifest`
    files_written: int = 0  # file versions stored by this run (new or changed files)
    bytes_written: int = 0  # their sizes
    bytes_stored: int = 0  # of which new to the blob store (the rest was deduplicated)
    _known: dict[str, tuple[tuple[int, int, int], float, FileEntry]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def restore(self, digest: str) -> None:
        """Make the folder exactly the manifest `digest` (the folder is new and empty)."""
        manifest = load_manifest(self.blobs, digest)
        write_files(self.blobs, manifest, self.path)
        self.manifest = manifest
        self.reference = _reference(digest, manifest)

    def snapshot(self) -> dict[str, Any]:
        """Store what changed since the last snapshot; the metadata value for the checkpoint."""
        with self._lock:
            current = _scan(self.path, self._known, time.time())
            for path, entry in current.items():
                if self.manifest.get(path) == entry:
                    continue
                _, new = self.blobs.put_file(self.path / path, entry.digest)
                self.files_written += 1
                self.bytes_written += entry.size
                self.bytes_stored += entry.size if new else 0
            if current != self.manifest or self.reference is None:
                digest, _ = self.blobs.put_bytes(manifest_bytes(current))
                self.manifest, self.reference = current, _reference(digest, current)
            return dict(self.reference)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _reference(digest: str, manifest: Manifest) -> dict[str, Any]:
    return {
        "manifest": digest,
        "files": len(manifest),
        "bytes": sum(e.size for e in manifest.values()),
    }


def _scan(
    folder: Path, known: dict[str, tuple[tuple[int, int, int], float, FileEntry]], now: float
) -> Manifest:
    """The folder's regular files; a file whose stat is as `known` saw it is not read again."""
    found: Manifest = {}
    seen: set[str] = set()
    for root, _dirs, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            info = os.lstat(full)
            if not stat.S_ISREG(info.st_mode):
                continue
            rel = Path(full).relative_to(folder).as_posix()
            key = (info.st_mtime_ns, info.st_size, info.st_ino)
            mode = stat.S_IMODE(info.st_mode)
            cached = known.get(rel)
            if cached and cached[0] == key and cached[1] - info.st_mtime > _RACY_S:
                entry = FileEntry(cached[2].digest, info.st_size, mode)
                taken = cached[1]
            else:
                entry, taken = FileEntry(file_digest(Path(full)), info.st_size, mode), now
            known[rel] = (key, taken, entry)
            found[rel] = entry
            seen.add(rel)
    for gone in set(known) - seen:
        del known[gone]
    return found


# -- the link between a running thread and the saver's puts --------------------------------------
# Savers are shared by the threads of a process (one per connection lane), so the workspace
# of a put is found by its thread id; a thread id runs in one place at a time (leases).

_ACTIVE: dict[str, Workspace] = {}
_ACTIVE_LOCK = threading.Lock()


@contextmanager
def _active(thread_id: str, workspace: Workspace) -> Iterator[None]:
    with _ACTIVE_LOCK:
        _ACTIVE[thread_id] = workspace
    try:
        yield
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.pop(thread_id, None)


def on_put(config: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint metadata to store: with the thread's workspace snapshot, if it has one.

    Called by the savers `checkpoints.open_checkpointer` returns, before they write."""
    if not _ACTIVE:
        return metadata
    configurable = config.get("configurable") or {}
    workspace = _ACTIVE.get(configurable.get("thread_id", ""))
    if workspace is None or configurable.get("checkpoint_ns"):
        return metadata  # no workspace, or a subgraph's checkpoint: the root's put snapshots
    return {**metadata, METADATA_KEY: workspace.snapshot()}


def reference_at(saver: Any, thread_id: str, checkpoint_id: str | None = None) -> dict | None:
    """The `wtb_files` metadata of a checkpoint (the newest when no id), or of the nearest
    ancestor that has one; None when the thread has none (no checkpoint, or no workspace)."""
    configurable = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    config: Any = {"configurable": configurable}
    while config:
        found = saver.get_tuple(config)
        if found is None:
            return None
        reference = (found.metadata or {}).get(METADATA_KEY)
        if reference:
            return reference
        config = found.parent_config
    return None


@contextmanager
def thread_workspace(
    setup: WorkspaceSetup,
    saver: Any,
    thread_id: str,
    start_checkpoint_id: str | None,
    fresh: bool,
) -> Iterator[Workspace]:
    """The workspace of one thread run, set up before its first node and removed after it.

    A fresh thread starts from the template (if any); one that starts from a checkpoint
    (`start_checkpoint_id`, or its newest) starts from that checkpoint's files."""
    workspace = Workspace(BlobStore(setup.blob_url))
    try:
        reference = None if fresh else reference_at(saver, thread_id, start_checkpoint_id)
        if reference is not None:
            workspace.restore(reference["manifest"])
        elif setup.template is not None:
            workspace.restore(setup.template)
        with _active(thread_id, workspace):
            yield workspace
    finally:
        workspace.close()


def check_template(path: Path, where: str) -> Path:
    if not path.is_dir():
        raise ConfigError(f"{where}: workspace template {str(path)!r} is not a folder")
    return path
