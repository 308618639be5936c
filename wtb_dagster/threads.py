"""Thread identity and the record of one executed thread."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from wtb_dagster.errors import ThreadNotFoundError

SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
INTERRUPTED = "interrupted"
STATUSES = (SUCCEEDED, FAILED, TIMED_OUT, INTERRUPTED)
MAIN_LINEAGE = ""


def thread_id_for(
    workflow: str, combo_key: str, case_id: str, lineage: str = MAIN_LINEAGE, trial: int = 0
) -> str:
    """The deterministic LangGraph `thread_id` of (workflow, combo, case, trial, lineage).

    Trial 0 has no suffix, so a workflow run once per case keeps the ids it always had.

    >>> thread_id_for("demo", "retrieve=bm25", "docs-001")
    'demo/retrieve=bm25/docs-001'
    >>> thread_id_for("demo", "baseline", "docs-001", trial=2)
    'demo/baseline/docs-001#t2'
    """
    base = f"{workflow}/{combo_key}/{case_id}"
    if trial:
        base += f"#t{trial}"
    return f"{base}@{lineage}" if lineage else base


_THREAD_RE = re.compile(
    r"^(?P<workflow>[^/]+)/(?P<combo>[^/]+)/(?P<case>[^/@#]+)"
    r"(?:#t(?P<trial>[1-9][0-9]*))?(?:@(?P<lineage>fork-[0-9a-f]+))?$"
)


class ThreadKey(NamedTuple):
    """The parts of a bench thread id."""

    workflow: str
    combo: str
    case_id: str
    lineage: str
    trial: int


def parse_thread_id(thread_id: str) -> ThreadKey:
    """The parts of a bench thread id: the inverse of `thread_id_for`.

    >>> parse_thread_id("demo/retrieve=bm25/docs-001#t1@fork-0123456789")
    ThreadKey(workflow='demo', combo='retrieve=bm25', case_id='docs-001', lineage='fork-0123456789', trial=1)
    """
    match = _THREAD_RE.match(thread_id)
    if not match:
        raise ThreadNotFoundError(
            f"{thread_id!r} is not a bench thread id (workflow/combo/case[#tN][@fork-…]); "
            "list threads with `wtb threads <workflow>`"
        )
    return ThreadKey(
        match["workflow"],
        match["combo"],
        match["case"],
        match["lineage"] or MAIN_LINEAGE,
        int(match["trial"] or 0),
    )


def fork_lineage(parent_thread_id: str, checkpoint_id: str, change: str) -> str:
    """A stable lineage name for a fork: the same request twice finds the same fork thread."""
    digest = hashlib.sha256(f"{parent_thread_id}|{checkpoint_id}|{change}".encode()).hexdigest()
    return f"fork-{digest[:10]}"


@dataclass
class ThreadResult:
    """What the bench records about one thread; crosses process boundaries (Ray) as a dict."""

    workflow: str
    combo: str
    case_id: str
    thread_id: str
    status: str
    lineage: str = MAIN_LINEAGE
    parent_thread_id: str | None = None
    parent_checkpoint_id: str | None = None
    input: dict[str, Any] = field(default_factory=dict)
    expected: Any = None
    final_values: dict[str, Any] | None = None
    scores: dict[str, float] = field(default_factory=dict)
    score_errors: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    node_timings: dict[str, list[float]] = field(default_factory=dict)
    nodes_executed: int = 0
    checkpoints: int = 0
    first_checkpoint_id: str | None = None
    last_checkpoint_id: str | None = None
    latency_s: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    attempts: int = 1
    executor: str = "local"
    run_id: str | None = None
    change: dict[str, Any] | None = None
    code_version: str | None = None
    trial: int = 0
    shared_from: str | None = None
    shared_checkpoint_id: str | None = None
    path: list[list[Any]] | None = None
    node_versions: dict[str, str] | None = None
    node_usage: dict[str, list[dict[str, Any]]] | None = None
    # Telemetry (`telemetry`): the chat-model tokens and USD cost of the nodes this run
    # executed (cost None: a model had no price, or usage was not collected), and one event
    # per node execution, stored in the node-events table with the row.
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    # Workspace files (`workspaces`) this run stored: file versions, their bytes, and the
    # bytes new to the blob store (the rest were deduplicated). Per run, not stored per row.
    files_written: int = 0
    bytes_written: int = 0
    bytes_stored: int = 0
    # Whether this run started the thread from scratch (a forced or stale rerun): its usage
    # replaces the stored row's instead of adding to it.
    restarted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
