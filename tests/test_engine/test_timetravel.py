"""Time travel on real checkpointers: history, forks, rollback, interrupt/resume, clear errors."""

from __future__ import annotations

import pytest

from tests import toy_graphs
from tests.conftest import toy_cases, toy_workflow
from wtb_dagster.api import Bench
from wtb_dagster.checkpoints import open_checkpointer
from wtb_dagster.datasets import TestCase
from wtb_dagster.errors import ThreadNotFoundError, VariantError, WTBError
from wtb_dagster.execution import LocalExecutor, compile_for
from wtb_dagster.history import locate_checkpoint, resolve_checkpoint
from wtb_dagster.workflows import Registry, Workflow

PARENT = "toy/baseline/c0"  # input x=0: a → 1, b → 11, c → 1011


def make_bench(urls: tuple[str, str], *workflows: Workflow) -> Bench:
    checkpoint_url, results_url = urls
    return Bench(
        Registry(workflows or [toy_workflow()]),
        checkpoint_url=checkpoint_url,
        results_url=results_url,
        executor=LocalExecutor(max_concurrency=4),
    )


def ran_baseline(urls: tuple[str, str], *workflows: Workflow) -> Bench:
    bench = make_bench(urls, *workflows)
    bench.run_batch(workflows[0].name if workflows else "toy", combos=["baseline"])
    toy_graphs.CALLS.clear()
    return bench


def review_workflow() -> Workflow:
    return Workflow(name="review", graph=toy_graphs.with_interrupt, dataset=toy_cases(2))


def test_history_has_one_checkpoint_per_super_step_with_its_writer(store_urls):
    bench = ran_baseline(store_urls)
    checkpoints = bench.history(PARENT)
    assert [c.step for c in checkpoints] == [-1, 0, 1, 2, 3]
    assert [c.writer for c in checkpoints] == ["input", "__start__", "a", "b", "c"]
    assert [c.next for c in checkpoints] == [("__start__",), ("a",), ("b",), ("c",), ()]


def test_fork_before_the_last_node_runs_only_that_node_and_leaves_the_parent_as_it_was(
    store_urls,
):
    bench = ran_baseline(store_urls)
    parent_history = [c.checkpoint_id for c in bench.history(PARENT)]
    parent_row = bench.store.get_result(PARENT)

    result = bench.fork(PARENT, before_node="c")

    assert result.status == "succeeded", result.error
    assert dict(toy_graphs.CALLS) == {"c": 1}
    assert result.nodes_executed == 1 and set(result.node_timings) == {"c"}
    assert result.final_values["x"] == 1011
    assert result.thread_id.startswith("toy/baseline/c0@fork-")
    before_c = parent_history[3]
    assert (result.parent_thread_id, result.parent_checkpoint_id) == (PARENT, before_c)
    # the fork holds the parent's chain up to the checkpoint, with the same ids
    assert [c.checkpoint_id for c in bench.history(result.thread_id)][:4] == parent_history[:4]
    # the parent is untouched: same checkpoints, same final values, same row
    assert [c.checkpoint_id for c in bench.history(PARENT)] == parent_history
    assert bench.get_state(PARENT).values["x"] == 1011
    assert bench.store.get_result(PARENT) == parent_row
    row = bench.store.get_result(result.thread_id)
    assert row["lineage"] == result.lineage != ""
    assert row["parent_thread_id"] == PARENT and row["parent_checkpoint_id"] == before_c
    assert row["change"] == {
        "from": "before c", "checkpoint_id": before_c, "variant": None, "state_patch": None,
    }  # fmt: skip


def test_fork_with_a_state_patch_changes_the_result(store_urls):
    bench = ran_baseline(store_urls)
    result = bench.fork(PARENT, before_node="c", state_patch={"x": 5})
    assert result.status == "succeeded", result.error
    assert result.final_values["x"] == 1005 and result.final_values["answer"] == "1005"
    assert dict(toy_graphs.CALLS) == {"c": 1}
    assert result.scores["exact_match"] == 0.0  # the case expects 1011
    assert bench.store.get_result(result.thread_id)["change"]["state_patch"] == {"x": 5}
    # a patch makes another fork than no patch from the same checkpoint
    assert bench.fork(PARENT, before_node="c").thread_id != result.thread_id


def test_fork_with_a_patch_recovers_a_failed_thread(store_urls):
    cases = [TestCase(id="boom", input={"x": 1, "fail_at": "b"}, expected={"answer": "1012"})]
    bench = ran_baseline(store_urls, toy_workflow(cases=cases))
    assert bench.store.get_result("toy/baseline/boom")["status"] == "failed"
    result = bench.fork("toy/baseline/boom", before_node="b", state_patch={"fail_at": ""})
    assert result.status == "succeeded", result.error
    assert result.scores["exact_match"] == 1.0
    assert toy_graphs.CALLS["a"] == 0


