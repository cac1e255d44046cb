"""
### knowledge_reindex: nightly incremental reindex of the knowledge sources into pgvector

Re-embeds only what changed, and never half-writes: each document is replaced in one transaction.

Nothing it writes is served until its canary passed: the run builds a candidate *release*, and readers
see the published release only.

1. **plan**: takes the index's lease (no concurrent reindex: a CLI run waits or exits), scans the
   sources through `ObjectStoragePath`, stages the scan with COPY and classifies every document in SQL
   (new / changed / unchanged / deleted / failed / quarantined), applies the mass-delete brake, allocates
   the candidate release.
2. **embed_batch** (mapped, pool `knowledge`): chunks, embeds and writes new/changed documents into the
   candidate release. Batches are grouped so that a run never maps more tasks than Airflow's
   `core.max_map_length`.
3. **finalize**: deletes, the retrieval canary on the candidate, publish (a new embedding space is switched
   in), the summary (logged to MLflow `tandem-knowledge`). Emits the asset `knowledge_index` (extra:
   index version = release number, and the summary) only when a release was published or nothing changed.
4. **release** (teardown): gives the lease back whatever happened.

Manual trigger params: `full_rebuild`, `dry_run`, `allow_mass_delete`, `sources` (empty: `TANDEM_SOURCES`
when it is set, else the sources the index was last published from). The same job from a shell: `tandem reindex [--source P]... [--full] [--dry-run]`.
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, Param, dag, task, teardown

from tandem.airflow.assets import KNOWLEDGE_INDEX
from tandem.airflow.defaults import DEFAULT_ARGS, KNOWLEDGE_POOL, TAG, WAIT_FOR_NEXT_SLOT
from tandem.config import Settings

_settings = Settings.load()  # environment only: no database or network at parse time


def _owner(context) -> str:
    dag_run = context["dag_run"]
    return f"airflow:{dag_run.dag_id}:{dag_run.run_id}"


@dag(
    dag_id="knowledge_reindex",
    # no start_date and a zero run_immediately buffer: a fresh `make up` waits for the next 02:00 instead of running
    # last night's slot at once (with a start_date, Airflow 3 runs the most recent past slot on first unpause)
    schedule=CronTriggerTimetable(_settings.reindex_cron, timezone=_settings.timezone,
                                  run_immediately=WAIT_FOR_NEXT_SLOT),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[TAG, "knowledge"],
    params={
        "full_rebuild": Param(False, type="boolean", description="Re-embed every document (ignore the diff)."),
        "dry_run": Param(False, type="boolean", description="Report the plan (counts and ids per class); write nothing."),
        "allow_mass_delete": Param(False, type="boolean",
                                   description="Allow deleting more than TANDEM_MASS_DELETE_FRACTION of the documents."),
        "sources": Param([], type="array", items={"type": "string", "minLength": 1},
                         description="Source roots (name=path_or_uri or path_or_uri), one per line. "
                                     "Empty: the configured TANDEM_SOURCES."),
    },
    doc_md=__doc__,
)
def knowledge_reindex():
    @task
    def plan(params=None, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from tandem.airflow.settings import task_settings
        from tandem.errors import JobFailed, UserError
        from tandem.knowledge import plan as planning, reindex

        settings = task_settings()
        run_id = reindex.new_run_id("af")
        kwargs = dict(sources=params["sources"] or None, full=params["full_rebuild"],
                      allow_mass_delete=params["allow_mass_delete"])
        if params["dry_run"]:
            result = planning.make(settings, run_id=run_id, owner=None, dry_run=True, **kwargs)
            return result.with_(batches=[], owner=None).to_xcom()
        owner = _owner(context)
        lease = reindex.acquire_lease(settings, owner, keep_connection=False)
        try:
            result = planning.make(settings, run_id=run_id, owner=owner, **kwargs)
        except (JobFailed, UserError) as exc:
            lease.release()
            raise AirflowFailException(str(exc)) from None  # the brake or bad input: retrying changes nothing
        except BaseException:
            lease.release()
            raise
        return result.with_(errors=[], owner=owner).to_xcom()  # errors: listed again by finalize; a small XCom

    @task
    def batches(the_plan: dict) -> list[list[int]]:
        from airflow.sdk.configuration import conf

        from tandem.knowledge import batch
        from tandem.knowledge.plan import ReindexPlan

        return batch.group(ReindexPlan.from_xcom(the_plan).batches, conf.getint("core", "max_map_length", fallback=1024))

    @task(pool=KNOWLEDGE_POOL, map_index_template="batches {{ batch_nos | first }}..{{ batch_nos | last }}")
    def embed_batch(the_plan: dict, batch_nos: list[int]) -> dict:
        from tandem.airflow.settings import task_settings
        from tandem.knowledge import batch
        from tandem.knowledge.plan import ReindexPlan

        p = ReindexPlan.from_xcom(the_plan)
        return batch.process_many(task_settings(), p, batch_nos, owner=p.owner)

    @task(outlets=[KNOWLEDGE_INDEX], trigger_rule="none_failed")
    def finalize(the_plan: dict, batch_stats=None, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from tandem.airflow.settings import task_settings
        from tandem.errors import JobFailed
        from tandem.knowledge import publish
        from tandem.knowledge.plan import ReindexPlan
        from tandem.knowledge.summary import text

        p = ReindexPlan.from_xcom(the_plan)
        if p.dry_run:
            print(text(the_plan))
            raise AirflowSkipException("dry run: nothing was written, no asset event")
        try:
            summary = publish.finalize(task_settings(), p, list(batch_stats or []), owner=p.owner)
        except JobFailed as exc:
            print(text(exc.summary) if exc.summary else "")
            raise AirflowFailException(str(exc)) from None  # the canary (or a batch) failed: no asset event
        print(text(summary))
        context["outlet_events"][KNOWLEDGE_INDEX].extra = {"index_version": summary["index_version"],
                                                           "summary": summary}
        return summary

    @teardown
    def release(**context) -> None:
        from tandem.airflow.settings import task_settings
        from tandem.knowledge import lock, reindex, store

        settings = task_settings()
        owner = _owner(context)
        reindex.mark_failed_by_owner(settings, owner, "the Airflow run ended before finalize")
        lock.release(settings.db_url, store.names(settings.index_name), owner)

    the_plan = plan()
    stats = embed_batch.partial(the_plan=the_plan).expand(batch_nos=batches(the_plan))
    done = finalize(the_plan, stats)
    done >> release()


DAG = knowledge_reindex()
