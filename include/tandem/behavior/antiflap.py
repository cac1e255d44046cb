"""Anti-flap: retrain only after N failing evals in a row, H hours after the last retrain, M retrains a week.

The state is derived from MLflow, never kept in a store of its own:

- the failing streak: the latest evals of the same adapter version on the same eval set (its digest) in
  ``tandem-behavior-eval`` whose ``tandem.behavior_failing`` tag is ``true`` (complete evals with a recorded
  decision only; partial ``--limit`` evals do not count; a new champion or a changed eval set starts over);
- retrains: top-level runs in ``tandem-lora-training`` (their start time), plus evals that decided
  ``retrain`` when no training run has started since (a triggered retrain still queued).

``check`` is pure: it takes the policy, that history and the clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

from tandem import tracking

log = logging.getLogger(__name__)

WEEK = dt.timedelta(days=7)
TAG_FAILING = tracking.tag("behavior_failing")
TAG_DECISION = tracking.tag("decision")
TAG_DECIDED_AT = tracking.tag("decided_at")
TAG_ADAPTER = tracking.tag("adapter_version")
TAG_PARTIAL = tracking.tag("eval_partial")
TAG_EVAL_SET = tracking.tag("eval_set_digest")
MAX_RUNS = 200


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class History:
    """What anti-flap needs to know about the past (this eval excluded)."""

    failing_streak: int  # failing evals in a row, most recent first, of the same adapter version
    retrain_times: tuple[dt.datetime, ...]  # retrain starts (or queued triggers), newest first
    streak_run_ids: tuple[str, ...] = ()

    @property
    def last_retrain_at(self) -> dt.datetime | None:
        return self.retrain_times[0] if self.retrain_times else None


@dataclasses.dataclass(frozen=True)
class Verdict:
    allowed: bool
    reasons: tuple[str, ...]  # why not (empty when allowed)
    consecutive_failures: int  # this eval included when it fails
    hours_since_last_retrain: float | None
    retrains_last_week: int
    retrain_allowed_after: str | None  # ISO time when the time rules stop blocking (None: they don't)
    policy: dict

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"reasons": list(self.reasons)}


def check(policy, history: History, *, current_failing: bool, now: dt.datetime | None = None) -> Verdict:
    """Apply the policy (``spec.anti_flap``) to the history; ``current_failing``: this eval is a retrain candidate."""
    now = _utc(now or dt.datetime.now(dt.timezone.utc))
    streak = history.failing_streak + (1 if current_failing else 0)
    recent = [t for t in history.retrain_times if now - _utc(t) < WEEK]
    last = history.last_retrain_at
    # a retrain stamped a moment after ``now`` (another worker's clock, or a trigger queued while this eval ran)
    # happened just now: 0 h, never negative (with min_hours_between_retrains 0, -0.0 < 0 held a retrain)
    hours = None if last is None else max(0.0, (now - _utc(last)).total_seconds() / 3600)
    reasons = []
    if streak < policy.consecutive_failures:
        reasons.append(f"{streak} failing eval(s) in a row, the policy needs {policy.consecutive_failures}")
    after: list[dt.datetime] = []
    if hours is not None and hours < policy.min_hours_between_retrains:
        reasons.append(f"last retrain {hours:.1f} h ago, the policy needs {policy.min_hours_between_retrains:g} h")
        after.append(_utc(last) + dt.timedelta(hours=policy.min_hours_between_retrains))
    if len(recent) >= policy.max_retrains_per_week:
        reasons.append(f"{len(recent)} retrain(s) in the last 7 days, the policy allows {policy.max_retrains_per_week}")
        if policy.max_retrains_per_week > 0:
            # the oldest of the newest M retrains must leave the 7-day window
            after.append(_utc(sorted(recent, reverse=True)[policy.max_retrains_per_week - 1]) + WEEK)
    allowed_after = max(after).isoformat(timespec="seconds") if after and policy.max_retrains_per_week > 0 else None
    return Verdict(allowed=current_failing and not reasons, reasons=tuple(reasons), consecutive_failures=streak,
                   hours_since_last_retrain=None if hours is None else round(hours, 2),
                   retrains_last_week=len(recent), retrain_allowed_after=allowed_after,
                   policy=dataclasses.asdict(policy))


# --- the history, from MLflow


def _experiment_id(client, name: str) -> str | None:
    exp = client.get_experiment_by_name(name)
    return None if exp is None else exp.experiment_id


def _ms_to_dt(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


def _decided_at(run) -> dt.datetime:
    raw = run.data.tags.get(TAG_DECIDED_AT)
    if raw:
        try:
            return _utc(dt.datetime.fromisoformat(raw))
        except ValueError:
            pass
    return _ms_to_dt(run.info.end_time or run.info.start_time)


def history(client, *, adapter_version: str, eval_set_digest: str | None = None,
            exclude_run_id: str | None = None) -> History:
    """Read the failing streak of ``adapter_version`` ("base" or a version) on the eval set with
    ``eval_set_digest`` (None: any eval set), and the retrains, from MLflow."""
    streak_ids: list[str] = []
    eval_exp = _experiment_id(client, tracking.EXPERIMENT_EVAL)
    triggered: list[dt.datetime] = []
    if eval_exp is not None:
        where = f"tags.`{TAG_ADAPTER}` = '{_quote(adapter_version)}'"
        if eval_set_digest:
            where += f" and tags.`{TAG_EVAL_SET}` = '{_quote(eval_set_digest)}'"
        runs = client.search_runs([eval_exp], filter_string=where,
                                  order_by=["attributes.start_time DESC"], max_results=MAX_RUNS)
        counting = True
        for run in runs:
            tags = run.data.tags
            if run.info.run_id == exclude_run_id or TAG_DECISION not in tags or tags.get(TAG_PARTIAL) == "true":
                continue
            if counting and tags.get(TAG_FAILING) == "true":
                streak_ids.append(run.info.run_id)
            else:
                counting = False
        decided = client.search_runs([eval_exp], filter_string=f"tags.`{TAG_DECISION}` = 'retrain'",
                                     order_by=["attributes.start_time DESC"], max_results=MAX_RUNS)
        triggered = [_decided_at(run) for run in decided if run.info.run_id != exclude_run_id]
    starts: list[dt.datetime] = []
    train_exp = _experiment_id(client, tracking.EXPERIMENT_TRAINING)
    if train_exp is not None:
        runs = client.search_runs([train_exp], order_by=["attributes.start_time DESC"], max_results=MAX_RUNS)
        starts = [_ms_to_dt(run.info.start_time) for run in runs if "mlflow.parentRunId" not in run.data.tags]
    # a triggered retrain counts until a training run has started after it (then that run is the retrain)
    pending = [t for t in triggered if not any(s >= t for s in starts)]
    times = tuple(sorted(starts + pending, reverse=True))
    return History(failing_streak=len(streak_ids), retrain_times=times, streak_run_ids=tuple(streak_ids))


def _quote(value: str) -> str:
    return str(value).replace("'", "")


def state(settings, spec, *, adapter_version: str | None = None) -> Verdict:
    """The anti-flap state of the live adapter as the next failing eval would see it (for status pages)."""

    if adapter_version is None:
        from tandem import registry

        adapter_version = registry.resolve(settings, "champion", download=False, check_base=False).version or "base"
    from pathlib import Path

    from tandem.behavior.evalset import file_digest

    digest = file_digest(settings.eval_set_path) if Path(settings.eval_set_path).expanduser().is_file() else None
    client = tracking.client(settings)
    return check(spec.anti_flap, history(client, adapter_version=adapter_version, eval_set_digest=digest),
                 current_failing=True)