def test_fork_with_a_variant_runs_the_variant_node(store_urls):
    bench = ran_baseline(store_urls)
    result = bench.fork(PARENT, before_node="b", variant="b=double")
    assert result.status == "succeeded", result.error
    assert dict(toy_graphs.CALLS) == {"b_double": 1, "c": 1}
    assert result.combo == "b=double" and result.thread_id.startswith("toy/b=double/c0@fork-")
    assert result.final_values["trail"] == ["a", "b_double", "c"]  # a's output reused
    assert result.final_values["x"] == 1002
    frame = bench.threads("toy", combo="b=double")
    assert list(frame.thread_id) == [result.thread_id]


def test_the_same_fork_asked_twice_runs_once_and_keeps_one_row(store_urls):
    bench = ran_baseline(store_urls)
    first = bench.fork(PARENT, before_node="c", state_patch={"x": 5})
    rows = bench.store.count("toy")
    # "after b" names the same checkpoint as "before c": the same fork
    again = bench.fork(PARENT, after_node="b", state_patch={"x": 5})
    assert again.thread_id == first.thread_id
    assert again.final_values == first.final_values
    assert toy_graphs.CALLS["c"] == 1
    assert bench.store.count("toy") == rows
    forced = bench.fork(PARENT, before_node="c", state_patch={"x": 5}, force=True)
    assert forced.thread_id == first.thread_id and toy_graphs.CALLS["c"] == 2
    assert bench.store.count("toy") == rows
    # forced means set up afresh: one copy of the chain, not two runs appended
    assert len(bench.history(first.thread_id)) == len(bench.history(PARENT)) + 1


def test_threads_lists_forks_with_their_parent(sqlite_urls):
    bench = ran_baseline(sqlite_urls)
    fork = bench.fork(PARENT, before_node="c")
    frame = bench.threads("toy")
    assert len(frame) == 5
    row = frame.set_index("thread_id").loc[fork.thread_id]
    assert row.parent_thread_id == PARENT and row.nodes_executed == 1
    assert len(bench.threads("toy", include_forks=False)) == 4
    assert len(bench.threads("toy", status="failed")) == 0
    with pytest.raises(WTBError, match="unknown thread status 'broken'"):
        bench.threads("toy", status="broken")


def test_rollback_reproduces_the_final_state_and_keeps_the_history(store_urls):
    bench = ran_baseline(store_urls)
    before = bench.history(PARENT)
    final = bench.get_state(PARENT).values

    result = bench.rollback(PARENT, to_node="b")

    assert result.status == "succeeded", result.error
    assert result.thread_id == PARENT
    assert dict(toy_graphs.CALLS) == {"b": 1, "c": 1}
    assert result.final_values == final
    after = bench.history(PARENT)
    # nothing lost: every old checkpoint is still there, the new branch hangs off "before b"
    assert {c.checkpoint_id for c in before} < {c.checkpoint_id for c in after}
    assert len(after) > len(before)
    assert after[-1].writer == "c"
    assert bench.get_state(PARENT).values == final
    assert bench.store.get_result(PARENT)["nodes_executed"] == 2
    assert bench.store.count("toy") == 4
    # and back to a checkpoint by id: the thread's current state follows
    bench.rollback(PARENT, checkpoint_id=before[3].checkpoint_id)
    assert toy_graphs.CALLS["c"] == 2


def test_interrupt_then_resume_with_a_value(store_urls):
    bench = make_bench(store_urls, review_workflow())
    summary = bench.run_batch("review")
    assert summary.statuses == {"interrupted": 2}
    thread_id = "review/baseline/c1"
    row = bench.store.get_result(thread_id)
    assert row["status"] == "interrupted" and "approve" in row["error"]

    result = bench.resume(thread_id, "approved")

    assert result.status == "succeeded", result.error
    assert result.final_values["approved"] == "approved"
    assert result.final_values["x"] == 1002
    assert toy_graphs.CALLS["c"] == 1
    assert bench.store.get_result(thread_id)["status"] == "succeeded"
    with pytest.raises(WTBError, match=r"is not interrupted \(status succeeded; it has ended\)"):
        bench.resume(thread_id, "again")


