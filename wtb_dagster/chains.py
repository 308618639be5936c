"""Copying one branch of a thread's checkpoints into another thread (forks, shared prefixes).

LangGraph's savers do not copy a branch, and doing it through their `put` / `put_writes` costs
a round trip per checkpoint and per task. For the two savers the bench opens, the copy is a
few `INSERT … SELECT` statements in one transaction (the rows are copied as stored, so the
checkpoint ids, blobs and writes are the parent's exactly); any other saver gets the copy
through its public methods.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from wtb_dagster.checkpoints import saver_backend, thread_config
from wtb_dagster.errors import ThreadNotFoundError

# The branch ending at a checkpoint: the checkpoint and its ancestors, by parent link. Put
# after `INSERT INTO …`, not before it: Python's sqlite3 counts the rows of a statement only
# when it starts with INSERT.
_SQLITE_CHAIN = """
WITH RECURSIVE chain(id) AS (
    SELECT checkpoint_id FROM checkpoints
    WHERE thread_id = :source AND checkpoint_ns = '' AND checkpoint_id = :head
    UNION
    SELECT c.parent_checkpoint_id FROM checkpoints c JOIN chain ON c.checkpoint_id = chain.id
    WHERE c.thread_id = :source AND c.checkpoint_ns = '' AND c.parent_checkpoint_id IS NOT NULL
)
"""


def copy_chain(
    saver: Any,
    source_thread: str,
    checkpoint_id: str,
    target_thread: str,
    head_writes: bool = True,
    replace: bool = False,
) -> int:
    """Copy checkpoint `checkpoint_id` of `source_thread` and its ancestors into
    `target_thread` (same ids, metadata and pending writes); returns how many were copied.

    `head_writes=False` leaves out the pending writes of `checkpoint_id` itself: the target
    then resumes from it by running its next tasks anew, as a thread that stopped there would.
    `replace=True` deletes what the target held first, in the same transaction; otherwise the
    target is expected empty. Raises `ThreadNotFoundError` when the source has no such
    checkpoint (say, it was run again from scratch since); the target is then left as it was.
    """
    if source_thread == target_thread:
        raise ValueError("copy_chain copies between two threads")
    copy = {"sqlite": _copy_sqlite, "postgres": _copy_postgres}.get(
        saver_backend(saver), _copy_generic
    )
    return copy(saver, source_thread, checkpoint_id, target_thread, head_writes, replace)


def _not_found(source: str, head: str) -> ThreadNotFoundError:
    return ThreadNotFoundError(f"thread {source!r} has no checkpoint {head!r}")


def _copy_sqlite(
    saver: Any, source: str, head: str, target: str, head_writes: bool, replace: bool
) -> int:
    params = {"source": source, "head": head, "target": target}
    skip_head = "" if head_writes else " AND checkpoint_id != :head"
    with saver.lock:
        conn = saver.conn
        # one transaction: the copy is whole or absent, whoever reads the target meanwhile
        conn.execute("BEGIN IMMEDIATE")
        try:
            if replace:
                conn.execute("DELETE FROM checkpoints WHERE thread_id = ?", (target,))
                conn.execute("DELETE FROM writes WHERE thread_id = ?", (target,))
            copied = conn.execute(
                "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, "
                "parent_checkpoint_id, type, checkpoint, metadata) "
                + _SQLITE_CHAIN
                + "SELECT :target, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, "
                "checkpoint, metadata FROM checkpoints WHERE thread_id = :source "
                "AND checkpoint_ns = '' AND checkpoint_id IN (SELECT id FROM chain)",
                params,
            ).rowcount
            conn.execute(
                "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, "
                "task_path, idx, channel, type, value) "
                + _SQLITE_CHAIN
                + "SELECT :target, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, "
                "type, value FROM writes WHERE thread_id = :source AND checkpoint_ns = '' "
                f"AND checkpoint_id IN (SELECT id FROM chain){skip_head}",
                params,
            )
            if not copied:  # rolls the deletes back: the target stays as it was
                raise _not_found(source, head)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return copied


# One statement copies the three tables (a single round trip; data-modifying CTEs all read
# the same snapshot, so the blobs are chosen from the source's chain, not the new rows).
_POSTGRES_COPY = """
WITH RECURSIVE chain(id) AS (
    SELECT checkpoint_id FROM checkpoints
    WHERE thread_id = %(source)s AND checkpoint_ns = '' AND checkpoint_id = %(head)s
    UNION
    SELECT c.parent_checkpoint_id FROM checkpoints c JOIN chain ON c.checkpoint_id = chain.id
    WHERE c.thread_id = %(source)s AND c.checkpoint_ns = '' AND c.parent_checkpoint_id IS NOT NULL
),
copied AS (
    INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type,
                             checkpoint, metadata)
    SELECT %(target)s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint,
           metadata
    FROM checkpoints
    WHERE thread_id = %(source)s AND checkpoint_ns = '' AND checkpoint_id IN (SELECT id FROM chain)
    RETURNING 1
),
blobs AS (  -- every channel version a copied checkpoint refers to
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT %(target)s, b.checkpoint_ns, b.channel, b.version, b.type, b.blob
    FROM checkpoint_blobs b
    WHERE b.thread_id = %(source)s AND b.checkpoint_ns = '' AND (b.channel, b.version) IN (
        SELECT DISTINCT v.key, v.value
        FROM checkpoints c, jsonb_each_text(c.checkpoint -> 'channel_versions') v
        WHERE c.thread_id = %(source)s AND c.checkpoint_ns = ''
          AND c.checkpoint_id IN (SELECT id FROM chain))
    ON CONFLICT DO NOTHING
    RETURNING 1
),
writes AS (
    INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path,
                                   idx, channel, type, blob)
    SELECT %(target)s, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
    FROM checkpoint_writes
    WHERE thread_id = %(source)s AND checkpoint_ns = '' AND checkpoint_id IN (SELECT id FROM chain)
      AND (%(head_writes)s OR checkpoint_id != %(head)s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM copied), (SELECT count(*) FROM blobs), (SELECT count(*) FROM writes)
