"""The state of both cadences as data: what the status page and ``GET /tandem/api/status`` show.

It answers an operator's morning questions:

- **Is the index fresh? What changed last night?** ``knowledge``: the knowledge cadence's own
  ``index_status`` (version, documents, chunks, last run and its summary, quarantined documents, canary
  history), plus the age of the last run.
- **Which adapter is live, and how does it score?** ``behavior.champion`` / ``challenger`` / ``previous``
  (registry versions with their metrics and gate reasons) and the recent evals from MLflow
  (``tandem-behavior-eval``): primary metric trend, the last eval's diagnosis mix and decision.
- **Is a retrain pending, and why?** ``behavior.retrain``: the last eval's decision, the anti-flap state
  ("retrain allowed after ..."), and the latest ``lora_retrain`` DAG run.
- **What did users get?** ``answers``: the newest traced answers (question, adapter, index version, the
  cited documents with their page, slide or sheet, valid or refused), from the answer traces in MLflow.
- Links to the MLflow runs and the Airflow DAG runs (``links``, and a ``url`` on every run).

Each section is collected on its own: a section whose service is down carries ``error`` and ``fix``, the
others still show. Nothing here writes anything.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable
from urllib.parse import quote

from tandem import tracking
from tandem.config import Settings
from tandem.errors import TandemError

log = logging.getLogger(__name__)

DAG_IDS = ("knowledge_reindex", "knowledge_verify", "behavior_eval", "lora_retrain", "adapter_rollback")
MAX_EVALS = 20
MAX_VERSIONS = 10
FRESH_HOURS = 26  # a nightly cadence plus slack: older than this, the index is stale


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _guard(name: str, fn: Callable[[], dict]) -> dict:
    """Run one section; a failure becomes {"error", "fix"} instead of failing the whole status."""
    try:
        return fn()
    except TandemError as exc:
        return {"error": exc.message, "fix": exc.fix}
    except Exception as exc:  # noqa: BLE001 - a status page must render whatever one service does
        log.exception("status section %s failed", name)
        return {"error": f"{type(exc).__name__}: {exc}", "fix": "see the api-server log"}


# --- knowledge


def knowledge(settings: Settings) -> dict[str, Any]:
    from tandem.knowledge.status import index_status

    data = dict(index_status(settings))
    last = data.get("last_run") or {}
    when = _parse(last.get("finished_at") or last.get("started_at"))
    age_h = None if when is None else round((time.time() - when) / 3600, 2)
    data["last_run_age_hours"] = age_h
    data["fresh"] = bool(data.get("index_version") and age_h is not None and age_h <= FRESH_HOURS
                         and "fail" not in str(last.get("status", "")).lower())
    summary = last.get("summary") or {}
    if isinstance(summary, dict) and not summary.get("airflow_run_url"):
        run_url = (summary.get("tags") or {}).get(tracking.tag("airflow_run_url")) if isinstance(summary.get("tags"), dict) else None
        if run_url:
            summary["airflow_run_url"] = run_url
    return data


def _parse(value: Any) -> float | None:
    """Seconds since the epoch of an ISO-ish timestamp (naive means UTC), or None."""
    import datetime as dt

    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


# --- behavior


def _spec_gate(settings: Settings) -> tuple[dict[str, float], str | None, Any]:
    try:
        from tandem.adapters.gate import spec_gate
        from tandem.serve.answer import load_spec

        spec = load_spec(settings)
        thresholds, primary = spec_gate(spec)
        return dict(thresholds), primary, spec
    except TandemError:
        raise
    except Exception as exc:  # noqa: BLE001 - the spec's module may not be there: the page still renders
        log.warning("could not read the spec's thresholds: %s", exc)
        return {}, None, None


def _eval_runs(settings: Settings, cl) -> tuple[str | None, list[dict[str, Any]]]:
    exp = cl.get_experiment_by_name(tracking.EXPERIMENT_EVAL)
    if exp is None:
        return None, []
    runs = cl.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=MAX_EVALS)
    out = []
    for run in runs:
        tags = {k: v for k, v in run.data.tags.items() if k.startswith(tracking.TAG_PREFIX)}
        out.append({
            "run_id": run.info.run_id,
            "name": run.info.run_name,
            "status": run.info.status,
            "started": _iso_ms(run.info.start_time),
            "url": tracking.run_url(settings, exp.experiment_id, run.info.run_id),
            "metrics": dict(sorted(run.data.metrics.items())),
            "tags": dict(sorted(tags.items())),
            "adapter": _adapter_label(tags.get(tracking.tag("adapter_version"))),
            "index_version": tracking.index_version_of(tags),
            "decision": tags.get(tracking.tag("decision")),
            "decision_reason": tags.get(tracking.tag("decision_reason")),
            "decision_kind": tags.get(tracking.tag("decision_kind")),
            "decided_at": _iso_z(tags.get(tracking.tag("decided_at"))),
            "airflow_run_url": tags.get(tracking.tag("airflow_run_url")),
        })
    return exp.experiment_id, out


def _iso_z(value: str | None) -> str | None:
    """An ISO time as UTC ``...Z`` (comparable as text with the MLflow times)."""
    ts = _parse(value)
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _adapter_label(value: str | None) -> str | None:
    from tandem.registry.versions import label, version_number

    if value in (None, ""):
        return None
    return label(value) if value in ("base", "none") or version_number(value) else value


def _iso_ms(ms: int | None) -> str | None:
    return None if not ms else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def diagnosis_mix(metrics: dict[str, float], tags: dict[str, str]) -> dict[str, float]:
    """{class: share} of the eval's failures (knowledge, behavior, capability) from its metrics or tags."""
    raw = tags.get(tracking.tag("diagnosis_mix"))
    if raw:
        try:
            mix = json.loads(raw)
            if isinstance(mix, dict):
                return {str(k): float(v) for k, v in mix.items()}
        except (ValueError, TypeError):
            pass
    mix = {}
    for key, value in metrics.items():
        for prefix in ("diagnosis.", "diagnosis_", "failures."):
            if key.startswith(prefix):
                mix[key[len(prefix):]] = value
    return dict(sorted(mix.items()))