def test_fork_of_an_interrupted_thread_asks_again_and_resumes(sqlite_urls):
    bench = make_bench(sqlite_urls, review_workflow())
    bench.run_batch("review")
    fork = bench.fork("review/baseline/c0", before_node="approve", state_patch={"x": 41})
    assert fork.status == "interrupted"
    done = bench.resume(fork.thread_id, "yes")
    assert done.status == "succeeded" and done.final_values["x"] == 1041
    assert bench.store.get_result(fork.thread_id)["parent_thread_id"] == "review/baseline/c0"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"thread_id": "toy/baseline/nope", "before_node": "c"}, ThreadNotFoundError,
         "thread 'toy/baseline/nope' has no checkpoints.*`wtb threads toy`"),
        ({"thread_id": "not-a-thread", "before_node": "c"}, ThreadNotFoundError,
         "is not a bench thread id"),
        ({"thread_id": PARENT, "checkpoint_id": "1f0-nope"}, ThreadNotFoundError,
         "has no checkpoint '1f0-nope'.*`wtb history toy/baseline/c0`"),
        ({"thread_id": PARENT, "before_node": "zz"}, WTBError,
         "workflow 'toy' has no node 'zz'; its nodes: a, b, c"),
        ({"thread_id": PARENT}, WTBError, "exactly one of checkpoint_id, before_node"),
        ({"thread_id": PARENT, "before_node": "b", "after_node": "a"}, WTBError,
         r"got before_node, after_node"),
        ({"thread_id": PARENT, "before_node": "b", "variant": "b=nope"}, VariantError,
         "node 'b' has no variant 'nope'"),
        ({"thread_id": PARENT, "before_node": "b", "state_patch": {"y": 1}}, WTBError,
         "no state key.* y; its state keys: x, trail"),
        ({"thread_id": PARENT, "checkpoint_id": "FIRST", "state_patch": {"x": 1}}, WTBError,
         "is the input checkpoint"),
    ],
)  # fmt: skip
def test_bad_fork_requests_are_clear_errors_and_write_nothing(sqlite_urls, kwargs, error, message):
    bench = ran_baseline(sqlite_urls)
    if kwargs.get("checkpoint_id") == "FIRST":
        kwargs["checkpoint_id"] = bench.history(PARENT)[0].checkpoint_id
    with pytest.raises(error, match=message):
        bench.fork(**kwargs)
    assert bench.store.count("toy") == 4
    assert toy_graphs.CALLS == {}


def test_a_node_the_thread_never_reached_names_the_nodes_it_ran(sqlite_urls):
    cases = [TestCase(id="boom", input={"x": 1, "fail_at": "b"})]
    bench = ran_baseline(sqlite_urls, toy_workflow(cases=cases))
    with pytest.raises(WTBError, match=r"no checkpoint before node 'c'.*nodes it ran: a\)"):
        bench.fork("toy/baseline/boom", before_node="c")
    with pytest.raises(WTBError, match="no checkpoint after node 'b'"):
        bench.fork("toy/baseline/boom", after_node="b")
    with pytest.raises(WTBError, match="no checkpoint before node 'c'"):
        bench.rollback("toy/baseline/boom", to_node="c")
    with pytest.raises(ThreadNotFoundError, match="wtb history"):
        bench.rollback("toy/baseline/boom", checkpoint_id="nope")


def test_reading_back_from_the_head_finds_what_the_full_history_finds(sqlite_urls):
    bench = ran_baseline(sqlite_urls)
    bench.rollback(PARENT, to_node="b")  # two branches in one thread
    checkpoints = bench.history(PARENT)
    with open_checkpointer(bench.checkpoint_url) as saver:
        graph = compile_for(bench.workflow("toy"), "baseline", saver)
        for node in ("a", "b", "c"):
            for point in ({"before_node": node}, {"after_node": node}):
                full = resolve_checkpoint(checkpoints, PARENT, **point)
                fast = locate_checkpoint(graph, PARENT, **point)
                assert (fast.checkpoint_id, fast.writer, fast.next) == (
                    full.checkpoint_id, full.writer, full.next,
                ), point  # fmt: skip
        # the new branch is the current one: "before b" is the fork checkpoint of the rollback
        assert locate_checkpoint(graph, PARENT, before_node="b").source == "fork"
        with pytest.raises(ThreadNotFoundError, match="has no checkpoint 'nope'"):
            locate_checkpoint(graph, PARENT, checkpoint_id="nope")


def test_a_fork_of_a_fork_starts_from_the_patched_state(store_urls):
    bench = ran_baseline(store_urls)
    first = bench.fork(PARENT, before_node="c", state_patch={"x": 5})
    second = bench.fork(first.thread_id, before_node="c", state_patch={"x": 7})
    assert second.status == "succeeded", second.error
    assert second.final_values["x"] == 1007 and second.parent_thread_id == first.thread_id
    assert second.lineage != first.lineage
    assert dict(toy_graphs.CALLS) == {"c": 2}
    # "before c" in the first fork is its patched checkpoint: the chain holds both histories
    writers = [c.writer for c in bench.history(second.thread_id)]
    assert writers[:5] == ["input", "__start__", "a", "b", "update_state"]


def test_a_failed_fork_asked_again_continues_from_its_newest_checkpoint(store_urls):
    bench = ran_baseline(store_urls)
    first = bench.fork(PARENT, before_node="b", state_patch={"fail_at": "c"})
    assert first.status == "failed" and toy_graphs.CALLS == {"b": 1, "c": 1}
    toy_graphs.CALLS.clear()
    again = bench.fork(PARENT, before_node="b", state_patch={"fail_at": "c"})
    assert again.thread_id == first.thread_id and again.status == "failed"
    # b's checkpoint is kept: only c runs again, not everything after the fork point
    assert toy_graphs.CALLS == {"c": 1}
