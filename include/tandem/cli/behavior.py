"""`tandem eval`: score the live model (or a given adapter) on the eval set, diagnose, and decide.
``--traffic``: score the answers users got (their MLflow traces in the spec's traffic window) instead.

The same code as the ``behavior_eval`` DAG, without Airflow: the run is logged to MLflow
(``tandem-behavior-eval``) and the decision recorded on it, but nothing is triggered: the CLI prints
what the DAG would do. Exit 0 when every metric meets its threshold, 1 when some do not (the scorecard
is still printed), 2 for bad input (spec, eval set, --limit, an unknown adapter version).
"""

from __future__ import annotations

import sys

from tandem.cli import emit
from tandem.config import Settings
from tandem.errors import JobFailed


def register(sub) -> None:
    p = sub.add_parser("eval", help="score the live model on the eval set, diagnose failures, decide",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--adapter", default="champion", metavar="VERSION|base",
                   help="adapter version to evaluate, 'base' for the base model alone (default: the champion)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N examples (a partial eval: recorded, never acted on)")
    p.add_argument("--traffic", action="store_true",
                   help="score the answers users got instead (the MLflow traces of the spec's traffic window)")
    p.add_argument("--json", action="store_true", help="print the summary and decision as JSON")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from tqdm import tqdm

    from tandem.behavior import eval_run
    from tandem.behavior.report import scorecard

    settings = Settings.load()
    prepared = eval_run.prepare(settings, adapter=args.adapter, limit=args.limit)  # bad input: exit 2, no model
    if args.traffic:
        return _traffic(settings, prepared.adapter_label, args.json)
    bars: dict = {}

    def progress(stage: str, n: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="q", file=sys.stderr, dynamic_ncols=True)
        bar.update(n)

    try:
        summary = eval_run.run_eval(settings, adapter=args.adapter, limit=args.limit, source="cli",
                                    progress=progress, prepared=prepared)
    finally:
        for bar in bars.values():
            bar.close()
    decision = eval_run.decide_and_record(settings, summary)
    return _report({"summary": summary, "decision": decision.as_dict()}, decision, scorecard(summary, decision),
                   args.json)


def _traffic(settings: Settings, adapter: str, as_json: bool) -> int:
    from tandem.behavior import traffic

    summary = traffic.run(settings, adapter=adapter, source="cli")
    decision = traffic.decide_and_record(settings, summary)
    return _report({"summary": summary, "decision": decision.as_dict()}, decision, traffic.card(summary, decision),
                   as_json)


def _report(out: dict, decision, text: str, as_json: bool) -> int:
    """Print; exit 1 (JobFailed) when some metric is under its threshold."""
    if decision.action in ("retrain", "reindex"):
        dag = "lora_retrain" if decision.action == "retrain" else "knowledge_reindex"
        text += f"\n  (the CLI triggers nothing; the behavior_eval DAG would trigger {dag})"
    if decision.failing_metrics:
        if not as_json:
            emit(out, False, text)
        raise JobFailed(f"{len(decision.failing_metrics)} metric(s) under threshold: "
                        f"{', '.join(decision.failing_metrics)}", summary=out)
    emit(out, as_json, text)
    return 0