"""

_POSTGRES_DELETE = """
WITH c AS (DELETE FROM checkpoints WHERE thread_id = %(target)s),
     b AS (DELETE FROM checkpoint_blobs WHERE thread_id = %(target)s)
DELETE FROM checkpoint_writes WHERE thread_id = %(target)s
"""


def _copy_postgres(
    saver: Any, source: str, head: str, target: str, head_writes: bool, replace: bool
) -> int:
    params = {"source": source, "head": head, "target": target, "head_writes": head_writes}
    with saver.conn.connection() as conn, conn.transaction():
        if replace:
            conn.execute(_POSTGRES_DELETE, params)
        row = conn.execute(_POSTGRES_COPY, params).fetchone()
        copied = int(row[0] if isinstance(row, tuple) else next(iter(row.values())))
        if not copied:  # rolls the deletes back: the target stays as it was
            raise _not_found(source, head)
    return copied


def _copy_generic(
    saver: Any, source: str, head: str, target: str, head_writes: bool, replace: bool
) -> int:
    # One `list` reads the thread in a query or two; walking `get_tuple` would be one per step.
    by_id = {t.checkpoint["id"]: t for t in saver.list(thread_config(source))}
    chain = []
    node = by_id.get(head)
    while node is not None:
        chain.append(node)
        parent = (node.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        node = by_id.get(parent) if parent else None
    if not chain:
        raise _not_found(source, head)
    if replace:
        saver.delete_thread(target)
    parent_id: str | None = None
    for node in reversed(chain):
        checkpoint_id = node.checkpoint["id"]
        writes: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        if head_writes or checkpoint_id != head:
            for task_id, channel, value in node.pending_writes or ():
                writes[task_id].append((channel, value))
        # Writes first: once a checkpoint is in the target, it is complete.
        for task_id, task_writes in writes.items():
            saver.put_writes(thread_config(target, checkpoint_id), task_writes, task_id)
        # All channel versions as new: the savers that keep blobs per version store them all.
        saver.put(
            thread_config(target, parent_id),
            node.checkpoint,
            node.metadata,
            dict(node.checkpoint["channel_versions"]),
        )
        parent_id = checkpoint_id
    return len(chain)


def drop_pending_writes(saver: Any, thread_id: str, checkpoint_id: str) -> None:
    """Delete the pending writes of one checkpoint of a thread (root namespace).

    LangGraph resumes a thread from its head by running only the tasks whose writes are not
    saved. A thread with a workspace must run them all again: its folder is rebuilt as of the
    head checkpoint, so the files a finished task of the interrupted step wrote are not there,
    although its state writes are.
    """
    backend = saver_backend(saver)
    params = (thread_id, checkpoint_id)
    if backend == "sqlite":
        with saver.lock:
            saver.conn.execute(
                "DELETE FROM writes WHERE thread_id = ? AND checkpoint_ns = '' AND checkpoint_id = ?",
                params,
            )
            saver.conn.commit()
    elif backend == "postgres":
        with saver.conn.connection() as conn:
            conn.execute(
                "DELETE FROM checkpoint_writes "
                "WHERE thread_id = %s AND checkpoint_ns = '' AND checkpoint_id = %s",
                params,
            )
    else:  # the in-memory saver keeps them by (thread, namespace, checkpoint)
        saver.writes.pop((thread_id, "", checkpoint_id), None)
