"""The reindex against the real embedded Postgres + pgvector, the real embedding model and the real MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from knowledge_fixtures import (fault_env, CORPUS, assert_consistent, cli_env, corpus, expected_hashes,  # noqa: F401
                                index_state, kn, write_corpus)
from psycopg import sql

from tandem import db, faults
from tandem.errors import JobFailed, UserError
from tandem.knowledge import batch, lock, plan, publish, reindex, search, store

TANDEM = str(Path(sys.executable).parent / "tandem")


def test_add_change_delete_unchanged_exact_rows(kn, corpus):
    first = reindex.run(kn, progress=False)
    assert (first["new"], first["changed"], first["unchanged"], first["deleted"], first["failed"]) == (5, 0, 0, 0, 0)
    assert first["status"] == "succeeded" and first["index_version"] == 1 and first["space"]["switched"]
    state = index_state(kn)
    assert_consistent(state)
    assert {d: r["hash"] for d, r in state["manifest"].items()} == expected_hashes(corpus)
    assert first["chunks_embedded"] == sum(len(v) for v in state["chunks"].values())
    before = state

    # change one, add one, delete one, leave two unchanged
    (corpus / "pricing/plans.md").write_text(CORPUS["pricing/plans.md"].replace("29 dollars", "35 dollars"))
    write_corpus(corpus, {"billing/invoices.md": "# Invoices\n\nInvoices are emailed on the first day of the month.\n"})
    (corpus / "security/sso.md").unlink()
    second = reindex.run(kn, progress=False)
    assert (second["new"], second["changed"], second["unchanged"], second["deleted"]) == (1, 1, 3, 1)
    assert second["index_version"] == 2
    state = index_state(kn)
    assert_consistent(state)
    assert {d: r["hash"] for d, r in state["manifest"].items()} == expected_hashes(corpus)
    assert "acme/security/sso.md" not in state["chunks"]
    # unchanged documents kept their exact rows; the changed one has only new-version chunks
    for doc in ("acme/policies/refunds.txt", "acme/guides/install.rst", "acme/support/hours.html"):
        assert state["chunks"][doc] == before["chunks"][doc]
    assert state["chunks"]["acme/pricing/plans.md"] != before["chunks"]["acme/pricing/plans.md"]
    assert second["chunks_embedded"] == len(state["chunks"]["acme/pricing/plans.md"]) + \
        len(state["chunks"]["acme/billing/invoices.md"])

    # a rerun embeds nothing and keeps the version
    third = reindex.run(kn, progress=False)
    assert third["chunks_embedded"] == 0 and third["unchanged"] == 5 and third["index_version"] == 2
    assert (third["new"], third["changed"], third["deleted"]) == (0, 0, 0)
    assert index_state(kn)["chunks"] == state["chunks"]


def test_summary_is_logged_to_mlflow(kn):
    import mlflow

    summary = reindex.run(kn, progress=False)
    assert summary["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri=kn.mlflow_uri)  # the run was logged over REST, not through mlflow
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == f"reindex {summary['run_id']}"
    assert run.data.tags["tandem.index_version"] == str(summary["index_version"])
    assert run.data.tags["tandem.status"] == "succeeded" and run.data.params["embed_backend"] == "onnx"
    assert run.data.metrics["new"] == 5 and run.data.metrics["chunks_embedded"] == summary["chunks_embedded"]
    assert client.get_experiment(run.info.experiment_id).name == "tandem-knowledge"
    (kn.home / "dl").mkdir(exist_ok=True)
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json", str(kn.home / "dl"))).read_text())
    assert logged["run_id"] == summary["run_id"] and logged["index_version"] == summary["index_version"]


def test_dry_run_reports_the_plan_and_writes_nothing(kn, corpus):
    dry = reindex.run(kn, dry_run=True, progress=False)
    assert dry["dry_run"] and dry["new"] == 5 and len(dry["ids"]["new"]) == 5
    n = store.names(kn.index_name)
    with db.connection(kn.db_url) as conn:
        assert not store.exists(conn, n.spaces)  # not even the tables
    reindex.run(kn, progress=False)
    (corpus / "policies/refunds.txt").write_text("Refunds within 60 days.\n")
    (corpus / "guides/install.rst").unlink()
    before = index_state(kn)
    dry = reindex.run(kn, dry_run=True, progress=False)
    assert dry["ids"]["changed"] == ["acme/policies/refunds.txt"]
    assert dry["ids"]["deleted"] == ["acme/guides/install.rst"]
    assert (dry["changed"], dry["deleted"], dry["unchanged"]) == (1, 1, 3)
    assert index_state(kn) == before


def test_bad_inputs_are_per_document_errors_and_lose_nothing(kn, corpus):
    reindex.run(kn, progress=False)
    good = index_state(kn)
    # now every kind of bad file, including a good document turned bad (its previous version must stay)
    (corpus / "policies/refunds.txt").write_bytes(b"Refunds \xff\xfe broken")
    write_corpus(corpus, {"bad/empty.md": "", "bad/blank.txt": "  \n \n", "bad/binary.md": b"\x00\x01\x02PNG",
                          "bad/huge.md": "# Big\n\n" + "word " * 400})
    (corpus / "bad/dangling.md").symlink_to(corpus / "nowhere.md")
    os.mkfifo(corpus / "bad/pipe.md")
    summary = reindex.run(kn.replace(max_file_bytes=1000), progress=False)
    reasons = {e["doc_id"]: e["reason"] for e in summary["errors"]}
    assert summary["failed"] == 7 and summary["status"] == "succeeded"
    assert "not valid UTF-8" in reasons["acme/policies/refunds.txt"]
    assert "empty" in reasons["acme/bad/empty.md"] and "empty" in reasons["acme/bad/blank.txt"]
    assert "binary" in reasons["acme/bad/binary.md"]
    assert "larger than the limit" in reasons["acme/bad/huge.md"]
    assert "broken symlink" in reasons["acme/bad/dangling.md"]
    assert "not a regular file" in reasons["acme/bad/pipe.md"]
    state = index_state(kn)
    assert_consistent(state)
    assert state["chunks"]["acme/policies/refunds.txt"] == good["chunks"]["acme/policies/refunds.txt"]
    assert state["manifest"]["acme/policies/refunds.txt"]["status"] == "failed"
    assert state["chunks"].keys() == good["chunks"].keys()


def test_missing_root_is_a_clear_failure_that_changes_nothing(kn, tmp_path):
    reindex.run(kn, progress=False)
    before = index_state(kn)
    with pytest.raises(UserError, match="does not exist"):
        reindex.run(kn.replace(sources=(f"acme={tmp_path}/unmounted",)), progress=False)
    assert index_state(kn) == before
    proc = subprocess.run([TANDEM, "reindex", "--source", f"acme={tmp_path}/unmounted"], capture_output=True,
                          text=True, env=cli_env(kn), timeout=300)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_mass_delete_brake(kn, corpus):
    reindex.run(kn, progress=False)
    before = index_state(kn)
    for rel in ("pricing/plans.md", "guides/install.rst", "security/sso.md"):
        (corpus / rel).unlink()
    with pytest.raises(JobFailed, match="would delete 3 of 5") as err:
        reindex.run(kn, progress=False)
    assert err.value.summary["delete_brake"]["blocked"] and err.value.summary["deleted"] == 3
    assert index_state(kn) == before  # nothing deleted
    proc = subprocess.run([TANDEM, "reindex", "--json"], capture_output=True, text=True, env=cli_env(kn), timeout=300)
    assert proc.returncode == 1 and "allow-mass-delete" in proc.stderr
    done = reindex.run(kn, allow_mass_delete=True, progress=False)
    assert done["deleted"] == 3 and set(index_state(kn)["manifest"]) == set(expected_hashes(corpus))


def test_failing_document_keeps_its_version_then_is_quarantined(kn, corpus, monkeypatch):
    reindex.run(kn, progress=False)
    before = index_state(kn)
    (corpus / "pricing/plans.md").write_text(CORPUS["pricing/plans.md"] + "\nNew paragraph.\n")
    def fail_plans(name, **context):
        if name == "doc_write" and context["doc_id"] == "acme/pricing/plans.md":
            raise faults.InjectedFault("injected write failure for acme/pricing/plans.md")

    monkeypatch.setattr(faults, "hook", fail_plans)
    for attempt in (1, 2):
        summary = reindex.run(kn, progress=False)
        assert summary["failed"] == 1 and summary["quarantined"] == 0
        state = index_state(kn)
        assert state["chunks"]["acme/pricing/plans.md"] == before["chunks"]["acme/pricing/plans.md"]
        assert state["manifest"]["acme/pricing/plans.md"]["attempts"] == attempt
    summary = reindex.run(kn, progress=False)  # third failure: quarantined, reported, the run still succeeds
    assert summary["status"] == "succeeded" and summary["quarantined"] == 1
    assert summary["quarantined_docs"][0]["doc_id"] == "acme/pricing/plans.md"
    assert "injected write failure" in summary["quarantined_docs"][0]["reason"]
    summary = reindex.run(kn, progress=False)  # skipped while the content is the same
    assert summary["chunks_embedded"] == 0 and summary["quarantined"] == 1
    assert index_state(kn)["chunks"]["acme/pricing/plans.md"] == before["chunks"]["acme/pricing/plans.md"]
    monkeypatch.setattr(faults, "hook", faults._no_fault)
    (corpus / "pricing/plans.md").write_text(CORPUS["pricing/plans.md"] + "\nFixed paragraph.\n")
    summary = reindex.run(kn, progress=False)  # a new version is tried again
    assert summary["changed"] == 1 and summary["quarantined"] == 0
    state = index_state(kn)
    assert_consistent(state)
    assert state["manifest"]["acme/pricing/plans.md"]["status"] == "indexed"
    assert {d: r["hash"] for d, r in state["manifest"].items()} == expected_hashes(corpus)


def test_crash_after_k_documents_then_rerun_converges(kn, corpus):
    reindex.run(kn, progress=False)
    before = index_state(kn)
    for rel in ("pricing/plans.md", "policies/refunds.txt", "security/sso.md"):
        (corpus / rel).write_text((corpus / rel).read_text() + "\nAppended for version two.\n")
    write_corpus(corpus, {f"new/doc{i}.md": f"# Doc {i}\n\nBody of new document {i}.\n" for i in range(3)})
    settings = kn.replace(reindex_batch_docs=100)
    proc = subprocess.run([TANDEM, "reindex"], capture_output=True, text=True, timeout=600,
                          env=fault_env(settings, {"crash_after_docs": 2}))
    assert proc.returncode == 70, proc.stderr[-2000:]
    crashed = index_state(kn)
    assert crashed == before  # two documents were written into the candidate release: none of it is served
    assert search.live_index_version(kn) == 1
    summary = reindex.run(settings, progress=False)  # takes over the dead run's lease at once
    assert summary["changed"] + summary["new"] == 6 and summary["index_version"] == 3  # release 2 failed
    want = expected_hashes(corpus)
    final = index_state(kn)
    assert_consistent(final)
    assert {d: r["hash"] for d, r in final["manifest"].items()} == want


def test_two_concurrent_runs_never_interleave(kn, corpus):
    lease = reindex.acquire_lease(kn, "someone-else", keep_connection=True)  # a live holder (connection open)
    try:
        with pytest.raises(lock.IndexBusy, match="another reindex"):
            reindex.run(kn, progress=False)
        proc = subprocess.run([TANDEM, "reindex"], capture_output=True, text=True, env=cli_env(kn, {
            "TANDEM_LOCK_WAIT_SECONDS": "1"}), timeout=300)
        assert proc.returncode == 1 and "another reindex of index" in proc.stderr and "Traceback" not in proc.stderr
        assert index_state(kn)["space"] is None  # nothing was written
    finally:
        lease.release()
    # two real CLI runs at once: one indexes, the other waits for it and then finds nothing to do
    env = cli_env(kn, {"TANDEM_LOCK_WAIT_SECONDS": "600"})
    procs = [subprocess.Popen([TANDEM, "reindex", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    import json

    results = sorted((json.loads(o[0]) for o in outs), key=lambda s: s["chunks_embedded"])
    assert results[0]["chunks_embedded"] == 0 and results[0]["unchanged"] == 5
    assert results[1]["new"] == 5
    state = index_state(kn)
    assert_consistent(state)
    assert {d: r["hash"] for d, r in state["manifest"].items()} == expected_hashes(corpus)


def test_lease_takeover_and_fencing(kn):
    n = store.names(kn.index_name)
    with db.connection(kn.db_url) as conn:
        store.ensure_schema(conn, n)
    dead = lock.acquire(kn.db_url, n, "cli:dead", keep_connection=True)
    dead._conn.close()  # the holder's process died: its connection is gone
    alive = lock.acquire(kn.db_url, n, "cli:next", keep_connection=True)  # taken over at once
    try:
        with db.connection(kn.db_url) as conn:
            with pytest.raises(lock.LeaseLost):
                with conn.transaction():
                    lock.check(conn, n, "cli:dead")  # the old holder can no longer write
        # an Airflow holder (no connection) is stale only after its heartbeat is old
        alive.release()
        lock.acquire(kn.db_url, n, "airflow:run1", keep_connection=False)
        with pytest.raises(lock.IndexBusy):
            lock.acquire(kn.db_url, n, "cli:other", stale_s=3600)
        with db.connection(kn.db_url) as conn:
            conn.execute(sql.SQL("UPDATE {l} SET heartbeat_at = now() - interval '2 hours'")
                         .format(l=sql.Identifier(n.lease)))
            conn.commit()
        lock.acquire(kn.db_url, n, "cli:other", stale_s=3600).release()
    finally:
        lock.release(kn.db_url, n, "cli:next")


def test_a_cli_run_over_local_sources_does_not_import_airflow(kn, corpus):
    """Local files are read through fsspec directly: the ~2 s Airflow import is left to remote sources."""
    reindex.run(kn, progress=False)
    code = ("import sys; from tandem.cli import main; rc = main(['reindex', '--json']); "
            "print('AIRFLOW_IMPORTED' if 'airflow' in sys.modules else 'NO_AIRFLOW', file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(kn), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["unchanged"] == len(CORPUS)  # a real no-change run, printed as JSON
    assert "NO_AIRFLOW" in proc.stderr


HEAVY_IMPORTS = ("airflow", "mlflow", "torch", "sentence_transformers", "transformers", "pandas")


def _imported_by_cli_run(settings) -> set[str]:
    """Top-level modules a ``tandem reindex --json`` process imported (python -X importtime)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", TANDEM, "reindex", "--json"], capture_output=True,
                          text=True, env=cli_env(settings), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


