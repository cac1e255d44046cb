"""Embedding-space versions (shadow build, atomic switch, rollback) and the retrieval canary, on the real stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from knowledge_fixtures import (fault_env, GOLDEN, assert_consistent, cli_env, corpus, expected_hashes, index_state, kn,  # noqa: F401
                                write_corpus, write_golden)
from psycopg import sql

from tandem import db, faults
from tandem.errors import JobFailed, UserError
from tandem.knowledge import reindex, search, spaces, store
from tandem.knowledge.status import index_status

TANDEM = str(Path(sys.executable).parent / "tandem")


def _view_table(settings) -> str:
    n = store.names(settings.index_name)
    with db.connection(settings.db_url) as conn:
        return conn.execute("""
            SELECT DISTINCT t.relname FROM pg_rewrite r JOIN pg_depend d ON d.objid = r.oid
            JOIN pg_class v ON v.oid = r.ev_class JOIN pg_class t ON t.oid = d.refobjid
            WHERE v.relname = %s AND t.relname <> %s""", (n.live_view, n.live_view)).fetchone()[0]


def test_fingerprint_change_builds_a_shadow_switches_and_rolls_back(kn, corpus):
    first = reindex.run(kn, progress=False)
    assert first["index_version"] == 1
    old = index_state(kn)
    fp_old = first["space"]["fingerprint"]

    changed = kn.replace(chunk_size=64)  # a chunker change is a new embedding space
    # a shadow build that crashes half way: the live index keeps answering from the old space only
    proc = subprocess.run([TANDEM, "reindex"], capture_output=True, text=True, timeout=600,
                          env=fault_env(changed, {"crash_after_docs": 2}))
    assert proc.returncode == 70, proc.stderr[-2000:]
    assert search.live_index_version(kn) == 1
    hits = search.search(kn, "Pro plan price", k=5)
    assert {h.chunk_id for h in hits} <= {c for c in _chunk_ids(kn, old["table"])}
    st = index_status(kn)
    assert st["building"]["no"] == 2 and st["live"]["no"] == 1

    second = reindex.run(changed, progress=False)  # resumes the shadow build, then switches
    assert second["mode"] == "build" and second["space"]["switched"] and second["index_version"] == 3  # release 2 was the crashed build
    assert second["new"] == 3  # only what the crashed run had not written
    new = index_state(changed)
    assert_consistent(new)
    assert new["table"] != old["table"] and _view_table(kn) == new["table"]
    assert {d: r["hash"] for d, r in new["manifest"].items()} == expected_hashes(corpus)
    fps = {fp for rows in new["chunks"].values() for _, _, fp in rows}
    assert fps == {second["space"]["fingerprint"]} and fp_old not in fps
    st = index_status(kn)
    assert st["previous"]["no"] == 1 and st["live"]["no"] == 2 and st["building"] is None

    # rollback: the previous table is live again, as it was
    proc = subprocess.run([TANDEM, "index", "rollback", "--json"], capture_output=True, text=True, timeout=300,
                          env=cli_env(kn))
    assert proc.returncode == 0, proc.stderr
    assert search.live_index_version(kn) == 1 and _view_table(kn) == old["table"]
    assert index_state(kn)["chunks"] == old["chunks"]
    # the rolled-back space is not rebuilt behind the user's back
    with pytest.raises(UserError, match="rolled back"):
        reindex.run(changed, progress=False)
    assert reindex.run(kn, progress=False)["chunks_embedded"] == 0  # the old settings: incremental, nothing to do
    with pytest.raises(UserError, match="keeps no release before 1"):
        reindex.rollback(kn)


def _chunk_ids(settings, table: str) -> set[str]:
    with db.connection(settings.db_url) as conn:
        return {r[0] for r in conn.execute(sql.SQL("SELECT chunk_id FROM {t}").format(t=sql.Identifier(table)))}


def test_canary_blocks_a_regressed_index(kn, corpus, tmp_path):
    settings = kn.replace(canary_path=str(write_golden(tmp_path / "golden.jsonl", GOLDEN)), canary_k=1,
                          canary_max_drop=0.1)
    first = reindex.run(settings, progress=False)
    assert first["canary"]["status"] == "baseline" and first["canary"]["queries"] == 4
    assert first["canary"]["hit_at_k"] >= 0.75
    again = reindex.run(settings, progress=False)
    assert again["canary"]["status"] == "unchanged" and again["canary"]["hit_at_k"] == first["canary"]["hit_at_k"]

    # the knowledge goes bad: the pricing and SSO pages lose their content
    write_corpus(corpus, {"pricing/plans.md": "# Gardening\n\nWater tomatoes twice a week in summer.\n",
                          "security/sso.md": "# Recipes\n\nBake the bread for forty minutes.\n"})
    with pytest.raises(JobFailed, match="retrieval canary regressed") as err:
        reindex.run(settings, progress=False)
    canary = err.value.summary["canary"]
    assert canary["status"] == "failed" and canary["hit_at_k"] < first["canary"]["hit_at_k"] - 0.1
    assert canary["baseline"]["hit_at_k"] == first["canary"]["hit_at_k"]
    assert err.value.summary["status"] == "failed"
    import mlflow

    logged = mlflow.MlflowClient(tracking_uri=kn.mlflow_uri).get_run(err.value.summary["mlflow_run_id"])
    assert logged.info.status == "FAILED" and "retrieval canary regressed" in logged.data.tags["tandem.failure"]
    assert logged.data.metrics["canary_hit_at_k"] == canary["hit_at_k"]
    proc = subprocess.run([TANDEM, "reindex", "--json"], capture_output=True, text=True, timeout=300,
                          env=cli_env(settings))
    assert proc.returncode == 1 and "canary" in proc.stderr
    hist = index_status(settings)["canary_history"]
    assert hist[0]["status"] == "failed" and hist[-1]["status"] == "baseline"


def test_canary_blocks_the_switch_of_a_regressed_space(kn, corpus, tmp_path):
    settings = kn.replace(canary_path=str(write_golden(tmp_path / "golden.jsonl", GOLDEN)), canary_k=1,
                          canary_max_drop=0.1)
    assert reindex.run(settings, progress=False)["canary"]["status"] == "baseline"
    write_corpus(corpus, {"pricing/plans.md": "# Gardening\n\nWater tomatoes twice a week in summer.\n",
                          "security/sso.md": "# Recipes\n\nBake the bread for forty minutes.\n"})
    with pytest.raises(JobFailed, match="NOT switched"):
        reindex.run(settings.replace(chunk_size=64), progress=False)
    assert search.live_index_version(settings) == 1  # queries still read the validated space
    n = store.names(settings.index_name)
    with db.connection(settings.db_url) as conn:
        assert spaces.by_status(conn, n, "building").space_no == 2


def test_missing_or_empty_golden_set_skips_the_canary_and_says_so(kn, tmp_path):
    summary = reindex.run(kn, progress=False)
    assert summary["canary"]["status"] == "skipped" and "not found" in summary["canary"]["reason"]
    (tmp_path / "empty.jsonl").write_text("\n")
    summary = reindex.run(kn.replace(canary_path=str(tmp_path / "empty.jsonl")), full=True, progress=False)
    assert summary["canary"]["status"] == "skipped" and "empty" in summary["canary"]["reason"]
    (tmp_path / "bad.jsonl").write_text('{"query": "x"}\n')
    with pytest.raises(UserError, match="line 1"):
        reindex.run(kn.replace(canary_path=str(tmp_path / "bad.jsonl")), progress=False)
