"""``POST /api/feedback``: a user's verdict on one answer, recorded as MLflow assessments on its trace.

    {"trace_id": "tr-...", "rating": "up" | "down", "comment": "...", "corrected_answer": "..."}

``rating`` becomes the feedback ``user_rating`` (true: up) with the comment as its rationale; a corrected
answer becomes the expectation ``corrected_answer`` (what the behavior cadence can train on). The source is
HUMAN, with the user's name where the route knows it. With ``trace_redact_text`` the comment and the
correction are stored as their hash and length, like the answer itself.
"""

from __future__ import annotations

import time
from typing import Any

from tandem import tracking
from tandem.config import Settings
from tandem.errors import NotFound, ServiceUnavailable
from tandem.serve.trace_spans import text_field

FEEDBACK_NAME = tracking.ASSESSMENT_RATING
EXPECTATION_NAME = tracking.ASSESSMENT_CORRECTION
PENDING_WAIT_SECONDS = 10  # a trace this process just recorded may still be on its way to MLflow


def _find_trace(settings: Settings, trace_id: str, *, pending: bool) -> None:
    """Raise NotFound unless MLflow holds ``trace_id`` (waiting a little for one still being exported)."""
    from mlflow.exceptions import MlflowException

    client = tracking.client(settings)
    deadline = time.monotonic() + (PENDING_WAIT_SECONDS if pending else 0)
    while True:
        try:
            client.get_trace(trace_id, display=False)
            return
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                raise ServiceUnavailable(f"MLflow at {settings.mlflow_uri} could not be asked for trace {trace_id}: "
                                         f"{exc.message}", fix="check that MLflow is up (`make status`)") from None
        except Exception as exc:  # noqa: BLE001 - connection refused, timeouts: MLflow is down
            raise ServiceUnavailable(f"MLflow at {settings.mlflow_uri} is not answering ({type(exc).__name__})",
                                     fix="check that MLflow is up (`make status`), then send the feedback again") from None
        if time.monotonic() >= deadline:
            raise NotFound(f"trace_id {trace_id!r}: no such answer trace in MLflow",
                           fix="send the trace_id of an answer (its `trace_id` field, or the X-Tandem-Trace header)")
        time.sleep(0.5)


def record(settings: Settings, body, *, user: str | None = None) -> dict[str, Any]:
    """Log ``body`` (a FeedbackRequest) on its trace; returns what was recorded."""
    import mlflow
    from mlflow.entities import AssessmentSource

    from tandem.serve import tracing

    tracer = tracing.tracer_for(settings)
    tracer.experiment_id(wait=True)  # signs in and points MLflow at the server
    _find_trace(settings, body.trace_id, pending=tracer.recently_recorded(body.trace_id))
    source = AssessmentSource(source_type="HUMAN", source_id=user or "tandem-serve")
    comment = text_field(settings, body.comment)
    feedback = mlflow.log_feedback(trace_id=body.trace_id, name=FEEDBACK_NAME, value=body.rating == "up",
                                   source=source, rationale=None if comment is None else str(comment))
    recorded = {"trace_id": body.trace_id, "rating": body.rating, "feedback_id": feedback.assessment_id}
    if body.corrected_answer is not None:
        expectation = mlflow.log_expectation(trace_id=body.trace_id, name=EXPECTATION_NAME,
                                             value=text_field(settings, body.corrected_answer), source=source)
        recorded["expectation_id"] = expectation.assessment_id
    return recorded
