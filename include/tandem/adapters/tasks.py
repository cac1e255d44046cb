"""The bodies of the ``lora_retrain`` and ``adapter_rollback`` tasks (the DAG files only wire them).

A user's mistake (``UserError``: bad params, a missing dataset) fails the task at once with its message and
fix (``AirflowFailException``: retrying cannot help); anything else may be retried by Airflow.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from tandem.errors import UserError

log = logging.getLogger(__name__)


def _settings():
    from tandem.airflow.settings import task_settings

    return task_settings()


def _no_retry_on_user_error(fn: Callable[..., Any], *args, **kwargs) -> Any:
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        raise AirflowFailException(str(exc)) from None


def prepare(params: dict) -> dict:
    from tandem.adapters import retrain
    from tandem.adapters.params import SCHEMA

    extra = sorted(set(params) - set(SCHEMA))
    if extra:  # conf keys that are not params of this DAG: said, not silently dropped
        log.warning("ignoring conf keys that are not lora_retrain params: %s", extra)
    values = {k: params[k] for k in SCHEMA if k in params}
    return _no_retry_on_user_error(retrain.prepare, _settings(), values)


def step(name: str, state: dict, **kwargs: Any) -> dict:
    """One of the pipeline's steps: train, evaluate, register (``log_model=``), gate."""
    from tandem.adapters import promotion, retrain

    fn = {"train": retrain.train, "evaluate": retrain.evaluate, "register": promotion.register,
          "gate": promotion.gate}[name]
    return _no_retry_on_user_error(fn, _settings(), state, **kwargs)


def promote(state: dict, outlet_events, asset, run_id: str) -> dict:
    """Promote the gated candidate; no asset event (skip) when the champion changed meanwhile.

    The move is named after the run, so a retry of this task finishes a promotion that its failed try began
    and emits the asset event then (exactly once: a failed try records none)."""
    from airflow.sdk.exceptions import AirflowSkipException

    from tandem.adapters import promotion

    out = _no_retry_on_user_error(promotion.promote, _settings(), state, op_id=f"{run_id}:promote")
    if not out.get("promoted"):
        raise AirflowSkipException(out.get("reason") or "not promoted")
    outlet_events[asset].extra = {"action": "promote", "champion": out["version"],
                                  "previous": (out.get("aliases") or {}).get("previous") or ""}
    return {k: out.get(k) for k in ("version", "promoted", "aliases", "reason")}


def mark_failed(states: list[dict | None], run_id: str) -> None:
    """After a failed step: mark the MLflow run and any version of this run failed, then fail."""
    from airflow.sdk.exceptions import AirflowFailException

    from tandem.adapters import promotion

    latest = next((s for s in reversed(states) if s), None)
    promotion.fail(_settings(), latest, None, f"lora_retrain run {run_id} failed")
    version = (latest or {}).get("version") or "(none registered)"
    if (latest or {}).get("action") == "approve":
        raise AirflowFailException(f"{promotion.APPROVAL_TIMED_OUT}: version {version} stays challenger; promote it "
                                   f"with `tandem adapters promote {version}`; the champion was not touched")
    raise AirflowFailException(f"a step failed; MLflow run {(latest or {}).get('run_id') or '(not started)'} and "
                               f"version {version} marked failed; the champion was not touched")


def move_champion(params: dict, run_id: str, outlet_events, asset) -> dict:
    """adapter_rollback: promote ``version`` or roll back; the asset event only when the champion changed."""
    from airflow.sdk.exceptions import AirflowSkipException

    from tandem import registry

    settings = _settings()
    actor = f"adapter_rollback {run_id}"
    op_id = f"{run_id}:move_champion"  # a retry of this task finishes the move instead of making another
    if params.get("version"):
        out = _no_retry_on_user_error(registry.promote, settings, params["version"], reason=params["reason"],
                                      actor=actor, op_id=op_id)
        action = "promote"
    else:
        out = _no_retry_on_user_error(registry.rollback, settings, reason=params["reason"], actor=actor, op_id=op_id)
        action = "rollback"
    if not out["changed"]:
        raise AirflowSkipException(f"{out['champion'] or 'base'} is already champion")  # no asset event
    outlet_events[asset].extra = {"action": action, "champion": out["champion"] or "base",
                                  "previous": out.get("previous") or ""}
    return out
