"""
### lora_retrain: train a LoRA adapter, evaluate it three ways, register it, promote it only if better

Manual (trigger form below) or triggered by `behavior_eval`; no schedule; one run at a time.

1. **prepare_dataset**: RAFT dataset from the curated examples: oracle chunk(s) from the live index plus
   distractors, shuffled; a fraction without oracle targets the spec's refusal; deterministic split;
   digest + counts via `mlflow.log_input`, snapshot as an artifact (experiment `tandem-lora-training`).
2. **train_adapter** (pool and queue `training`): peft LoRA on the chat template, loss on the answer only;
   loss and lr per step in MLflow; only the adapter is saved.
3. **evaluate_three_way** (pool and queue `training`): candidate, champion and base on the holdout split
   with behavior_eval's scorers; a table and metrics per model in MLflow.
4. **register_version**: a new version of `tandem-adapter` (adapter + base reference and sha256, tags,
   model card).
5. **gate** / **route**: thresholds of the spec, `promotion_margin` over the champion on the primary
   metric, no regression beyond `regression_tolerance`. Not passing, or `auto_promote` off: alias
   `challenger` + reason tag. `require_approval`: **approve_promotion** waits for a human here in the UI.
6. **promote**: `previous` <- old champion, `champion` <- candidate; emits the asset `behavior_adapter`.

A failed task never touches `champion`; **mark_failed** marks the MLflow run failed and tags a version
registered by this run `failed` (never served, never promotable).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import dag, task

from tandem.adapters.params import airflow_params
from tandem.airflow.assets import BEHAVIOR_ADAPTER
from tandem.airflow.defaults import DEFAULT_ARGS, START_DATE, TAG, TRAINING_POOL, TRAINING_QUEUE

STEPS = ("prepare_dataset", "train_adapter", "evaluate_three_way", "register_version", "gate")


@dag(
    dag_id="lora_retrain",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[TAG, "behavior"],
    params=airflow_params(),
    doc_md=__doc__,
)
def lora_retrain():
    @task
    def prepare_dataset(params=None):
        from tandem.adapters import tasks

        return tasks.prepare(dict(params))

    @task(pool=TRAINING_POOL, queue=TRAINING_QUEUE, execution_timeout=timedelta(hours=6))
    def train_adapter(state: dict):
        from tandem.adapters import tasks

        return tasks.step("train", state)

    @task(pool=TRAINING_POOL, queue=TRAINING_QUEUE, execution_timeout=timedelta(hours=2))
    def evaluate_three_way(state: dict):
        from tandem.adapters import tasks

        return tasks.step("evaluate", state)

    @task
    def register_version(state: dict):
        from tandem.adapters import tasks
        from tandem.serve.pyfunc import log_adapter_model  # the version is a servable MLflow model

        return tasks.step("register", state, log_model=log_adapter_model)

    @task
    def gate(state: dict):
        from tandem.adapters import tasks

        return tasks.step("gate", state)

    @task.branch
    def route(state: dict):
        return {"promote": "promote", "approve": "approve_promotion"}.get(state["action"])

    approve = ApprovalOperator(
        task_id="approve_promotion",
        subject="Promote tandem-adapter version {{ ti.xcom_pull(task_ids='gate')['version'] }} to champion?",
        body=("{{ ti.xcom_pull(task_ids='gate')['reason'] }}\n\n"
              "Approve: it becomes `champion` and the current champion becomes `previous`. "
              "Reject: it stays `challenger`."),
        response_timeout=timedelta(days=3),
    )

    @task(outlets=[BEHAVIOR_ADAPTER], trigger_rule="none_failed_min_one_success")
    def promote(**context):
        from tandem.adapters import tasks

        return tasks.promote(context["ti"].xcom_pull(task_ids="gate"), context["outlet_events"], BEHAVIOR_ADAPTER,
                             context["run_id"])

    @task(trigger_rule="one_failed")
    def mark_failed(**context):
        """Runs only when a step failed: marks the partial run, then fails so the DAG run reads failed."""
        from tandem.adapters import tasks

        tasks.mark_failed([context["ti"].xcom_pull(task_ids=t) for t in STEPS], context["run_id"])

    prepared = prepare_dataset()
    trained = train_adapter(prepared)
    evaluated = evaluate_three_way(trained)
    registered = register_version(evaluated)
    gated = gate(registered)
    routed = route(gated)
    promoted = promote()
    routed >> [approve, promoted]
    approve >> promoted
    [prepared, trained, evaluated, registered, gated, routed, approve, promoted] >> mark_failed()


lora_retrain()
