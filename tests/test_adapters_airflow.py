"""`airflow dags test` of lora_retrain (a few steps) and adapter_rollback, and trigger-time param validation."""

from __future__ import annotations

import pytest

from adapters_fixtures import adapters_settings, gate_promotes  # noqa: F401 - fixture

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

CONF = {"max_steps": 2, "batch_size": 1, "max_seq_len": 640, "lora_r": 4, "lora_alpha": 8, "distractors": 1,
        "holdout_fraction": 0.25, "reason": "airflow dags test", "eval_run_id": "evalrun456"}


def test_invalid_params_are_refused_at_trigger_time(airflow, adapters_settings):
    for conf, field in (({"lora_r": 0}, "lora_r"), ({"target_modules": []}, "target_modules"),
                        ({"learning_rate": "fast"}, "learning_rate")):
        rc, out, _ = airflow.dags_test("lora_retrain", conf, settings=adapters_settings, timeout=300)
        assert rc != 0, out[-3000:]
        assert "ParamValidationError" in out or "Invalid input for param" in out, out[-3000:]
        assert field in out
    rc, out, _ = airflow.dags_test("adapter_rollback", {"version": "v1; drop"}, settings=adapters_settings,
                                   timeout=300)
    assert rc != 0 and "version" in out


def test_lora_retrain_dag_then_adapter_rollback(airflow, adapters_settings):
    from tandem import registry

    settings = adapters_settings
    before = {r["version"] for r in registry.list_versions(settings)}
    champion_before = registry.champion_version(settings)

    rc, out, states = airflow.dags_test("lora_retrain", CONF, settings=settings, timeout=1500)
    assert rc == 0, out[-6000:]
    for task_id in ("prepare_dataset", "train_adapter", "evaluate_three_way", "register_version", "gate", "route"):
        assert states[task_id] == "success", (task_id, states)
    assert states["approve_promotion"] == "skipped"  # require_approval is off
    assert states["mark_failed"] == "skipped"  # nothing failed
    new = [r for r in registry.list_versions(settings) if r["version"] not in before]
    assert len(new) == 1, new
    version = new[0]["version"]
    mv = registry.client(settings).get_model_version(registry.MODEL, version)
    assert mv.tags["tandem.airflow_dag_id"] == "lora_retrain" and "/dags/lora_retrain/runs/" in mv.tags["tandem.airflow_run_url"]
    assert mv.tags["tandem.eval_run_id"] == "evalrun456"
    # the gate's verdict, recomputed from the logged metrics, decides which way the DAG went
    promotes = gate_promotes(settings, mv.run_id, CONF)
    assert states["promote"] == ("success" if promotes else "skipped"), states
    assert mv.tags["tandem.gate_decision"] == ("promoted" if promotes else "challenger")
    expected_champion = version if promotes else champion_before
    assert registry.champion_version(settings) == expected_champion
    assert ("challenger" in new[0]["aliases"]) is not promotes

    # adapter_rollback with a version: that version becomes champion, the old one previous
    current = registry.champion_version(settings)
    rc, out, states = airflow.dags_test("adapter_rollback", {"version": version if current != version else "base"},
                                        settings=settings, timeout=300)
    assert rc == 0 and states["move_champion"] == "success", out[-4000:]
    moved_to = registry.champion_version(settings)
    assert moved_to != current
    # without a version: back to the previous champion
    rc, out, states = airflow.dags_test("adapter_rollback", {}, settings=settings, timeout=300)
    assert rc == 0 and states["move_champion"] == "success", out[-4000:]
    assert registry.champion_version(settings) == current


def test_failed_training_task_marks_the_run_and_leaves_champion(airflow, adapters_settings):
    from mlflow import MlflowClient

    from tandem import tracking
    from tandem import registry

    settings = adapters_settings
    before = [r["version"] for r in registry.list_versions(settings)]
    champion = registry.champion_version(settings)
    conf = dict(CONF, target_modules=["no_such_module"], reason="airflow failure test")  # valid form, fails in training
    rc, out, states = airflow.dags_test("lora_retrain", conf, settings=settings, timeout=900)
    assert rc != 0 or states.get("mark_failed") == "failed", out[-4000:]
    assert states["prepare_dataset"] == "success" and states["train_adapter"] == "failed", states
    assert states["register_version"] == "upstream_failed" and states["mark_failed"] == "failed", states
    assert "no_such_module" in out  # the user's mistake, named
    assert [r["version"] for r in registry.list_versions(settings)] == before  # nothing registered
    assert registry.champion_version(settings) == champion
    cl = MlflowClient(tracking_uri=settings.mlflow_uri)
    exp = cl.get_experiment_by_name(tracking.EXPERIMENT_TRAINING)
    run = cl.search_runs([exp.experiment_id], "tags.`tandem.trigger_reason` = 'airflow failure test'", max_results=1)[0]
    assert run.info.status == "FAILED" and run.data.tags["tandem.status"] == "failed"
