"""The retrain's last steps: ``register`` a version, ``gate`` it, ``promote`` it (or leave it challenger),
and ``fail``: a partial run is marked, its version tagged failed. Nothing touches ``champion`` before
``promote``, which re-checks that the champion is still the one the candidate was compared with.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from tandem import faults, registry, tracking
from tandem.adapters import params as params_mod
from tandem.adapters import run_state
from tandem.config import Settings

log = logging.getLogger(__name__)


def register(settings: Settings, state: dict, *, log_model: Callable[..., Any]) -> dict:
    """Register the run's adapter as a version. ``log_model`` logs it as a servable MLflow model (the answer
    path's ``tandem.serve.pyfunc.log_adapter_model``, passed in by the DAG and the CLI: serving sits above
    this package)."""
    from tandem.adapters import card

    p = params_mod.validate(state["params"])
    settings = run_state.effective_settings(settings, p)
    evaluation = state["evaluation"]
    cand = evaluation["models"]["candidate"]
    tags = tracking.tags(
        base_model=state["base_model"], base_model_sha256=state["base_sha256"], adapter_sha256=state["adapter_sha256"],
        probe_logits_sha256=state["training"].get("probe_logits_sha256"),
        dataset_digest=state["dataset_digest"], spec_version=state.get("spec_version") or None,
        index_version=state.get("index_version") or None, trigger_reason=p.reason,
        eval_run_id=p.eval_run_id or None, failing_metrics=",".join(p.failing_metrics) or None,
        training_run_id=state["run_id"],
        compared_with=evaluation["champion_version"] or "base", holdout_rows=evaluation["n"],
    )
    tags.update(state.get("airflow") or {})
    tags.update({registry.METRIC_TAG_PREFIX + m: f"{v:.6g}" for m, v in cand.items() if isinstance(v, (int, float))})
    description = card.render(base_model=state["base_model"], base_sha256=state["base_sha256"], params=state["params"],
                              dataset={"digest": state["dataset_digest"], "counts": state["counts"],
                                       "source": settings.train_set_path, "index_version": state.get("index_version")},
                              training=state["training"], evaluation=evaluation,
                              context={"training run": state["run_id"], "trigger reason": p.reason,
                                       "triggering eval run": p.eval_run_id,
                                       "airflow run": (state.get("airflow") or {}).get(tracking.tag("airflow_run_url"))})
    def log_run_model():  # the version is an MLflow model, linked to this run and its metrics (not on a retry)
        with run_state.resume(settings, state["run_id"]):
            holdout = run_state.mlflow_dataset(settings, run_state.snapshot(settings, state), "holdout", state["dataset_digest"])
            return log_model(run_state.adapter_dir(settings, state), base_model=state["base_model"],
                                            base_sha256=state["base_sha256"], dataset=holdout,
                                            metrics={m: v for m, v in cand.items() if isinstance(v, (int, float))})

    version = registry.register_version(settings, state["run_id"], tags=tags, description=description,
                                        model_info=log_run_model)
    faults.point("after_register", version=version)
    with run_state.resume(settings, state["run_id"]):
        import mlflow

        mlflow.set_tags(tracking.tags(status="registered", adapter_version=version))
    return {**state, "version": version}


def gate(settings: Settings, state: dict) -> dict:
    """Decide. Returns state with ``decision`` and ``action``: "promote", "approve" or "challenger"."""
    from tandem.adapters import gate as gate_mod

    p = params_mod.validate(state["params"])
    settings = run_state.effective_settings(settings, p)
    ev = state["evaluation"]
    incumbent = ev["models"].get("champion") or ev["models"]["base"]
    decision = gate_mod.decide(ev["models"]["candidate"], incumbent, thresholds=ev["thresholds"],
                               primary=ev["primary"], margin=p.promotion_margin, tolerance=p.regression_tolerance,
                               base=ev["models"].get("base"), base_tolerance=float(ev.get("base_tolerance", 0.05)))
    version = state["version"]
    if not decision.promote:
        action, reason = "challenger", decision.reason
    elif not p.auto_promote:
        action, reason = "challenger", f"{decision.reason}; auto_promote is off: promote with `tandem adapters promote {version}`"
    elif p.require_approval:
        action, reason = "approve", f"{decision.reason}; waiting for approval in the Airflow UI"
    else:
        action, reason = "promote", decision.reason
    if action != "promote":
        registry.set_challenger(settings, version, reason)  # champion untouched
    registry.set_version_tags(settings, version, {tracking.tag("gate_decision"): action,
                                                  tracking.tag("gate_reason"): reason,
                                                  tracking.tag("gate_checks"): json.dumps(list(decision.checks))})
    with run_state.resume(settings, state["run_id"]):
        import mlflow

        mlflow.set_tags(tracking.tags(status="gated", gate_decision=action, gate_reason=reason))
    log.info("gate for version %s: %s (%s)", version, action, reason)
    return {**state, "decision": decision.as_dict(), "action": action, "reason": reason}


def promote(settings: Settings, state: dict, *, actor: str = "lora_retrain", op_id: str | None = None) -> dict:
    """Make the candidate champion, unless the champion changed since the evaluation (then: challenger).

    The check happens under the alias lock. ``op_id`` (the Airflow run) makes a retry converge: a promotion
    that moved the aliases before its task failed is finished, and reported as promoted.
    """
    p = params_mod.validate(state["params"])
    settings = run_state.effective_settings(settings, p)
    version = state["version"]
    compared = state["evaluation"]["champion_version"]
    out = registry.promote(settings, version, reason=state.get("reason") or "gate passed", actor=actor,
                           op_id=op_id, expected=compared)
    if "conflict" in out:
        current = out["conflict"]
        reason = (f"the champion changed during the run (compared with {compared or 'base'}, now {current}); "
                  f"re-run the retrain or promote with `tandem adapters promote {version}`")
        registry.set_challenger(settings, version, reason)
        return {**state, "promoted": False, "reason": reason}
    registry.set_version_tags(settings, version, {tracking.tag("gate_decision"): "promoted"})
    return {**state, "promoted": bool(out["changed"]), "aliases": out}


APPROVAL_TIMED_OUT = "approval timed out"


def fail(settings: Settings, state: dict | None, run_id: str | None, error: str) -> None:
    """Mark a partial run: the MLflow run FAILED + tagged, its version (if any) tagged failed.

    A version that passed the gate and waited for an approval that never came is not broken: it stays
    ``challenger`` with the reason "approval timed out", and the run is marked the same way.
    """

    run_id = run_id or (state or {}).get("run_id")
    version = (state or {}).get("version")
    if version and (state or {}).get("action") == "approve" and not (state or {}).get("promoted"):
        registry.set_challenger(settings, version, APPROVAL_TIMED_OUT)
        registry.set_version_tags(settings, version, {tracking.tag("gate_decision"): "challenger"})
        error = APPROVAL_TIMED_OUT
        version = None  # not failed
    if version and not (state or {}).get("promoted"):
        current = None
        try:
            current = registry.champion_version(settings)
        except Exception:  # noqa: BLE001 - MLflow unreachable while failing: tag the version failed anyway
            pass
        if current != str(version):
            registry.mark_failed(settings, version, error)
    if run_id:
        try:
            cl = tracking.client(settings)
            cl.set_tag(run_id, tracking.tag("status"), "failed")
            cl.set_tag(run_id, tracking.tag("failure"), error[:5000])
            cl.set_terminated(run_id, status="FAILED")
        except Exception:  # noqa: BLE001 - best effort while handling the real error
            log.exception("could not mark run %s failed", run_id)
