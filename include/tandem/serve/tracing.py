"""Every answer an MLflow trace: what was asked, what was retrieved from which release, which adapter answered,
and whether the answer kept the contract. A reviewer opens one real answer in the MLflow UI (experiment
``tandem-serving``, setting ``trace_experiment``) and filters on its tags.

One trace per answer, built when the answer is ready from the stages' measured start times and durations:

    tandem.answer (CHAIN)       inputs: the question; outputs: the contract object
      retrieval (RETRIEVER)     the pinned index release; each chunk's id, doc id, score, vector similarity
      prompt (PARSER)           the chunks and doc ids shown to the model
      generation (LLM)          adapter, output tokens, seconds, batch size, the raw output
      validation (EVALUATOR)    valid, violations, values_grounded, refused, confidence

Tags: ``tandem.index_version``, ``tandem.cited``, ``tandem.adapter`` (``v3`` or ``base``), ``tandem.adapter_ref`` (what was
asked for: ``champion``, ``base``, ``7``), ``tandem.spec_version``, ``tandem.latency_ms``, ``tandem.valid``,
``tandem.refused``, ``tandem.source`` (``serve``, ``plugin``, ``cli``).

Never in the answer's way: the trace goes to MLflow through MLflow's asynchronous export (a bounded queue
and worker threads), so an answer returns whether MLflow is slow, stopped or refusing. What MLflow could not
save is counted: MLflow's exporter reports each lost trace only as a log line, so a log handler on its two
export loggers counts them, beside the traces Tandem could not even build. ``/health``, the status page and
the log show ``recorded`` and ``dropped``.

``trace_redact_text`` keeps raw text out of MLflow: the question, the answer and the model output become
``{"sha256": ..., "chars": n}``. Every text field is cut at ``trace_field_max_chars``.
"""

from __future__ import annotations

import logging
import collections
import threading
import time
from typing import Any

from tandem.config import Settings
from tandem.serve import trace_spans

log = logging.getLogger(__name__)

# MLflow's exporter and its async queue: each message below is one trace that did not reach the server
EXPORT_LOGGERS = ("mlflow.tracing.export.mlflow_v3", "mlflow.tracing.export.async_export_queue")
LOST_TRACE_MESSAGES = ("Failed to send trace", "trace was NOT saved", "trace will be discarded")
RETRY_EXPERIMENT_SECONDS = 30
FIRST_LOOKUP_WAIT_SECONDS = 2.0  # the first answers of a process wait this long at most for the experiment


class _LostTraces(logging.Handler):
    """Counts MLflow's "trace not saved" log records for the tracer that installed it."""

    def __init__(self, tracer: "Tracer"):
        super().__init__(level=logging.WARNING)
        self.tracer = tracer

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(m in message for m in LOST_TRACE_MESSAGES):
            self.tracer.count_dropped(1, "MLflow could not save it")


