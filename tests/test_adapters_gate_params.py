"""The promotion gate's decisions and the retrain parameter validation (pure functions)."""

from __future__ import annotations

import pytest

from tandem.adapters import gate, params
from tandem.errors import UserError

THRESHOLDS = {"schema_valid_rate": 0.95, "citation_validity": 0.9}


def test_gate_promotes_only_a_better_candidate_meeting_every_threshold():
    base = {"schema_valid_rate": 0.2, "citation_validity": 0.1, "refusal_accuracy": 0.5}
    good = {"schema_valid_rate": 1.0, "citation_validity": 0.95, "refusal_accuracy": 0.6}
    d = gate.decide(good, base, thresholds=THRESHOLDS, primary="schema_valid_rate", margin=0.02, tolerance=0.02)
    assert d.promote and "passed" in d.reason

    below = dict(good, citation_validity=0.8)
    d = gate.decide(below, base, thresholds=THRESHOLDS, primary="schema_valid_rate", margin=0.02, tolerance=0.02)
    assert not d.promote and "citation_validity 0.800 below the spec threshold" in d.reason

    champion = {"schema_valid_rate": 0.99, "citation_validity": 0.95, "refusal_accuracy": 0.6}
    d = gate.decide(good, champion, thresholds=THRESHOLDS, primary="schema_valid_rate", margin=0.02, tolerance=0.02)
    assert not d.promote and "does not beat the incumbent" in d.reason

    # a gated metric that still meets its threshold but drops beyond the tolerance blocks the promotion
    strong = dict(base, citation_validity=0.99)
    d = gate.decide(good, strong, thresholds=THRESHOLDS, primary="schema_valid_rate", margin=0.02, tolerance=0.02)
    assert not d.promote and "citation_validity 0.950 regressed" in d.reason

    # a metric the spec does not gate: reported with the decision, not blocking
    regress = dict(good, refusal_accuracy=0.3)
    d = gate.decide(regress, base, thresholds=THRESHOLDS, primary="schema_valid_rate", margin=0.02, tolerance=0.02)
    assert d.promote and "not gated, regressed: refusal_accuracy 0.300 (incumbent 0.500)" in d.reason
    assert [c["metric"] for c in d.ungated_regressions] == ["refusal_accuracy"]

    missing = {"schema_valid_rate": 1.0}
    d = gate.decide(missing, None, thresholds=THRESHOLDS, primary="schema_valid_rate", margin=0.0, tolerance=0.0)
    assert not d.promote and "citation_validity missing" in d.reason


def test_gate_lower_is_better_metrics():
    d = gate.decide({"latency_p95_s": 3.0, "x": 1.0}, {"latency_p95_s": 1.0, "x": 0.5},
                    thresholds={"latency_p95_s": 5.0}, primary="x", margin=0.1, tolerance=0.5)
    assert not d.promote and "latency_p95_s" in d.reason


def test_params_defaults_and_validation():
    p = params.validate({})
    assert p.lora_r == 8 and p.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    p = params.validate({"max_steps": 3, "target_modules": "q_proj, v_proj", "auto_promote": False})
    assert p.max_steps == 3 and p.target_modules == ("q_proj", "v_proj") and p.auto_promote is False
    bad = [
        ({"lora_r": 0}, "lora_r=0"),
        ({"learning_rate": 0.5}, "learning_rate=0.5"),
        ({"batch_size": "four"}, "batch_size"),
        ({"target_modules": []}, "target_modules"),
        ({"target_modules": ["q_proj; rm -rf"]}, "target_modules"),
        ({"no_such_param": 1}, "no_such_param"),
        ({"max_seq_len": 10}, "max_seq_len=10"),
    ]
    for values, needle in bad:
        with pytest.raises(UserError) as err:
            params.validate(values)
        assert needle in str(err.value) and "fix:" in str(err.value), values
    assert params.parse_assignment("max_steps=5") == ("max_steps", 5)
    assert params.parse_assignment("reason=nightly drift") == ("reason", "nightly drift")
    assert params.parse_assignment("target_modules=q_proj,v_proj") == ("target_modules", ["q_proj", "v_proj"])
    with pytest.raises(UserError):
        params.parse_assignment("max_steps")


