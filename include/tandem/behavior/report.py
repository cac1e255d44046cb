"""The scorecard: metrics against thresholds, the diagnosis mix, and the decision, as text or markdown."""

from __future__ import annotations

from typing import Any

from tandem.behavior.metrics import FAILURE_CLASSES, METRIC_GROUPS, PASS_RATE, PROBE_METRICS, VERDICTS


def scorecard(summary: dict[str, Any], decision=None, *, markdown: bool = False) -> str:
    metrics, thresholds = summary["metrics"], summary.get("thresholds", {})
    n, counts = summary["n"], summary["counts"]
    head = (f"Behavior eval of adapter {summary['adapter']} on index {summary['index_version']} "
            f"(spec {summary['spec_version']}, {n} examples{', partial' if summary.get('partial') else ''}, "
            f"{summary['wall_s']:.0f}s, {summary['examples_per_s']:.2f} examples/s generating"
            f"{', %d counterfactual probes' % summary['probes'] if summary.get('probes') else ''}"
            f"{', %d answers with ungrounded values' % summary['ungrounded'] if summary.get('ungrounded') else ''})")
    rows = []
    for name in (*VERDICTS, *PROBE_METRICS, PASS_RATE):
        value = metrics.get(name)
        bound = thresholds.get(name)
        mark = "" if bound is None else ("ok" if value is not None and value >= bound - 1e-12 else "FAIL")
        rows.append((name, METRIC_GROUPS[name], "n/a" if value is None else f"{value:.3f}",
                     "" if bound is None else f">= {bound:.2f}", mark))
    diag = [(name, counts.get(name, 0), f"{counts.get(name, 0) / n:.1%}" if n else "0%")
            for name in ("pass", *FAILURE_CLASSES)]
    if markdown:
        lines = [f"**{head}**", "", "| metric | group | value | threshold | |", "|---|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
        lines += ["", "| diagnosis | examples | share |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in diag]
        if decision is not None:
            lines += ["", f"**Decision: {decision.action}** ({decision.kind}): {decision.reason}"]
        if summary.get("run_url"):
            lines += ["", f"MLflow run: {summary['run_url']}"]
        return "\n".join(lines)
    width = max(len(r[0]) for r in rows)
    lines = [head, ""]
    lines += [f"  {a:<{width}}  {b:<9}  {c:>6}  {d:<7}  {e}" for a, b, c, d, e in rows]
    lines += ["", "Diagnosis:"]
    lines += [f"  {a:<{width}}  {b:>4}  {c:>6}" for a, b, c in diag]
    missing = summary.get("missing_docs") or {}
    if missing:
        lines += ["", "Knowledge failures (what retrieval missed: the gold document, or the chunk holding the facts):"]
        lines += [f"  {ex_id}: {', '.join(docs)}" for ex_id, docs in sorted(missing.items())]
    if decision is not None:
        lines += ["", f"Decision: {decision.action} ({decision.kind})", f"  {decision.reason}"]
    if summary.get("run_url"):
        lines += ["", f"MLflow run: {summary['run_url']}"]
    return "\n".join(lines)