class Tracer:
    """Records answers as traces in one experiment; thread-safe; one per process (``tracer_for``)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.enabled = bool(settings.trace_answers)
        self.recorded = 0
        self.dropped = 0
        self.last_drop: str | None = None
        self._lock = threading.Lock()
        self._experiment_id: str | None = None
        self._next_lookup = 0.0
        self._looking = False
        self._looked_up = threading.Event()  # set after the first lookup, found or not
        self._client = None
        self._recent: collections.deque[str] = collections.deque(maxlen=1000)  # ids this process recorded
        if self.enabled:
            handler = _LostTraces(self)
            for name in EXPORT_LOGGERS:
                logging.getLogger(name).addHandler(handler)

    def state(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "experiment": self.settings.trace_experiment,
                "ready": self._experiment_id is not None,
                "recorded": self.recorded, "dropped": self.dropped, "last_drop": self.last_drop,
                "redact_text": bool(self.settings.trace_redact_text)}

    def count_dropped(self, n: int, why: str) -> None:
        with self._lock:
            self.dropped += n
            self.last_drop = why
            total = self.dropped
        if total == 1 or total % 100 == 0:
            log.warning("answer traces dropped: %d so far (last: %s); answers are not affected", total, why)

    # --- the experiment (looked up off the answer's path: MLflow down must not hold a request)

    def experiment_id(self, *, wait: bool = False) -> str | None:
        """The experiment's id; looked up in the background (``wait``: here) and retried every 30 s."""
        if self._experiment_id is not None:
            return self._experiment_id
        if wait:
            self._lookup()
            return self._experiment_id
        with self._lock:
            start = not self._looking and time.monotonic() >= self._next_lookup
            self._looking = self._looking or start
        if start:
            threading.Thread(target=self._lookup, name="tandem-trace-experiment", daemon=True).start()
        return None

    def _experiment_for_answer(self, wait: bool) -> str | None:
        found = self.experiment_id(wait=wait)
        if found is None and not self._looked_up.is_set():  # a process's first answers: the lookup is under way
            self._looked_up.wait(FIRST_LOOKUP_WAIT_SECONDS)
            found = self._experiment_id
        return found

    def _lookup(self) -> None:
        try:
            import mlflow

            from tandem import tracking

            self._client = tracking.client(self.settings)
            mlflow.set_tracking_uri(self.settings.mlflow_uri)  # where MLflow's exporter sends the traces
            name = self.settings.trace_experiment
            found = self._client.get_experiment_by_name(name)
            self._experiment_id = found.experiment_id if found else self._client.create_experiment(name)
        except Exception as exc:  # noqa: BLE001 - MLflow down: answers go on, traces are counted as dropped
            log.warning("answer traces: experiment %r not reachable (%s); retrying in %ds",
                        self.settings.trace_experiment, exc, RETRY_EXPERIMENT_SECONDS)
        finally:
            with self._lock:
                self._looking = False
                self._next_lookup = time.monotonic() + RETRY_EXPERIMENT_SECONDS
            self._looked_up.set()

    # --- recording

    def record(self, ans, *, started_ns: int, requested: str | None, source: str, wait: bool = False) -> str | None:
        """Trace ``ans`` (a ``tandem.serve.answer.Answer``); returns the trace id, or None if it was dropped."""
        if not self.enabled:
            return None
        experiment_id = self._experiment_for_answer(wait)
        if experiment_id is None:
            self.count_dropped(1, f"experiment {self.settings.trace_experiment!r} not reachable yet")
            return None
        try:
            trace_id = trace_spans.write(self._client, self.settings, ans, experiment_id=experiment_id,
                                         started_ns=started_ns, requested=requested, source=source)
        except Exception as exc:  # noqa: BLE001 - a trace must never break an answer
            self.count_dropped(1, f"{type(exc).__name__}: {exc}")
            return None
        with self._lock:
            self.recorded += 1
            self._recent.append(trace_id)
        return trace_id

    def recently_recorded(self, trace_id: str) -> bool:
        """Whether this process recorded ``trace_id`` lately (it may still be on its way to MLflow)."""
        with self._lock:
            return trace_id in self._recent

    def flush(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds) for the queued traces to reach MLflow; False if they had not."""
        if not self.enabled or self._experiment_id is None:
            return True
        import mlflow

        done = threading.Event()

        def _flush() -> None:
            mlflow.flush_trace_async_logging(terminate=False)
            done.set()

        threading.Thread(target=_flush, name="tandem-trace-flush", daemon=True).start()
        if not done.wait(timeout):
            log.warning("answer traces still on their way to MLflow after %ss", timeout)
            return False
        return True


_tracers: dict[tuple, Tracer] = {}
_tracers_lock = threading.Lock()


def tracer_for(settings: Settings) -> Tracer:
    """The process's tracer for these settings' MLflow and experiment (counters shared by all routes)."""
    key = (settings.mlflow_uri, settings.trace_experiment, settings.trace_answers, settings.trace_redact_text,
           settings.trace_field_max_chars)
    with _tracers_lock:
        if key not in _tracers:
            _tracers[key] = Tracer(settings)
        return _tracers[key]


def answer(settings: Settings, question: str, *, source: str, k: int | None = None, adapter: str | None = None,
           cache=None, wait: bool = False, **kwargs) -> tuple[Any, str | None]:
    """The answer path (``tandem.serve.answer.answer``), traced: (the Answer, its trace id or None)."""
    from tandem.serve.answer import answer as answer_path

    started_ns = time.time_ns()
    result = answer_path(settings, question, k=k, adapter=adapter or "champion", cache=cache, **kwargs)
    trace_id = tracer_for(settings).record(result, started_ns=started_ns, requested=adapter or "champion",
                                           source=source, wait=wait)
    result.trace_id = trace_id
    return result, trace_id