def test_retrain_max_steps_setting_sets_the_default(monkeypatch):
    monkeypatch.setenv("TANDEM_RETRAIN_MAX_STEPS", "6")
    assert params.validate({}).max_steps == 6  # the deployment's default (a fast demo, a bigger box)
    assert params.validate({"max_steps": 12}).max_steps == 12  # a run's own param still wins
    assert params.json_schema()["properties"]["max_steps"]["default"] == 6
    assert params.airflow_params()["max_steps"].value == 6  # the trigger form shows it
    monkeypatch.setenv("TANDEM_RETRAIN_MAX_STEPS", "-1")
    from tandem.errors import ConfigError

    with pytest.raises(ConfigError, match="TANDEM_RETRAIN_MAX_STEPS"):
        params.defaults()


def test_airflow_params_refuse_invalid_values():
    from airflow.sdk import Param  # noqa: F401 - the real Param class validates the JSON schema
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    form = ParamsDict(params.airflow_params())
    assert form.validate() is not None  # defaults are valid
    for name, value in (("lora_r", 0), ("lora_dropout", 0.9), ("target_modules", []), ("auto_promote", "yes")):
        bad = ParamsDict(params.airflow_params())
        with pytest.raises(ParamValidationError):
            bad[name] = value
            bad.validate()


def test_lora_retrain_dag_wiring(tmp_path, monkeypatch):
    """Schedule, pools/queues, the approval operator and the asset outlet, from the parsed DAG files."""
    from pathlib import Path

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dags = Path(__file__).resolve().parents[1] / "dags"
    bag = DagBag(dag_folder=str(dags / "lora_retrain.py"))
    assert not bag.import_errors
    dag = bag.dags["lora_retrain"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None: manual or triggered only
    assert dag.max_active_runs == 1 and "tandem" in dag.tags
    for task_id in ("train_adapter", "evaluate_three_way"):
        task = dag.get_task(task_id)
        assert task.pool == "training" and task.queue == "training"
    approve = dag.get_task("approve_promotion")
    assert isinstance(approve, ApprovalOperator)
    promote = dag.get_task("promote")
    assert {"route", "approve_promotion"} == set(promote.upstream_task_ids)
    assert [o.uri for o in promote.outlets] == ["tandem://behavior/adapter"]
    assert dag.get_task("mark_failed").trigger_rule == "one_failed"
    for name in params.SCHEMA:
        assert dag.params.get_param(name).description, name
    rollback = DagBag(dag_folder=str(dags / "adapter_rollback.py")).dags["adapter_rollback"]
    assert [o.uri for o in rollback.get_task("move_champion").outlets] == ["tandem://behavior/adapter"]


def test_gate_refuses_a_candidate_that_regresses_content_below_the_base_model():
    """answer_correct, no_false_refusal and faithful are held against the base model, thresholds or not."""
    base = {"schema_valid": 0.10, "answer_correct": 0.29, "no_false_refusal": 0.87, "faithful": 0.60}
    cand = {"schema_valid": 0.97, "answer_correct": 0.20, "no_false_refusal": 0.63, "faithful": 0.90}
    kw = dict(thresholds={"schema_valid": 0.9}, primary="schema_valid", margin=0.02, tolerance=0.02)
    d = gate.decide(cand, base, base=base, base_tolerance=0.05, **kw)
    assert not d.promote
    assert {c["metric"] for c in d.failed} == {"answer_correct", "no_false_refusal"}
    assert "answer_correct 0.200 fell below the base model's 0.290" in d.reason and "base_tolerance" in d.reason
    within = {**cand, "answer_correct": 0.25, "no_false_refusal": 0.83}  # inside the 0.05 tolerance
    assert gate.decide(within, base, base=base, base_tolerance=0.05, **kw).promote
    # against a champion, the base check still applies
    champion = {"schema_valid": 0.90, "answer_correct": 0.10, "no_false_refusal": 0.50, "faithful": 0.5}
    d = gate.decide(cand, champion, base=base, base_tolerance=0.05, **kw)
    assert not d.promote and {c["check"] for c in d.failed} == {"base"}
    assert gate.decide(cand, champion, base=None, **kw).promote  # no base scores: nothing to hold against
