"""A retried finalize after its publish committed publishes nothing again: with a space switch, the
previous space (the rollback target) survives, and the run is recorded once as succeeded."""

from __future__ import annotations

import pytest
from knowledge_fixtures import assert_consistent, corpus, expected_hashes, index_state, kn  # noqa: F401

from tandem import db, faults
from tandem.knowledge import batch, lock, plan, publish, reindex, releases, search, store
from tandem.knowledge.status import index_status


class _Died(BaseException):
    """Stands for the worker dying right after the commit (BaseException: nothing in the task catches it)."""


def _die_at(point: str):
    def hook(name, **_context):
        if name == point:
            raise _Died(name)
    return hook


def _tasks_until_finalize(settings):
    """The DAG's plan and batch tasks, in this process; returns what finalize gets."""
    run_id = reindex.new_run_id("retry")
    owner = lock.new_owner("retry")
    lease = reindex.acquire_lease(settings, owner, keep_connection=True)
    the_plan = plan.make(settings, run_id=run_id, owner=owner, progress=False)
    stats = [batch.process(settings, the_plan, b, owner=owner) for b in the_plan.batches]
    return the_plan, stats, owner, lease


def _release_rows(settings):
    with db.connection(settings.db_url) as conn:
        return {r["index_version"]: r["status"] for r in releases.listing(conn, store.names(settings.index_name))}


@pytest.mark.parametrize("switch", [False, True], ids=["same-space", "space-switch"])
def test_a_finalize_retried_after_publish_publishes_once(kn, corpus, monkeypatch, switch):
    first = reindex.run(kn, progress=False)
    assert first["index_version"] == 1
    before = index_state(kn)
    if switch:
        settings = kn.replace(chunk_size=64)  # a new embedding space: the publish switches it in
    else:
        settings = kn
        (corpus / "pricing/plans.md").write_text((corpus / "pricing/plans.md").read_text() + "\nRetry paragraph.\n")

    the_plan, stats, owner, lease = _tasks_until_finalize(settings)
    try:
        monkeypatch.setattr(faults, "hook", _die_at("after_publish"))
        with pytest.raises(_Died):
            publish.finalize(settings, the_plan, stats, owner=owner, log_mlflow=False)
        assert search.live_index_version(kn) == 2  # the publish committed before the worker died
        monkeypatch.setattr(faults, "hook", faults._no_fault)
        retried = publish.finalize(settings, the_plan, stats, owner=owner, log_mlflow=False)  # Airflow's retry
    finally:
        lease.release()

    assert retried["status"] == "succeeded" and retried["index_version"] == 2
    assert retried["release"]["published"] and retried["space"]["switched"] is switch
    assert _release_rows(kn) == {1: "published", 2: "published"}
    assert_consistent(index_state(settings))
    assert {d: r["hash"] for d, r in index_state(settings)["manifest"].items()} == expected_hashes(corpus)
    # a third try (the retry's report was lost too) returns the recorded summary, still one publish
    again = publish.finalize(settings, the_plan, stats, owner=owner, log_mlflow=False)
    assert again["run_id"] == retried["run_id"] and again["index_version"] == 2
    assert _release_rows(kn) == {1: "published", 2: "published"}
    if switch:
        st = index_status(kn)
        assert st["previous"]["no"] == 1 and st["live"]["no"] == 2  # the rollback target survived the retry
        reindex.rollback(kn)
        assert search.live_index_version(kn) == 1 and index_state(kn)["table"] == before["table"]
