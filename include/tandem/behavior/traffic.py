"""``behavior_eval`` on live traffic: the answers users actually got, read back from their MLflow traces.

1. ``sample``: the traces of the last ``traffic.window_hours`` (spec) answered by one adapter version
   (tag ``tandem.adapter``), in the answer experiment (``trace_experiment``); at most ``traffic.sample`` of
   them, a seeded sample when more were served (``traffic.seed``), sorted by trace id.
2. ``score``: served answers have no gold data, so each is judged on what needs none. The answer path
   already judged it with the spec's scorer and tagged the verdicts it failed (``tandem.failed``): JSON,
   schema, citations of shown documents, the style rules, ``values_grounded``. Plus two traffic rates:
   ``answered`` (not refused for lack of a close enough document) and ``not_down_rated`` (of the answers
   users rated, the share not rated down: the ``user_rating`` feedback of ``POST /api/feedback``).
   Each trace gets a class: *knowledge* (refused: no document close enough), *behavior* (a contract or
   style verdict failed), *model_capability* (only ``values_grounded`` failed), else *pass*.
3. The decision is the eval set's (``tandem.behavior.decision``) with the spec's ``traffic.thresholds``:
   the same diagnosis, the same anti-flap history (on the traffic evals of that version), so a behavior
   drop routes to ``lora_retrain`` and a knowledge-dominated one to the reindex, never to a retrain.
4. Fewer than ``traffic.min_traces`` traces in the window is "not enough traffic": a skipped decision that
   says the counts, never a pass or a fail.

The eval is an MLflow run in ``tandem-behavior-eval`` (tag ``tandem.eval_kind=traffic``), linked to the
traces it scored, with their count, the window and the per-trace table (``traffic_table.json``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import re
from typing import Any

from tandem import tracking
from tandem.behavior.decision import Decision
from tandem.behavior.metrics import BEHAVIOR_CLASS, CAPABILITY, FAILURE_CLASSES, KNOWLEDGE, PASS, REFERENCE_FREE
from tandem.config import Settings
from tandem.errors import UserError

log = logging.getLogger(__name__)

TRAFFIC_DIGEST = "traffic"  # the eval-set digest tag of traffic evals: their own anti-flap streak
TABLE_FILE = "traffic_table.json"
SKIP = "skip"
NOT_ENOUGH = "not_enough_traffic"
MAX_FETCH = 5000  # traces read from one window at most (newest first) before sampling
FEEDBACK_NAME = tracking.ASSESSMENT_RATING
_LABEL = re.compile(r"^(base|v[0-9]{1,9})$")


@dataclasses.dataclass
class Row:
    trace_id: str
    refused: bool
    failed: list[str]
    rating: bool | None  # True up, False down, None not rated
    index_version: int | None

    @property
    def diagnosis(self) -> str:
        if self.refused:
            return KNOWLEDGE
        if any(v != "values_grounded" for v in self.failed):
            return BEHAVIOR_CLASS
        return CAPABILITY if self.failed else PASS


def trace_label(adapter_version: str) -> str:
    """The trace tag of an adapter: ``base`` or ``v<version>``."""
    label = "base" if adapter_version == "base" else f"v{adapter_version}"
    if not _LABEL.match(label):
        raise UserError(f"adapter {adapter_version!r} is not 'base' or a version number",
                        fix="pass the version the eval resolved (for example 3)")
    return label


def _rating(info) -> bool | None:
    ratings = [a for a in (getattr(info, "assessments", None) or []) if a.name == FEEDBACK_NAME]
    if not ratings:
        return None
    latest = max(ratings, key=lambda a: a.create_time_ms or 0)
    return bool(latest.value)


def fetch(settings: Settings, adapter_version: str, *, since: dt.datetime) -> list[Row]:
    """The traces answered by ``adapter_version`` since ``since`` (newest first, at most MAX_FETCH)."""
    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.trace_experiment)
    if experiment is None:
        return []
    since_ms = int(since.timestamp() * 1000)
    where = f"trace.timestamp_ms > {since_ms} AND tags.`tandem.adapter` = '{trace_label(adapter_version)}'"
    rows: list[Row] = []
    token = None
    while len(rows) < MAX_FETCH:
        page = client.search_traces(locations=[experiment.experiment_id], filter_string=where,
                                    max_results=min(500, MAX_FETCH - len(rows)), include_spans=False,
                                    order_by=["timestamp_ms DESC"], page_token=token)
        for trace in page:
            tags = trace.info.tags
            failed = [v for v in tags.get("tandem.failed", "").split(",") if v in REFERENCE_FREE]
            rows.append(Row(trace.info.trace_id, tags.get("tandem.refused") == "true", failed, _rating(trace.info),
                            tracking.index_version_of(tags)))
        token = page.token
        if not token:
            break
    return rows


def sample(rows: list[Row], size: int, seed: int) -> list[Row]:
    """At most ``size`` rows, a seeded sample when there are more; sorted by trace id (stable)."""
    ordered = sorted(rows, key=lambda r: r.trace_id)
    if len(ordered) <= size:
        return ordered
    return sorted(random.Random(seed).sample(ordered, size), key=lambda r: r.trace_id)


def score(rows: list[Row]) -> tuple[dict[str, float], dict[str, int]]:
    """(metrics, counts per diagnosis class) of the sampled traces (see the module doc)."""
    generated = [r for r in rows if not r.refused]
    metrics: dict[str, float] = {}
    if generated:
        for verdict in REFERENCE_FREE:
            metrics[verdict] = sum(verdict not in r.failed for r in generated) / len(generated)
    if rows:
        metrics["answered"] = len(generated) / len(rows)
    rated = [r for r in rows if r.rating is not None]
    if rated:
        metrics["not_down_rated"] = sum(r.rating is not False for r in rated) / len(rated)
    counts = {k: 0 for k in (*FAILURE_CLASSES, PASS)}
    for r in rows:
        counts[r.diagnosis] += 1
    return {k: round(v, 4) for k, v in metrics.items()}, counts


def traffic_spec(spec, metrics: dict[str, float]):
    """The spec the decision uses: the traffic thresholds (those whose metric the window has)."""
    thresholds = {k: v for k, v in spec.traffic.thresholds if k in metrics}
    return dataclasses.replace(spec, thresholds=thresholds)


def not_enough(summary: dict[str, Any], min_traces: int) -> Decision:
    return Decision(SKIP, NOT_ENOUGH, f"not enough traffic: {summary['n_in_window']} trace(s) of adapter "
                                      f"{summary['adapter']} in the last {summary['window_hours']:g} h, fewer than "
                                      f"traffic.min_traces {min_traces}; no decision", [], False, {})


SEVERITY = ("retrain", "reindex", "hold", "report", "none", SKIP)  # most severe first


def combine(decided: list[tuple[Decision, dict[str, Any]]]) -> tuple[Decision, dict[str, Any]]:
    """With ``source: both``, the more severe of the eval set's and the traffic's decisions (and its summary)."""
    return min(decided, key=lambda pair: SEVERITY.index(pair[0].action))


def decide_sources(settings: Settings, summary: dict | None, traffic_summary: dict | None,
                   ) -> tuple[Decision, dict[str, Any], str]:
    """Decide and record each eval of the run (eval set, traffic); (the decision that acts, its summary, the
    scorecards to print)."""
    from tandem.behavior import eval_run
    from tandem.behavior.report import scorecard

    decided, cards = [], []
    if summary is not None:
        decided.append((eval_run.decide_and_record(settings, summary), summary))
        cards.append(scorecard(summary, decided[-1][0]))
    if traffic_summary is not None:
        decided.append((decide_and_record(settings, traffic_summary), traffic_summary))
        cards.append(card(traffic_summary, decided[-1][0]))
    decision, chosen = combine(decided)
    if len(decided) > 1:
        cards.append(f"acting on the {chosen.get('kind', 'eval set')} decision: {decision.action}")
    return decision, chosen, "\n\n".join(cards)


def resolve_source(spec, requested: str | None) -> str:
    """The run's ``source`` param, or the spec's ``traffic.source`` when the run says ``spec`` (or nothing)."""
    from tandem.behavior.spec import TRAFFIC_SOURCES

    if requested in (None, "", "spec"):
        return spec.traffic.source
    if requested not in TRAFFIC_SOURCES:
        raise UserError(f"source {requested!r} is not one of spec, {', '.join(TRAFFIC_SOURCES)}",
                        fix="trigger behavior_eval with source eval_set, traffic, both, or spec (the spec's choice)")
    return requested


def card(summary: dict[str, Any], decision: Decision) -> str:
    """The eval run's description (markdown): the window, the rates, the classes, the decision."""
    lines = [f"**Traffic eval** of adapter {summary['adapter']}: {summary['n']} of {summary['n_in_window']} "
             f"trace(s) from {summary['window_start']} to {summary['window_end']} (seed {summary['seed']})", ""]
    lines += [f"- {name}: {value:.3f}" for name, value in sorted(summary["metrics"].items())]
    lines += ["", "classes: " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items()), "",
              f"**Decision: {decision.action}** ({decision.kind}): {decision.reason}"]
    return "\n".join(lines)


