"""MLflow conventions shared by every cadence: experiment names, tags, run links.

Names are fixed in docs/architecture.md: experiments ``tandem-knowledge``, ``tandem-behavior-eval``,
``tandem-lora-training``; registered model ``tandem-adapter``; tags prefixed ``tandem.``.
"""

from __future__ import annotations

import os
from typing import Any

from tandem import mlflow_auth
from tandem.config import Settings

EXPERIMENT_KNOWLEDGE = "tandem-knowledge"
EXPERIMENT_EVAL = "tandem-behavior-eval"
EXPERIMENT_TRAINING = "tandem-lora-training"
REGISTERED_MODEL = "tandem-adapter"
ALIAS_CHAMPION, ALIAS_CHALLENGER, ALIAS_PREVIOUS = "champion", "challenger", "previous"
TAG_PREFIX = "tandem."
ASSESSMENT_RATING = "user_rating"  # feedback on an answer trace: true up, false down (POST /api/feedback)
ASSESSMENT_CORRECTION = "corrected_answer"  # expectation on an answer trace: what it should have said


def tag(name: str) -> str:
    return name if name.startswith(TAG_PREFIX) else TAG_PREFIX + name


def tags(**values: Any) -> dict[str, str]:
    """``tags(index_version=3)`` -> ``{"tandem.index_version": "3"}``; None values are dropped."""
    return {tag(k): str(v) for k, v in values.items() if v is not None}


def index_version_of(tags: dict[str, str]) -> int | None:
    """The index version a run or trace was tagged with, as the integer it is everywhere else (MLflow tags
    are strings); ``tandem.index_release`` on answer traces recorded before the one name; None when absent."""
    value = tags.get(tag("index_version"), tags.get(tag("index_release")))
    return int(value) if value is not None and str(value).isdigit() else None


def use(settings: Settings, experiment: str):
    """Point MLflow at the configured server and experiment; returns the experiment."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow_auth.sign_in(settings)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    return mlflow.set_experiment(experiment)


def client(settings: Settings):
    """An MlflowClient for the configured server (tracking and registry), signed in as Tandem."""
    from mlflow import MlflowClient

    mlflow_auth.sign_in(settings)
    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def airflow_context_tags(settings: Settings) -> dict[str, str]:
    """Tags linking an MLflow run to the Airflow task running it (empty outside Airflow)."""
    import sys

    if "airflow.sdk" not in sys.modules:  # not in a task: importing the SDK would reconfigure logging to stdout
        return {}
    try:
        from airflow.sdk import get_current_context

        ctx = get_current_context()
    except Exception:  # noqa: BLE001 - not inside an Airflow task
        return {}
    dag_run = ctx.get("dag_run")
    if dag_run is None:
        return {}
    from urllib.parse import quote

    url = f"{settings.airflow_url}/dags/{dag_run.dag_id}/runs/{quote(dag_run.run_id, safe='')}"
    return tags(airflow_dag_id=dag_run.dag_id, airflow_run_id=dag_run.run_id, airflow_run_url=url)


def run_url(settings: Settings, experiment_id: str, run_id: str) -> str:
    base = settings.mlflow_ui_url.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base else run_id


def trace_url(settings: Settings, experiment_id: str, trace_id: str) -> str:
    """The MLflow UI's view of one trace (its experiment's Traces tab with the trace open)."""
    from urllib.parse import urlencode

    base = settings.mlflow_ui_url.rstrip("/")
    query = urlencode({"selectedEvaluationId": trace_id})
    return f"{base}/#/experiments/{experiment_id}/traces?{query}" if base else trace_id
