"""The tracked eval end to end: `tandem eval` and `airflow dags test behavior_eval`, with the real base model,
a real index built by the knowledge cadence, and the real MLflow server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from behavior_fixtures import behavior_index, behavior_settings  # noqa: F401

pytestmark = pytest.mark.slow

TANDEM = str(Path(sys.executable).parent / "tandem")


def _tandem(settings, *argv, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env.update(settings.as_env())
    return subprocess.run([TANDEM, *argv], env=env, capture_output=True, text=True, timeout=timeout)


def _eval_runs(settings, digest: str):
    from mlflow import MlflowClient

    from tandem import tracking

    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT_EVAL)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`tandem.eval_set_digest` = '{digest}'",
                              order_by=["attributes.start_time DESC"])
    return client, runs


def test_bad_input_fails_before_any_model_loads(behavior_settings, behavior_index, tmp_path):
    # an unknown adapter version: exit 2 from the registry, before retrieval or generation
    proc = _tandem(behavior_settings, "eval", "--adapter", "987")
    assert proc.returncode == 2, proc.stderr
    assert "adapter version 987 does not exist" in proc.stderr and "Traceback" not in proc.stderr
    # a broken eval-set line names the file and line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "question": "q"}\n')
    proc = _tandem(behavior_settings.replace(eval_set_path=str(bad)), "eval")
    assert proc.returncode == 2 and f"{bad} line 1: missing field" in proc.stderr
    assert "Loading weights" not in proc.stderr  # nothing was loaded


def test_cli_eval_holds_then_dag_triggers_lora_retrain(behavior_settings, behavior_index, airflow):
    """One failing eval from the CLI is held by anti-flap (streak 1 of 2); the next one, a real
    `airflow dags test behavior_eval` run, triggers lora_retrain with {reason, failing_metrics, eval_run_id}.

    Both evaluate the live model (the default `--adapter champion`): the base alone, or whichever champion an
    earlier test in this session registered in the shared MLflow server; the streak is per adapter version."""
    import sqlite3

    from tandem.behavior.evalset import file_digest

    digest = file_digest(behavior_settings.eval_set_path)
    proc = _tandem(behavior_settings, "eval", "--json")
    assert proc.returncode == 1, proc.stderr  # 16 tokens fail the thresholds, with or without an adapter
    assert proc.stdout.lstrip().startswith("{"), proc.stdout[:2000]  # --json: stdout is only the JSON
    out = json.loads(proc.stdout)
    summary, decision = out["summary"], out["decision"]
    live_adapter = summary["adapter"]  # "base", or the champion's version
    assert summary["n"] == 3 and live_adapter and not summary["partial"]
    assert summary["index_version"] == behavior_index["index_version"]
    # the off-topic question is refused by the answer path's similarity gate, without generating; no
    # contract-valid answer to the two others fits in 16 tokens
    assert summary["refused_by_similarity"] == 1
    assert summary["metrics"]["schema_valid"] == pytest.approx(1 / 3, abs=1e-4)
    assert summary["metrics"]["refusal_correct"] == 1.0
    assert summary["metrics"]["retrieval_hit"] == 1.0  # k=3 over a 3-document corpus
    assert summary["counts"]["behavior"] == 2 and summary["counts"]["pass"] == 1 and decision["kind"] == "behavior"
    assert decision["action"] == "hold" and "1 failing eval(s) in a row" in decision["reason"]
    assert "metric(s) under threshold" in proc.stderr

    client, runs = _eval_runs(behavior_settings, digest)
    run = next(r for r in runs if r.info.run_id == summary["run_id"])
    tags = run.data.tags
    assert tags["tandem.decision"] == "hold" and tags["tandem.behavior_failing"] == "true"
    assert tags["tandem.adapter_version"] == live_adapter and tags["tandem.eval_source"] == "cli"
    assert tags["tandem.spec_version"] == "2026.3" and len(tags["tandem.base_model_sha256"]) == 64
    assert "Decision: hold" in tags["mlflow.note.content"]
    assert run.data.metrics["json_valid"] == pytest.approx(summary["metrics"]["json_valid"], abs=1e-4)
    assert run.data.metrics["class_behavior"] == pytest.approx(2 / 3) and run.data.metrics["n_examples"] == 3
    assert run.data.metrics["n_refused_by_similarity"] == 1
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "eval_table.json")).read_text())
    assert len(table["data"]) == 3
    for column in ("question", "retrieved_ids", "raw_output", "json_valid", "refusal_correct", "diagnosis"):
        assert column in table["columns"]

    # the scheduled eval: same model, same eval set, second failing eval in a row -> retrain
    rc, output, states = airflow.dags_test("behavior_eval", settings=behavior_settings)
    assert rc == 0, output[-4000:]
    assert states["resolve_model"] == "success" and states["evaluate"] == "success"
    assert states["trigger_lora_retrain"] == "success"
    assert states["no_action"] == "skipped" and states["trigger_knowledge_reindex"] == "skipped"
    assert "Decision: retrain (behavior)" in output  # the decision is in the task log

    client, runs = _eval_runs(behavior_settings, digest)
    assert [r.data.tags["tandem.decision"] for r in runs] == ["retrain", "hold"]
    latest = runs[0]
    tags = latest.data.tags
    assert tags["tandem.eval_source"] == "airflow" and tags["tandem.airflow_dag_id"] == "behavior_eval"
    assert tags["tandem.airflow_run_url"].startswith(behavior_settings.airflow_url)
    assert tags["tandem.index_version"] == str(behavior_index["index_version"])
    assert latest.data.metrics["pass_rate"] == pytest.approx(1 / 3)
    assert latest.data.metrics["class_behavior"] == pytest.approx(2 / 3)
    assert "eval_table.json" in [a.path for a in client.list_artifacts(latest.info.run_id)]

    with sqlite3.connect(airflow.db) as conn:
        rows = conn.execute("SELECT conf FROM dag_run WHERE dag_id = 'lora_retrain' ORDER BY id DESC").fetchall()
    assert rows, "no lora_retrain run was created"
    conf = rows[0][0]
    conf = json.loads(conf) if isinstance(conf, (str, bytes)) else conf
    assert conf["eval_run_id"] == latest.info.run_id
    assert "schema_valid" in conf["failing_metrics"] and "behavior failures dominate" in conf["reason"]