# --- the tracked run


def run(settings: Settings, *, adapter: str, source: str = "cli", now: dt.datetime | None = None) -> dict[str, Any]:
    """Sample, score and track one traffic eval of ``adapter`` ("base" or a version); returns its summary."""
    import mlflow

    from tandem.behavior.spec import load_spec

    spec = load_spec(settings.spec_path)
    tr = spec.traffic
    end = now or dt.datetime.now(dt.timezone.utc)
    start = end - dt.timedelta(hours=tr.window_hours)
    in_window = fetch(settings, adapter, since=start)
    rows = sample(in_window, tr.sample, tr.seed)
    metrics, counts = score(rows)
    log.info("traffic eval of adapter %s: %d trace(s) in the window, %d scored; %s", adapter, len(in_window),
             len(rows), ", ".join(f"{k} {v}" for k, v in metrics.items()) or "nothing to score")
    skipped = len(in_window) < tr.min_traces
    exp = tracking.use(settings, tracking.EXPERIMENT_EVAL)
    tags = tracking.tags(adapter_version=adapter, spec_version=spec.version, spec_digest=spec.digest,
                         eval_set_digest=TRAFFIC_DIGEST, eval_kind="traffic", eval_source=source,
                         eval_partial="false", traffic_skipped=str(skipped).lower(),
                         traffic_window_start=start.isoformat(timespec="seconds"),
                         traffic_window_end=end.isoformat(timespec="seconds")) | tracking.airflow_context_tags(settings)
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=f"traffic eval {trace_label(adapter)}") as mrun:
        mlflow.set_tags(tags)
        mlflow.log_params({"window_hours": tr.window_hours, "sample": tr.sample, "seed": tr.seed,
                           "min_traces": tr.min_traces, "trace_experiment": settings.trace_experiment})
        mlflow.log_metrics({**metrics, "n_traces": len(rows), "n_in_window": len(in_window),
                            **{f"n_{k}": v for k, v in counts.items()}})
        mlflow.log_dict({"traces": [dataclasses.asdict(r) | {"diagnosis": r.diagnosis} for r in rows]}, TABLE_FILE)
    client = tracking.client(settings)
    ids = [r.trace_id for r in rows]
    for i in range(0, len(ids), 100):  # MLflow links at most 100 traces per call
        client.link_traces_to_run(ids[i:i + 100], mrun.info.run_id)
    return {"run_id": mrun.info.run_id, "experiment_id": exp.experiment_id,
            "run_url": tracking.run_url(settings, exp.experiment_id, mrun.info.run_id), "kind": "traffic",
            "adapter": adapter, "eval_set_digest": TRAFFIC_DIGEST, "partial": False, "skipped": skipped,
            "n": len(rows), "n_in_window": len(in_window), "window_hours": tr.window_hours,
            "window_start": start.isoformat(timespec="seconds"), "window_end": end.isoformat(timespec="seconds"),
            "seed": tr.seed, "metrics": metrics, "counts": counts, "thresholds": dict(tr.thresholds),
            "missing_docs": {r.trace_id: ["no document close enough to the question"] for r in rows if r.refused},
            "index_versions": sorted({r.index_version for r in rows if r.index_version is not None})}


def decide_and_record(settings: Settings, summary: dict[str, Any], *, now: dt.datetime | None = None) -> Decision:
    """The eval set's decision on the traffic thresholds; "not enough traffic" records no decision at all
    (it neither breaks nor extends a failing streak)."""
    from tandem.behavior import eval_run
    from tandem.behavior.spec import load_spec

    spec = load_spec(settings.spec_path)
    if summary["skipped"]:
        decision = not_enough(summary, spec.traffic.min_traces)
        tracking.client(settings).set_tag(summary["run_id"], "mlflow.note.content", card(summary, decision))
        log.info("traffic eval %s: %s", summary["run_id"], decision.reason)
        return decision
    return eval_run.decide_and_record(settings, summary, now=now, spec=traffic_spec(spec, summary["metrics"]),
                                      card=card)
