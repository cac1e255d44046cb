"""The promotion gate: does the candidate go live?

A candidate is promoted only if
1. it meets every threshold of the behavior spec (``thresholds: {metric: minimum}``),
2. it beats the incumbent (the champion, or the base model when there is no champion yet) on the spec's
   primary metric by at least ``promotion_margin``, and
3. no other metric the spec gates (its ``thresholds``) drops more than ``regression_tolerance`` below the
   incumbent's, and
4. it protects content: on ``answer_correct``, ``no_false_refusal`` and ``faithful`` (``BASE_GUARDED``) it is
   not below the base model by more than the spec's ``gate.base_tolerance``, whether or not the spec sets a
   threshold on them. The adapter learns behavior; it may not make answers less correct than the base model.

Otherwise it becomes ``challenger`` and the reasons are recorded as the tag ``tandem.gate_reason``. Metrics
the spec does not gate are compared too: a regression there does not block, but the reason names it
("not gated, regressed: ..."), so a reviewer sees it on the version in MLflow.
Pure functions: nothing here touches MLflow or Airflow.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Metrics where lower is better (all others: higher is better).
LOWER_IS_BETTER = frozenset({"latency_p50_s", "latency_p95_s", "latency_s", "hallucination_rate", "error_rate"})


@dataclasses.dataclass(frozen=True)
class Decision:
    promote: bool
    checks: tuple[dict, ...]  # {"check", "metric", "value", "bound", "ok"}
    primary: str

    @property
    def failed(self) -> list[dict]:
        return [c for c in self.checks if not c["ok"]]

    @property
    def ungated_regressions(self) -> list[dict]:
        return [c for c in self.checks if c["check"] == "regression" and not c.get("gated", True) and c["regressed"]]

    @property
    def reason(self) -> str:
        if self.promote:
            ok = next((c for c in self.checks if c["check"] == "margin"), None)
            text = (f"passed the gate: {self.primary} {ok['value']:.3f} >= {ok['bound']:.3f}" if ok
                    else "passed the gate")
        else:
            text = "; ".join(_describe(c) for c in self.failed)
        noted = self.ungated_regressions
        if noted:
            text += "; not gated, regressed: " + ", ".join(
                f"{c['metric']} {c['value']:.3f} (incumbent {c['incumbent']:.3f})" for c in noted)
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "primary": self.primary, "reason": self.reason, "checks": list(self.checks)}


def _describe(check: dict) -> str:
    value = "missing" if check["value"] is None else f"{check['value']:.3f}"
    op = "<=" if check["metric"] in LOWER_IS_BETTER else ">="
    if check["check"] == "base":
        return (f"{check['metric']} {value} fell below the base model's {check['base']:.3f} by more than the "
                f"spec's base_tolerance (needs >= {check['bound']:.3f})")
    names = {"threshold": "below the spec threshold", "margin": "does not beat the incumbent by the margin",
             "regression": "regressed beyond tolerance"}
    return f"{check['metric']} {value} {names[check['check']]} (needs {op} {check['bound']:.3f})"


def _better_or_equal(metric: str, value: float, bound: float) -> bool:
    return value <= bound + 1e-12 if metric in LOWER_IS_BETTER else value >= bound - 1e-12


def decide(candidate: dict[str, float], incumbent: dict[str, float] | None, *, thresholds: dict[str, float],
           primary: str, margin: float, tolerance: float, base: dict[str, float] | None = None,
           base_tolerance: float = 0.05, base_guarded: tuple[str, ...] | None = None) -> Decision:
    """The gate's verdict with every check it made (see the module docstring).

    ``base``: the base model's metrics on the same holdout; each ``base_guarded`` metric both have is checked
    against it (check ``base``), thresholds or not."""
    from tandem.behavior.metrics import BASE_GUARDED


    checks: list[dict] = []
    for metric, bound in sorted(thresholds.items()):
        value = candidate.get(metric)
        checks.append({"check": "threshold", "metric": metric, "value": value, "bound": float(bound),
                       "ok": value is not None and _better_or_equal(metric, value, float(bound))})
    if incumbent is not None:
        if primary in incumbent:
            sign = -1 if primary in LOWER_IS_BETTER else 1
            bound = incumbent[primary] + sign * margin
            value = candidate.get(primary)
            checks.append({"check": "margin", "metric": primary, "value": value, "bound": bound,
                           "ok": value is not None and _better_or_equal(primary, value, bound)})
        for metric in sorted(set(incumbent) & set(candidate) - {primary}):
            sign = 1 if metric in LOWER_IS_BETTER else -1
            bound = incumbent[metric] + sign * tolerance
            held = _better_or_equal(metric, candidate[metric], bound)
            gated = metric in thresholds
            checks.append({"check": "regression", "metric": metric, "value": candidate[metric], "bound": bound,
                           "incumbent": incumbent[metric], "gated": gated, "regressed": not held,
                           "ok": held or not gated})
    for metric in (BASE_GUARDED if base_guarded is None else base_guarded):
        if base is None or metric not in base or metric not in candidate:
            continue
        bound = base[metric] - base_tolerance
        held = candidate[metric] >= bound - 1e-12
        checks.append({"check": "base", "metric": metric, "value": candidate[metric], "bound": bound,
                       "base": base[metric], "gated": True, "ok": held})
    return Decision(promote=all(c["ok"] for c in checks), checks=tuple(checks), primary=primary)


def spec_gate(spec: Any) -> tuple[dict[str, float], str]:
    """(thresholds, primary metric) of a behavior spec (an object with attributes, or a dict)."""
    def get(name, default=None):
        if isinstance(spec, dict):
            return spec.get(name, default)
        return getattr(spec, name, default)

    thresholds = dict(get("thresholds") or {})
    primary = get("primary_metric")
    if not primary:
        primary = next(iter(thresholds), "")
    return {k: float(v) for k, v in thresholds.items()}, str(primary)
