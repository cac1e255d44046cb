"""
### knowledge_verify: prove that the published knowledge index matches its sources (weekly)

Reconciles three truths: a fresh scan of the sources, the manifest, and the chunks of the published
release. It names each kind of drift: documents missing or extra, content hashes that do not match, chunk
counts that do not match, orphaned chunks and duplicate chunk ids, NULL / zero / NaN vectors or vectors of
the wrong dimension, and rows of an unpublished release that a reader can see.

1. **verify**: the check; its report is recorded and shown on the Tandem status page. Drift fails the task
   (so the run is red and alerts fire) unless `repair` is set.
2. **repair** (only with `repair`, and only when there is drift): re-indexes exactly the drifted documents
   through the normal reindex path (lease, candidate release, canary, publish), verifies again, and emits the
   `knowledge_index` asset for the new release. Fails when drift remains.

The same from a shell: `tandem index verify [--repair] [--json]` (exit 1 on drift).
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, Param, dag, task

from tandem.airflow.assets import KNOWLEDGE_INDEX
from tandem.airflow.defaults import DEFAULT_ARGS, TAG, WAIT_FOR_NEXT_SLOT
from tandem.config import Settings

_settings = Settings.load()  # environment only: no database or network at parse time


@dag(
    dag_id="knowledge_verify",
    schedule=CronTriggerTimetable(_settings.verify_cron, timezone=_settings.timezone,
                                  run_immediately=WAIT_FOR_NEXT_SLOT),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[TAG, "knowledge"],
    params={
        "repair": Param(False, type="boolean",
                        description="Re-index exactly the drifted documents as a new release, then verify again."),
    },
    doc_md=__doc__,
)
def knowledge_verify():
    @task
    def verify(params=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from tandem.airflow.settings import task_settings
        from tandem.knowledge import verify as checks

        report = checks.check(task_settings())
        print(checks.text(report))
        if not report["ok"] and not params["repair"]:
            raise AirflowFailException(f"the index drifted from its sources ({len(report['drifted_documents'])} "
                                       "documents); trigger knowledge_verify with repair=true or run "
                                       "`tandem index verify --repair`")
        return {"ok": report["ok"], "index_version": report["index_version"], "check_id": report["check_id"]}

    @task(outlets=[KNOWLEDGE_INDEX])
    def repair(checked: dict, params=None, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from tandem.airflow.settings import task_settings
        from tandem.knowledge import verify as checks

        if checked["ok"] or not params["repair"]:
            raise AirflowSkipException("no drift, or repair not asked: nothing to re-index, no asset event")
        report = checks.verify(task_settings(), repair=True)
        print(checks.text(report))
        if not report["ok"]:
            raise AirflowFailException("drift remains after the repair; see the report above")
        run = (report.get("repaired") or {}).get("run") or {}
        context["outlet_events"][KNOWLEDGE_INDEX].extra = {"index_version": report["index_version"],
                                                           "action": "verify_repair", "summary": run}
        return {"ok": True, "index_version": report["index_version"]}

    repair(verify())


DAG = knowledge_verify()
