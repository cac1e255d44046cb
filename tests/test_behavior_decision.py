"""The decision: thresholds, the dominance rule, each anti-flap condition, and the anti-flap history as
read from a real MLflow server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tandem.behavior import antiflap
from tandem.behavior.decision import decide, failing_metrics
from tandem.behavior.spec import load_spec

# The demo spec with production-like gates, fixed here so that tuning the demo cannot change these tests.
_DATA = yaml.safe_load((Path(__file__).resolve().parents[1] / "include/tandem/data/demo/behavior_spec.yaml").read_text())
_DATA.update(
    thresholds={"json_valid": 0.95, "schema_valid": 0.95, "citations_valid": 0.95, "grounded": 0.80,
                "style_max_words": 0.95, "style_forbidden_phrases": 0.98, "refusal_correct": 0.80,
                "no_false_refusal": 0.90, "answer_correct": 0.60, "retrieval_hit": 0.80, "pass_rate": 0.50},
    primary_metric="pass_rate",
    anti_flap={"consecutive_failures": 2, "min_hours_between_retrains": 24, "max_retrains_per_week": 2})
_SPEC_DIR = tempfile.mkdtemp(prefix="tandem-decision-spec-")
(Path(_SPEC_DIR) / "spec.yaml").write_text(yaml.safe_dump(_DATA, sort_keys=False))
SPEC = load_spec(Path(_SPEC_DIR) / "spec.yaml")
NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.timezone.utc)
GOOD = {name: 1.0 for name in SPEC.thresholds}
NO_HISTORY = antiflap.History(failing_streak=1, retrain_times=())  # one failing eval before this one


def metrics(**changes):
    return {**GOOD, **changes}


def counts(behavior=0, knowledge=0, capability=0, passed=10):
    return {"pass": passed, "behavior": behavior, "knowledge": knowledge, "model_capability": capability}


def test_healthy_when_every_threshold_is_met():
    d = decide(SPEC, GOOD, counts(behavior=1), missing_docs={}, history=None)
    assert (d.action, d.kind, d.failing_metrics) == ("none", "healthy", [])


def test_thresholds_are_minimums():
    assert failing_metrics(SPEC, metrics(json_valid=0.95)) == []
    assert failing_metrics(SPEC, metrics(json_valid=0.94, answer_correct=0.1)) == ["answer_correct", "json_valid"]
    assert "pass_rate" in failing_metrics(SPEC, {k: v for k, v in GOOD.items() if k != "pass_rate"})


def test_behavior_dominates_and_anti_flap_allows_retrain():
    d = decide(SPEC, metrics(json_valid=0.5, pass_rate=0.2), counts(behavior=8, knowledge=2), missing_docs={},
               history=NO_HISTORY, now=NOW)
    assert d.action == "retrain" and d.kind == "behavior" and d.behavior_failing
    assert d.failing_metrics == ["json_valid", "pass_rate"] and "json_valid 0.50 < 0.95" in d.reason
    conf = d.trigger_conf("run123")
    assert conf == {"reason": d.reason, "failing_metrics": ["json_valid", "pass_rate"], "eval_run_id": "run123"}


def test_first_failing_eval_is_held_by_the_streak_rule():
    d = decide(SPEC, metrics(json_valid=0.5), counts(behavior=8), missing_docs={},
               history=antiflap.History(0, ()), now=NOW)
    assert d.action == "hold" and d.behavior_failing
    assert "1 failing eval(s) in a row, the policy needs 2" in d.reason
    assert d.anti_flap["consecutive_failures"] == 1


def test_recent_retrain_holds():
    hist = antiflap.History(3, (NOW - dt.timedelta(hours=5),))
    d = decide(SPEC, metrics(schema_valid=0.1), counts(behavior=8), missing_docs={}, history=hist, now=NOW)
    assert d.action == "hold" and "last retrain 5.0 h ago, the policy needs 24 h" in d.reason
    assert d.anti_flap["retrain_allowed_after"] == (NOW + dt.timedelta(hours=19)).isoformat(timespec="seconds")


def test_a_retrain_stamped_after_now_is_just_now_not_negative():
    # another worker's clock a second ahead: with no spacing required the retrain is allowed, with 24 h it holds
    hist = antiflap.History(3, (NOW + dt.timedelta(seconds=2),))
    policy = dataclasses.replace(SPEC.anti_flap, min_hours_between_retrains=0)
    verdict = antiflap.check(policy, hist, current_failing=True, now=NOW)
    assert verdict.allowed and verdict.hours_since_last_retrain == 0.0
    held = antiflap.check(SPEC.anti_flap, hist, current_failing=True, now=NOW)
    assert not held.allowed and "last retrain 0.0 h ago" in held.reasons[0]


def test_weekly_budget_holds():
    times = (NOW - dt.timedelta(days=2), NOW - dt.timedelta(days=5), NOW - dt.timedelta(days=9))
    d = decide(SPEC, metrics(schema_valid=0.1), counts(behavior=8), missing_docs={},
               history=antiflap.History(5, times), now=NOW)
    assert d.action == "hold" and "2 retrain(s) in the last 7 days, the policy allows 2" in d.reason
    # the budget frees up when the retrain of 5 days ago leaves the window
    assert d.anti_flap["retrain_allowed_after"] == (NOW + dt.timedelta(days=2)).isoformat(timespec="seconds")
    relaxed = dataclasses.replace(SPEC, anti_flap=dataclasses.replace(SPEC.anti_flap, max_retrains_per_week=3))
    assert decide(relaxed, metrics(schema_valid=0.1), counts(behavior=8), missing_docs={},
                  history=antiflap.History(5, times), now=NOW).action == "retrain"


def test_knowledge_dominates_no_retrain_and_names_missing_docs():
    missing = {"e1": ["acme/pricing/plans.md"], "e7": ["acme/pricing/plans.md", "acme/sla.md"]}
    d = decide(SPEC, metrics(retrieval_hit=0.5, json_valid=0.9), counts(behavior=2, knowledge=6),
               missing_docs=missing, history=None)
    assert d.action == "report" and d.kind == "knowledge" and not d.behavior_failing
    assert "not retraining" in d.reason and "acme/pricing/plans.md (for e1, e7)" in d.reason
    assert "acme/sla.md (for e7)" in d.reason
    d = decide(SPEC, metrics(retrieval_hit=0.5), counts(knowledge=6), missing_docs=missing, history=None,
               trigger_reindex=True)
    assert d.action == "reindex" and "triggering knowledge_reindex" in d.reason


def test_capability_and_mixed_do_not_retrain():
    d = decide(SPEC, metrics(answer_correct=0.2), counts(capability=7, behavior=1), missing_docs={}, history=None)
    assert (d.action, d.kind) == ("report", "model_capability")
    d = decide(SPEC, metrics(json_valid=0.5), counts(behavior=4, knowledge=3, capability=3), missing_docs={},
               history=NO_HISTORY)
    assert (d.action, d.kind) == ("report", "mixed") and not d.behavior_failing


def test_behavior_dominant_but_only_content_metrics_fail():
    d = decide(SPEC, metrics(answer_correct=0.2), counts(behavior=6, capability=2), missing_docs={},
               history=NO_HISTORY)
    assert d.action == "report" and not d.behavior_failing


def test_partial_eval_never_acts():
    d = decide(SPEC, metrics(json_valid=0.1), counts(behavior=9), missing_docs={}, history=NO_HISTORY, partial=True)
    assert d.action == "report" and not d.behavior_failing and "partial" in d.reason


# --- the history, from a real MLflow server


def test_history_from_mlflow(settings):
    import mlflow
    from mlflow import MlflowClient

    from tandem import tracking

    adapter = f"t{int(time.time() * 1000)}"  # isolates this test's runs from the others on the server
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    exp = tracking.use(settings, tracking.EXPERIMENT_EVAL)

    def eval_run(**tags):
        with mlflow.start_run(experiment_id=exp.experiment_id) as run:
            mlflow.set_tags(tracking.tags(adapter_version=adapter, **tags))
        return run.info.run_id

    eval_run(decision="none", behavior_failing="false")
    eval_run(decision="hold", behavior_failing="true")
    eval_run(decision="hold", behavior_failing="true", eval_partial="true")  # partial: ignored
    eval_run(behavior_failing="true")  # no decision recorded (crashed): ignored
    latest = eval_run(decision="hold", behavior_failing="true")
    hist = antiflap.history(client, adapter_version=adapter)
    assert hist.failing_streak == 2 and hist.streak_run_ids[0] == latest
    assert antiflap.history(client, adapter_version=adapter, exclude_run_id=latest).failing_streak == 1
    assert antiflap.history(client, adapter_version=adapter + "x").failing_streak == 0

    # retrains: top-level training runs; a triggered retrain counts until a training run starts after it
    before = antiflap.history(client, adapter_version=adapter).retrain_times
    decided_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=30)
    trigger = eval_run(decision="retrain", behavior_failing="true", decided_at=decided_at.isoformat())
    hist = antiflap.history(client, adapter_version=adapter)
    assert hist.failing_streak == 3 and decided_at in hist.retrain_times
    train = tracking.use(settings, tracking.EXPERIMENT_TRAINING)
    with mlflow.start_run(experiment_id=train.experiment_id):
        with mlflow.start_run(nested=True):
            pass
    hist = antiflap.history(client, adapter_version=adapter, exclude_run_id=trigger)
    assert len(hist.retrain_times) == len(before) + 1  # the parent run only, not the nested one
    verdict = antiflap.check(SPEC.anti_flap, hist, current_failing=True)
    assert not verdict.allowed and any("last retrain" in r for r in verdict.reasons)