def test_a_small_cli_run_imports_no_heavy_framework(kn, corpus):
    """The fixed cost of a run: no Airflow (local sources), no mlflow (REST logging), no torch (ONNX Runtime)."""
    reindex.run(kn, progress=False)
    assert not set(HEAVY_IMPORTS) & _imported_by_cli_run(kn)  # no change: nothing to embed
    (corpus / "policies/refunds.txt").write_text("Refunds within 45 days of purchase.\n")
    modules = _imported_by_cli_run(kn)  # one changed document: the chunker and ONNX Runtime, nothing heavier
    assert "onnxruntime" in modules and not set(HEAVY_IMPORTS) & modules
    assert search.search(kn, "How many days do I have for a refund?", k=1)[0].doc_id == "acme/policies/refunds.txt"


def test_a_document_changed_between_plan_and_batch_is_not_indexed_then_retried(kn, corpus):
    """embed_batch re-reads each document from its source (on whichever worker runs it). Bytes that differ from
    what the plan hashed are recorded as changed during the run, never indexed under a hash the plan didn't see."""
    reindex.run(kn, progress=False)
    before = index_state(kn)
    plans = corpus / "pricing/plans.md"
    plans.write_text(CORPUS["pricing/plans.md"].replace("29 dollars", "35 dollars"))  # what the plan sees
    owner = lock.new_owner("test")
    lease = reindex.acquire_lease(kn, owner, keep_connection=True)
    try:
        the_plan = plan.make(kn, run_id=reindex.new_run_id("test"), owner=owner, progress=False)
        assert the_plan.changed == 1
        plans.write_text(CORPUS["pricing/plans.md"].replace("29 dollars", "41 dollars"))  # changed again since
        stats = batch.process_many(kn, the_plan, the_plan.batches, owner=owner)
        assert stats["changed_during_run"] == 1 and stats["written"] == 0
        summary = publish.finalize(kn, the_plan, [stats], owner=owner)
    finally:
        lease.release()
    assert summary["changed_during_run"] == 1 and summary["changed_during_run_docs"] == ["acme/pricing/plans.md"]
    assert summary["failed"] == 0  # not a failure: no attempt counted, nothing quarantined
    assert index_state(kn) == before  # nothing published: the served version is still the first one
    again = reindex.run(kn, progress=False)  # the next run indexes what the file holds now
    assert again["changed"] == 1 and again["changed_during_run"] == 0
    final = index_state(kn)
    assert_consistent(final)
    assert {d: r["hash"] for d, r in final["manifest"].items()} == expected_hashes(corpus)
    assert final["manifest"]["acme/pricing/plans.md"]["hash"] != before["manifest"]["acme/pricing/plans.md"]["hash"]
