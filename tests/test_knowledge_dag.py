"""The knowledge_reindex DAG: its wiring, and real `airflow dags test` runs on a small corpus."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from knowledge_fixtures import assert_consistent, corpus, expected_hashes, index_state, kn  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "sentence_transformers", "llama_index", "mlflow", "psycopg", "tandem.knowledge")


def test_dag_wiring_and_cheap_parse(tmp_path):
    code = f"""
import json, sys, time
import airflow.sdk  # Airflow itself is loaded before the DAG file, as in the dag processor
sys.path.insert(0, {str(REPO / 'dags')!r})
t = time.monotonic()
import knowledge_reindex as mod
parse_s = time.monotonic() - t
d = mod.DAG
print(json.dumps({{
    "parse_s": parse_s, "heavy": [m for m in {HEAVY!r} if m in sys.modules],
    "dag_id": d.dag_id, "catchup": d.catchup, "max_active_runs": d.max_active_runs, "tags": sorted(d.tags),
    "timetable": type(d.timetable).__name__, "cron": getattr(d.timetable, "expression", None),
    "params": sorted(d.params.keys()), "doc": bool(d.doc_md),
    "tasks": {{t.task_id: {{"owner": t.owner, "retries": t.retries, "pool": t.pool,
                         "outlets": [getattr(o, "uri", None) for o in t.outlets],
                         "teardown": t.is_teardown, "setup": t.is_setup}} for t in d.tasks}},
}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                               "AIRFLOW_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    print("knowledge_reindex parse seconds:", round(info["parse_s"], 3))
    assert info["heavy"] == []  # heavy imports happen inside tasks only
    assert info["dag_id"] == "knowledge_reindex" and info["catchup"] is False and info["max_active_runs"] == 1
    assert "tandem" in info["tags"] and info["doc"]
    assert info["timetable"] == "CronTriggerTimetable" and info["cron"] == "0 2 * * *"
    assert info["params"] == ["allow_mass_delete", "dry_run", "full_rebuild", "sources"]
    tasks = info["tasks"]
    assert set(tasks) == {"plan", "batches", "embed_batch", "finalize", "release"}
    assert all(t["owner"] == "tandem" and t["retries"] >= 1 for t in tasks.values())
    assert tasks["embed_batch"]["pool"] == "knowledge"
    assert tasks["finalize"]["outlets"] == ["tandem://knowledge/index"]
    assert tasks["release"]["teardown"]


def _asset_events(airflow) -> list[dict]:
    with sqlite3.connect(airflow.db) as conn:
        rows = conn.execute("""
            SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id
            WHERE a.uri = 'tandem://knowledge/index' ORDER BY e.id""").fetchall()
    return [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rows]


@pytest.mark.airflow
def test_airflow_dags_test_end_to_end(kn, corpus, airflow):
    settings = kn.replace(reindex_batch_docs=2)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "pools", "set", "knowledge", "2", "reindex batches"],
                   env=airflow.env(settings), check=True, capture_output=True, timeout=300)
    # a dry run first: a plan, no writes, no asset event
    rc, out, states = airflow.dags_test("knowledge_reindex", {"dry_run": True}, settings=settings)
    assert rc == 0, out[-4000:]
    assert states["plan"] == "success" and states["finalize"] == "skipped", states
    assert index_state(settings)["space"] is None and _asset_events(airflow) == []

    rc, out, states = airflow.dags_test("knowledge_reindex", {}, settings=settings)
    assert rc == 0, out[-4000:]
    assert states["plan"] == "success" and states["finalize"] == "success" and states["release"] == "success", states
    mapped = {k: v for k, v in states.items() if k.startswith("embed_batch[")}
    assert len(mapped) == 3 and set(mapped.values()) == {"success"}  # 5 documents in batches of 2
    state = index_state(settings)
    assert_consistent(state)
    assert {d: r["hash"] for d, r in state["manifest"].items()} == expected_hashes(corpus)
    events = _asset_events(airflow)
    assert len(events) == 1 and events[0]["index_version"] == 1
    assert events[0]["summary"]["new"] == 5 and events[0]["summary"]["status"] == "succeeded"

    from tandem.knowledge.status import index_status

    assert index_status(settings)["running"] is None  # the teardown gave the lease back

    # more batches than Airflow's core.max_map_length: grouped into that many mapped tasks, one release
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        path.write_text(path.read_text() + "\nRevised.\n")
    rc, out, states = airflow.dags_test("knowledge_reindex", {}, settings=settings.replace(reindex_batch_docs=1),
                                        extra_env={"AIRFLOW__CORE__MAX_MAP_LENGTH": "2"})
    assert rc == 0, out[-4000:]
    mapped = {k: v for k, v in states.items() if k.startswith("embed_batch[")}
    assert len(mapped) == 2 and set(mapped.values()) == {"success"}, states  # 5 batches in 2 tasks
    state = index_state(settings)
    assert_consistent(state)
    assert {d: r["hash"] for d, r in state["manifest"].items()} == expected_hashes(corpus)
    assert _asset_events(airflow)[-1]["index_version"] == 2


@pytest.mark.airflow
def test_knowledge_verify_dag_fails_on_drift_and_repairs(kn, corpus, airflow):
    from psycopg import sql

    from tandem import db
    from tandem.knowledge import reindex, search
    from tandem.knowledge.status import index_status

    reindex.run(kn, progress=False)
    rc, out, states = airflow.dags_test("knowledge_verify", {}, settings=kn)
    assert rc == 0 and states == {"verify": "success", "repair": "skipped"}, out[-3000:]
    with db.connection(kn.db_url) as conn:  # a published chunk row disappears
        conn.execute(sql.SQL("DELETE FROM {t} WHERE doc_id = 'acme/guides/install.rst'")
                     .format(t=sql.Identifier(search.pin(kn).table)))
        conn.commit()
    events_before = len(_asset_events(airflow))
    rc, out, states = airflow.dags_test("knowledge_verify", {}, settings=kn)
    assert states["verify"] == "failed" and "drifted from its sources" in out, out[-3000:]
    assert index_status(kn)["last_verify"]["drift"]["chunk_count_mismatch"] == 1
    rc, out, states = airflow.dags_test("knowledge_verify", {"repair": True}, settings=kn)
    assert rc == 0 and states == {"verify": "success", "repair": "success"}, out[-3000:]
    assert index_status(kn)["last_verify"]["ok"] is True
    events = _asset_events(airflow)
    assert len(events) == events_before + 1 and events[-1]["index_version"] == 2
    assert events[-1]["action"] == "verify_repair"
    assert_consistent(index_state(kn))