def anti_flap(settings: Settings, spec) -> dict[str, Any]:
    """The anti-flap state from the behavior cadence (derived from MLflow there; never recomputed here)."""
    from tandem.behavior import antiflap

    state = antiflap.state(settings, spec)
    return state.as_dict() if hasattr(state, "as_dict") else dict(state)


def behavior(settings: Settings) -> dict[str, Any]:
    from tandem import registry

    cl = registry.client(settings)  # ServiceUnavailable (MLflow down) -> the section's error
    thresholds, primary, spec = _spec_gate(settings)
    versions = registry.list_versions(settings)[:MAX_VERSIONS]
    by_alias = {alias: next((v for v in versions if alias in v["aliases"]), None) for alias in registry.ALIASES}
    for row in versions:
        row["label"] = f"v{row['version']}"
    exp_id, evals = _eval_runs(settings, cl)
    for ev in evals:
        ev["primary"] = ev["metrics"].get(primary) if primary else None
        ev["diagnosis"] = diagnosis_mix(ev["metrics"], ev["tags"])
    last = evals[0] if evals else None
    trend = [{"started": ev["started"], "value": ev["primary"], "adapter": ev["adapter"], "url": ev["url"]}
             for ev in reversed(evals) if ev["primary"] is not None]
    section: dict[str, Any] = {
        "champion": by_alias.get(registry.CHAMPION),
        "base_by_choice": by_alias.get(registry.CHAMPION) is None and registry.base_by_choice(cl),
        "challenger": by_alias.get(registry.CHALLENGER),
        "previous": by_alias.get(registry.PREVIOUS),
        "versions": versions,
        "primary_metric": primary,
        "thresholds": thresholds,
        "spec_version": getattr(spec, "version", None),
        "evals": evals,
        "last_eval": last,
        "trend": trend,
        "experiment_url": _experiment_url(settings, exp_id),
    }
    section["anti_flap"] = _guard("anti_flap", lambda: anti_flap(settings, spec))
    training = _latest_training(settings, cl)
    section["last_training"] = training
    section["retrain"] = _retrain_summary(last, section["anti_flap"], training)
    return section


def _retrain_summary(last: dict | None, flap: dict, training: dict | None) -> dict[str, Any]:
    """Is a retrain pending, and why: the last eval's decision, the anti-flap state and the latest training run.

    Decisions (``tandem.behavior.decision``): retrain, hold, reindex, report, none.
    """
    if last is None:
        return {"pending": False, "why": "no eval has run yet (behavior_eval runs daily and on every new champion)"}
    decision = (last.get("decision") or "").lower()
    kind = last.get("decision_kind")
    said = (f"the last eval decided '{decision}'" + (f" ({kind})" if kind else "")) if decision \
        else "the last eval recorded no decision"
    if decision == "retrain":
        started = (training or {}).get("started")
        if started and last.get("decided_at") and started >= last["decided_at"]:
            state = training.get("status", "")
            if state == "RUNNING":
                return {"pending": True, "why": f"retraining now (training run started {started}); {said}"}
            return {"pending": False, "why": f"the triggered retrain ran ({state.lower()}, started {started}); {said}"}
        return {"pending": True, "why": f"lora_retrain was triggered and has not started yet; {said}"}
    why = said
    if decision == "hold" and isinstance(flap, dict) and flap.get("retrain_allowed_after"):
        why += f"; retrain allowed after {_iso_z(flap['retrain_allowed_after']) or flap['retrain_allowed_after']}"
    return {"pending": False, "why": why}


def _latest_training(settings: Settings, cl) -> dict | None:
    """The newest top-level run of ``tandem-lora-training`` (status, start, link), or None."""
    exp = cl.get_experiment_by_name(tracking.EXPERIMENT_TRAINING)
    if exp is None:
        return None
    for run in cl.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=10):
        if "mlflow.parentRunId" in run.data.tags:
            continue
        return {"run_id": run.info.run_id, "status": run.info.status, "started": _iso_ms(run.info.start_time),
                "name": run.info.run_name, "url": tracking.run_url(settings, exp.experiment_id, run.info.run_id),
                "airflow_run_url": run.data.tags.get(tracking.tag("airflow_run_url"))}
    return None


