"""
### behavior_eval: score the live model, diagnose knowledge vs behavior, retrain only when behavior is at fault

Daily (`TANDEM_EVAL_CRON`, its own cadence, separate from the nightly reindex) **or** whenever the
`behavior_adapter` asset changes (every new champion is evaluated). One run at a time.

1. **resolve_model**: loads the behavior spec (`TANDEM_SPEC_PATH`) and the eval set (`TANDEM_EVAL_SET_PATH`),
   resolves the live model (base + the MLflow `champion` alias of `tandem-adapter`, or the base alone) and the
   live index version. Bad input fails here, before any model loads, without retrying.
2. **evaluate**: retrieves context for every question from the live index, generates in batches (greedy,
   bounded tokens), scores deterministically (JSON, schema, citations, style rules, refusals, gold facts) and
   diagnoses each failure as *knowledge* (gold doc not retrieved), *behavior* (format, style, grounding) or
   *model capability* (right context and format, wrong content). Logged to MLflow `tandem-behavior-eval`:
   metrics per rule and per class, the per-example table (`eval_table.json`), tags (adapter, base sha256,
   index, spec, eval-set digest, Airflow run).
3. **decide**: anti-flap state from MLflow (failing streak, last retrain, retrains this week) and the decision,
   recorded as the run's `tandem.decision*` tags, its description, and this task's log.
4. **route** -> **trigger_lora_retrain** (conf `{reason, failing_metrics, eval_run_id}`) when behavior is at
   fault and anti-flap allows; **trigger_knowledge_reindex** when knowledge failures dominate and
   `TANDEM_TRIGGER_REINDEX_ON_KNOWLEDGE_FAILURE` is set; otherwise **no_action**.

**What it scores** (param `source`, default: the spec's `traffic.source`): `eval_set`, `traffic` (the answers
users actually got: **evaluate_traffic** samples the window's MLflow traces of the live adapter version and
scores them without gold data, see `tandem.behavior.traffic`), or `both` (the more severe decision wins).
Too few traces in the window is "not enough traffic": no decision, no action.

The same eval from a shell: `tandem eval [--adapter VERSION|base] [--limit N] [--json]`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

from tandem.airflow.assets import BEHAVIOR_ADAPTER
from tandem.airflow.defaults import DEFAULT_ARGS, TAG, WAIT_FOR_NEXT_SLOT
from tandem.config import Settings

_settings = Settings.load()  # environment only: no database or network at parse time

ROUTES = {"retrain": "trigger_lora_retrain", "reindex": "trigger_knowledge_reindex"}


@dag(
    dag_id="behavior_eval",
    # no start_date, a zero run_immediately buffer: a fresh stack waits for the next slot (see knowledge_reindex)
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(_settings.eval_cron, timezone=_settings.timezone,
                                                                run_immediately=WAIT_FOR_NEXT_SLOT),
                                 assets=[BEHAVIOR_ADAPTER]),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[TAG, "behavior"],
    doc_md=__doc__,
    params={"source": Param("spec", enum=["spec", "eval_set", "traffic", "both"], title="What to score",
                            description="eval_set: the spec's fixed eval set; traffic: the answers users got (their "
                                        "MLflow traces); both; spec: the spec's traffic.source")},
)
def behavior_eval():
    @task
    def resolve_model(params=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from tandem.airflow.settings import task_settings
        from tandem.behavior import eval_run, traffic
        from tandem.errors import UserError

        try:
            p = eval_run.prepare(task_settings(), adapter="champion")
            source = traffic.resolve_source(p.spec, (params or {}).get("source"))
        except UserError as exc:  # a bad spec, eval set, adapter or source: retrying changes nothing
            raise AirflowFailException(str(exc)) from None
        print(f"live model: adapter {p.adapter_label} on base {p.base_model} (sha256 {p.base_sha256[:12]}); "
              f"index {p.index_version}; spec {p.spec.version}; {len(p.examples)} examples "
              f"(eval set sha256 {p.eval_set_digest[:12]})")
        # the version, not "champion": a promotion during the run must not change what is evaluated
        print(f"scoring: {source}")
        return {"adapter": p.adapter_version or "base", "index_version": p.index_version, "source": source}

    @task(execution_timeout=timedelta(hours=2))
    def evaluate(live: dict) -> dict | None:
        from tandem.airflow.settings import task_settings
        from tandem.behavior import eval_run

        if live["source"] == "traffic":
            print("source traffic: the eval set is not scored in this run")
            return None
        summary = eval_run.run_eval(task_settings(), adapter=live["adapter"], source="airflow")
        print(f"eval run {summary['run_id']}: {summary['n']} examples in {summary['wall_s']}s "
              f"({summary['examples_per_s']} examples/s generating); {summary['run_url']}")
        return summary

    @task(execution_timeout=timedelta(minutes=30))
    def evaluate_traffic(live: dict) -> dict | None:
        from tandem.airflow.settings import task_settings
        from tandem.behavior import traffic

        if live["source"] == "eval_set":
            print("source eval_set: traffic is not scored in this run")
            return None
        summary = traffic.run(task_settings(), adapter=live["adapter"], source="airflow")
        print(f"traffic eval run {summary['run_id']}: {summary['n']} of {summary['n_in_window']} trace(s) of "
              f"adapter {summary['adapter']} in the last {summary['window_hours']:g} h; {summary['run_url']}")
        return summary

    @task(multiple_outputs=True)
    def decide(summary: dict | None, traffic_summary: dict | None) -> dict:
        from tandem.airflow.settings import task_settings
        from tandem.behavior import traffic

        decision, chosen, report = traffic.decide_sources(task_settings(), summary, traffic_summary)
        print(report)
        return {"action": decision.action, "kind": decision.kind, "reason": decision.reason,
                "conf": decision.trigger_conf(chosen["run_id"])}

    @task.branch
    def route(action: str) -> str:
        return ROUTES.get(action, "no_action")

    live = resolve_model()
    decision = decide(evaluate(live), evaluate_traffic(live))
    retrain = TriggerDagRunOperator(task_id="trigger_lora_retrain", trigger_dag_id="lora_retrain",
                                    conf=decision["conf"], wait_for_completion=False)
    reindex = TriggerDagRunOperator(task_id="trigger_knowledge_reindex", trigger_dag_id="knowledge_reindex",
                                    conf={}, wait_for_completion=False)
    route(decision["action"]) >> [retrain, reindex, EmptyOperator(task_id="no_action")]


behavior_eval()
