"""The decision after an eval: retrain (behavior), reindex or report (knowledge), or nothing.

- ``none``: every metric meets its threshold.
- ``retrain``: behavior metrics are under threshold, behavior failures dominate (``stale`` answers count as
  behavior: the adapter overrode its context, and the retrain's counterfactual rows train that away), and
  anti-flap allows:
  trigger ``lora_retrain`` with conf ``{reason, failing_metrics, eval_run_id}``.
- ``hold``: the same, but anti-flap holds the retrain (the reasons say which rule).
- ``reindex``: knowledge failures dominate and ``trigger_reindex_on_knowledge_failure`` is set.
- ``report``: no automatic action: knowledge dominates (reindex not configured), model capability
  dominates, no class dominates, or the eval was partial. The reason says what to look at.

The decision's ``kind`` is the class at fault: healthy, behavior, knowledge, model_capability or mixed.
Pure: the anti-flap history comes in as data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tandem.behavior import antiflap
from tandem.behavior.diagnosis import dominant_class
from tandem.behavior.metrics import (BEHAVIOR, BEHAVIOR_CLASS, CAPABILITY, FAILURE_CLASSES, KNOWLEDGE, METRIC_GROUPS,
                                     STALE)

RETRAIN, HOLD, REINDEX, REPORT, NONE = "retrain", "hold", "reindex", "report", "none"
HEALTHY, MIXED = "healthy", "mixed"
MAX_NAMED = 10  # missing documents named in the reason
MAX_CONF_REASON = 500  # lora_retrain's `reason` param allows 500 characters


@dataclasses.dataclass
class Decision:
    action: str
    kind: str
    reason: str
    failing_metrics: list[str]
    behavior_failing: bool  # a retrain candidate: counts toward the anti-flap streak
    missing_docs: dict[str, list[str]]  # knowledge failures: example id -> gold docs not retrieved
    anti_flap: dict | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def trigger_conf(self, eval_run_id: str) -> dict[str, Any]:
        """The conf of the triggered lora_retrain run."""
        reason = self.reason if len(self.reason) <= MAX_CONF_REASON else self.reason[:MAX_CONF_REASON - 3] + "..."
        return {"reason": reason, "failing_metrics": list(self.failing_metrics), "eval_run_id": eval_run_id}


def failing_metrics(spec, metrics: dict[str, float]) -> list[str]:
    """Metrics under their threshold (a metric missing from the eval counts as failing)."""
    return sorted(name for name, bound in spec.thresholds.items() if metrics.get(name, -1.0) < bound - 1e-12)


def _fmt(spec, metrics: dict[str, float], names: list[str]) -> str:
    return ", ".join(f"{n} {metrics.get(n, float('nan')):.2f} < {spec.thresholds[n]:.2f}" for n in names)


def missing_docs_summary(missing: dict[str, list[str]]) -> str:
    docs: dict[str, list[str]] = {}
    for ex_id, doc_ids in sorted(missing.items()):
        for doc in doc_ids:
            docs.setdefault(doc, []).append(ex_id)
    items = sorted(docs.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    shown = "; ".join(f"{doc} (for {', '.join(ids)})" for doc, ids in items[:MAX_NAMED])
    more = f"; and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
    return shown + more


def decide(spec, metrics: dict[str, float], counts: dict[str, int], *, missing_docs: dict[str, list[str]],
           history: antiflap.History | None, trigger_reindex: bool = False, partial: bool = False,
           now=None) -> Decision:
    """What to do after an eval (see the module docstring). ``history`` None: no anti-flap data (MLflow)."""
    failing = failing_metrics(spec, metrics)
    if not failing:
        return Decision(NONE, HEALTHY, "every metric meets its threshold", [], False, {})
    failures = {k: counts.get(k, 0) for k in FAILURE_CLASSES}
    # stale answers are behavior failures: they count with behavior when deciding what dominates
    merged = {**failures, BEHAVIOR_CLASS: failures[BEHAVIOR_CLASS] + failures[STALE], STALE: 0}
    dominant = dominant_class(merged, spec.dominance)
    mix = ", ".join(f"{k} {v}" for k, v in failures.items())
    behavior_failing = [m for m in failing if METRIC_GROUPS[m] == BEHAVIOR]
    kind = dominant or MIXED
    candidate = dominant == BEHAVIOR_CLASS and bool(behavior_failing) and not partial
    base = dict(failing_metrics=failing, behavior_failing=candidate, missing_docs=missing_docs)

    if partial:
        return Decision(REPORT, kind, f"partial eval (--limit): no action; {kind} at fault ({mix}); "
                                      f"under threshold: {_fmt(spec, metrics, failing)}", **base)
    if dominant == BEHAVIOR_CLASS:
        if not behavior_failing:
            return Decision(REPORT, kind, f"behavior failures dominate ({mix}) but every behavior metric meets "
                                          f"its threshold; under threshold: {_fmt(spec, metrics, failing)}", **base)
        if history is None:
            raise ValueError("a behavior decision needs the anti-flap history")
        verdict = antiflap.check(spec.anti_flap, history, current_failing=True, now=now)
        what = f"behavior failures dominate ({mix}); under threshold: {_fmt(spec, metrics, behavior_failing)}"
        if failures[STALE]:
            what += (f"; {failures[STALE]} stale answer(s) repeated an old fact over the context's new one: "
                     "the retrain's counterfactual rows train the adapter to copy from its context")
        if verdict.allowed:
            return Decision(RETRAIN, kind, f"{what}; anti-flap allows: retrain", anti_flap=verdict.as_dict(), **base)
        return Decision(HOLD, kind, f"{what}; anti-flap holds the retrain: {'; '.join(verdict.reasons)}",
                        anti_flap=verdict.as_dict(), **base)
    if dominant == KNOWLEDGE:
        named = missing_docs_summary(missing_docs)
        action = REINDEX if trigger_reindex else REPORT
        then = "triggering knowledge_reindex" if trigger_reindex else "check the sources and run the reindex"
        return Decision(action, kind, f"knowledge failures dominate ({mix}): retraining cannot fix missing "
                                      f"documents, not retraining; {then}. Not retrieved: {named}", **base)
    if dominant == CAPABILITY:
        return Decision(REPORT, kind, f"model-capability failures dominate ({mix}): the context and format were "
                                      "right but the content was wrong; retraining behavior will not fix it "
                                      "(consider a stronger base model); not retraining", **base)
    return Decision(REPORT, MIXED, f"no failure class dominates ({mix}, dominance {spec.dominance:g}); "
                                   f"under threshold: {_fmt(spec, metrics, failing)}; not retraining", **base)