def _experiment_url(settings: Settings, exp_id: str | None) -> str | None:
    base = settings.mlflow_ui_url.rstrip("/")
    return f"{base}/#/experiments/{exp_id}" if base and exp_id else None


# --- Airflow DAG runs (read from Airflow's metadata DB when running inside the api-server)


def airflow_dag_runs(settings: Settings, limit: int = 5) -> dict[str, Any]:
    """Latest runs of Tandem's DAGs from the Airflow metadata DB (the api-server's own ORM session)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    out: dict[str, Any] = {}
    with create_session() as session:
        for dag_id in DAG_IDS:
            rows = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id)
                                   .order_by(DagRun.id.desc()).limit(limit)).all()
            out[dag_id] = {
                "url": f"{settings.airflow_url}/dags/{dag_id}",
                "runs": [{"run_id": r.run_id, "state": str(r.state), "run_type": str(r.run_type),
                          "started": r.start_date.strftime("%Y-%m-%dT%H:%M:%SZ") if r.start_date else None,
                          "ended": r.end_date.strftime("%Y-%m-%dT%H:%M:%SZ") if r.end_date else None,
                          "url": f"{settings.airflow_url}/dags/{dag_id}/runs/{quote(r.run_id, safe='')}"}
                         for r in rows],
            }
    return out


def links(settings: Settings) -> dict[str, Any]:
    return {
        "airflow": settings.airflow_url,
        "dags": {dag_id: f"{settings.airflow_url}/dags/{dag_id}" for dag_id in DAG_IDS},
        "mlflow": settings.mlflow_ui_url or None,
        "mlflow_model": (f"{settings.mlflow_ui_url.rstrip('/')}/#/models/{tracking.REGISTERED_MODEL}"
                         if settings.mlflow_ui_url else None),
    }


RECENT_ANSWERS = 8


def recent_answers(settings: Settings, limit: int = RECENT_ANSWERS) -> dict[str, Any]:
    """The newest traced answers, newest first: when, the question, the adapter and index version, what
    they cited with its location (``router.pdf p. 2``), valid or refused, and the trace's id."""
    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.trace_experiment)
    if experiment is None:
        return {"experiment": settings.trace_experiment, "items": []}
    traces = client.search_traces(locations=[experiment.experiment_id], max_results=limit, include_spans=False,
                                  order_by=["timestamp_ms DESC"])
    items = []
    for trace in traces:
        tags = trace.info.tags
        items.append({"trace_id": trace.info.trace_id, "at": _iso_ms(trace.info.timestamp_ms),
                      "question": _question(trace.info.request_preview), "adapter": tags.get("tandem.adapter"),
                      "index_version": tracking.index_version_of(tags),
                      "cited": [c for c in tags.get("tandem.cited", "").split("; ") if c],
                      "refused": tags.get("tandem.refused") == "true", "valid": tags.get("tandem.valid") == "true",
                      "source": tags.get("tandem.source")})
    return {"experiment": settings.trace_experiment, "items": items,
            "experiment_url": _experiment_url(settings, experiment.experiment_id)}


def _question(preview: str | None) -> str:
    """The question of a trace's request preview (``{"question": ...}``; the preview itself otherwise)."""
    try:
        value = json.loads(preview or "")
    except ValueError:
        return preview or ""
    return str(value.get("question", preview)) if isinstance(value, dict) else str(value)


def serving_state(settings: Settings, cache=None) -> dict[str, Any]:
    """The adapter cache that answers: the `tandem serve` process's (TANDEM_SERVE_URL), else this process's."""
    if not settings.serve_url:
        from tandem.serve import tracing

        return {**(cache.state() if cache is not None else {}), "tracing": tracing.tracer_for(settings).state()}
    import httpx

    url = settings.serve_url.rstrip("/")
    try:
        state = httpx.get(f"{url}/health", timeout=3.0).json()
    except (httpx.HTTPError, ValueError) as exc:
        return {"process": url, "error": f"tandem serve is not answering ({type(exc).__name__})"}
    state.pop("status", None)
    return {"process": url, **state}


def collect(settings: Settings, *, cache=None, dag_runs: Callable[[Settings], dict] | None = None) -> dict:
    """Everything the status page shows (see the module docstring).

    ``dag_runs``: how to read the Airflow DAG runs (the API passes ``airflow_dag_runs``: inside the api-server
    Airflow's ORM is configured); None leaves them out.
    """
    out = {
        "generated_at": _now_iso(),
        "knowledge": _guard("knowledge", lambda: knowledge(settings)),
        "behavior": _guard("behavior", lambda: behavior(settings)),
        "airflow": _guard("airflow", lambda: dag_runs(settings)) if dag_runs else None,
        "serving": {"refusal_min_similarity": settings.refusal_min_similarity,
                    "champion_check_seconds": settings.champion_check_seconds,
                    **serving_state(settings, cache)},
        "answers": _guard("answers", lambda: recent_answers(settings)),
        "links": links(settings),
    }
    return out
