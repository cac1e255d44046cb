"""The reindex's last task, ``finalize``, in four parts: ``apply_deletes`` (into the candidate release),
``run_canary`` (on the candidate), ``publish`` (one short transaction; a shadow space is switched in) and
``record`` (summary, MLflow, the run and release rows). Raises JobFailed when the run failed: then nothing
was published.

Safe to retry: a release this run already published is never published again (``releases.published_by``).
Fault points (``tandem.faults``): ``before_canary``, ``during_publish`` (inside the publish transaction) and
``after_publish`` (committed, not yet recorded).
"""

from __future__ import annotations

import logging
import time

from psycopg import sql

from tandem import db, faults
from tandem.config import Settings
from tandem.db import ident
from tandem.errors import JobFailed
from tandem.knowledge import canary, lock, releases, spaces, store
from tandem.knowledge import summary as summaries
from tandem.knowledge.plan import ReindexPlan
from tandem.knowledge.summary import MAX_LISTED_ERRORS, dumps, rounded

log = logging.getLogger("tandem.knowledge")


def finalize(settings: Settings, the_plan: ReindexPlan, batch_stats: list[dict], *, owner: str,
             log_mlflow: bool = True) -> dict:
    """Deletes, canary, publish, summary. Returns the summary; raises JobFailed when the run failed (then the
    published release is exactly as it was).

    Safe to retry: when an earlier try of this run already published its release (it died after the commit,
    before reporting success), nothing is deleted, measured or published again; the summary is the one that
    try recorded, or is built now from what it committed."""
    n = store.names(settings.index_name)
    phases = _batch_phases(the_plan, batch_stats)
    with db.connection(settings.db_url) as conn:
        space = spaces.by_fingerprint(conn, n, the_plan.fingerprint)
        done = releases.published_by(conn, n, the_plan.candidate_index_version, the_plan.run_id)
        conn.commit()
        if done is not None:
            summary = _finish_published(settings, conn, n, the_plan, space, batch_stats, phases, done,
                                        log_mlflow=log_mlflow)
        else:
            summary = _finalize_candidate(settings, conn, n, the_plan, space, batch_stats, phases, owner=owner,
                                          log_mlflow=log_mlflow)
    summary = summaries.jsonable(summary)
    log.info("reindex %s %s: release %s, %s new, %s changed, %s deleted, %s failed, %s chunks in %.1fs",
             the_plan.run_id, summary["status"], summary["index_version"], summary["new"], summary["changed"],
             summary["deleted"], summary["failed"], summary["chunks_embedded"], summary["seconds"])
    if summary["status"] == "failed":
        raise JobFailed(summary.get("message") or "the reindex failed", summary=summary)
    return summary


def _finalize_candidate(settings: Settings, conn, n, the_plan: ReindexPlan, space, batch_stats: list[dict], phases: dict,
                        *, owner: str, log_mlflow: bool) -> dict:
    """The first complete try: deletes, canary, publish when it passed, summary and record."""
    deleted = apply_deletes(conn, n, the_plan, owner, phases)
    docs = _document_outcomes(conn, n, the_plan)
    wrote = sum(b.get("written", 0) for b in batch_stats) > 0 or deleted > 0
    switch = the_plan.mode == "build"
    faults.point("before_canary")
    canary_result = run_canary(settings, conn, n, the_plan, space, wrote=wrote, phases=phases)
    status, message = _verdict(the_plan, docs, canary_result)
    published = None
    if status == "succeeded" and (wrote or switch):
        published = publish(settings, conn, n, the_plan, space, owner, switch=switch, phases=phases,
                            counts=_counts(the_plan, deleted, docs, batch_stats), canary_result=canary_result)
        faults.point("after_publish")
    summary = build_summary(conn, n, the_plan, space, batch_stats, phases, deleted=deleted, docs=docs,
                            canary_result=canary_result, status=status, message=message, published=published)
    record(settings, conn, n, the_plan, summary, canary_result, log_mlflow=log_mlflow)
    return summary


def _finish_published(settings: Settings, conn, n, the_plan: ReindexPlan, space, batch_stats: list[dict], phases: dict,
                      done: dict, *, log_mlflow: bool) -> dict:
    """A retry after the publish committed: the recorded summary, or one built (and recorded) from the commit."""
    row = conn.execute(sql.SQL("SELECT status, summary FROM {r} WHERE run_id = %s").format(r=ident(n.runs)),
                       (the_plan.run_id,)).fetchone()
    conn.commit()
    if row and row[0] == "succeeded" and row[1]:
        log.info("release %s was already published and recorded by an earlier try of %s", done["index_version"],
                 the_plan.run_id)
        return row[1]
    log.info("release %s was already published by an earlier try of %s: recording it, publishing nothing again",
             done["index_version"], the_plan.run_id)
    deleted = conn.execute(sql.SQL("SELECT count(*) FROM {rd} WHERE run_id = %s AND outcome = 'deleted'")
                           .format(rd=ident(n.run_docs)), (the_plan.run_id,)).fetchone()[0]
    conn.commit()
    docs = _document_outcomes(conn, n, the_plan)
    canary_result = done["canary"] or {}
    published = {"index_version": done["index_version"], "switched": the_plan.mode == "build", "collected": {"rows": 0}}
    summary = build_summary(conn, n, the_plan, space, batch_stats, phases, deleted=deleted, docs=docs,
                            canary_result=canary_result, status="succeeded", message=None, published=published)
    record(settings, conn, n, the_plan, summary, canary_result, log_mlflow=log_mlflow)
    return summary


def _batch_phases(the_plan: ReindexPlan, batch_stats: list[dict]) -> dict:
    phases = dict(the_plan.phases or {})
    for key in ("read", "chunk", "embed", "write"):
        phases[key] = rounded(sum((b.get("seconds") or {}).get(key, 0.0) for b in batch_stats))
    return phases


def apply_deletes(conn, n, the_plan: ReindexPlan, owner: str, phases: dict) -> int:
    """The run's deleted documents leave the candidate release (one transaction)."""
    from tandem.knowledge import writer

    t0 = time.monotonic()
    deleted = writer.delete_documents(conn, n, table=the_plan.table, space_no=the_plan.space_no, owner=owner,
                                      run_id=the_plan.run_id, release=the_plan.candidate_index_version,
                                      manifest_now=the_plan.manifest_now)
    phases["delete"] = rounded(time.monotonic() - t0)
    return deleted


def _document_outcomes(conn, n, the_plan: ReindexPlan) -> dict:
    """Pending (a batch did not finish), failed and quarantined documents; for a shadow space, the documents it
    failed that the live space serves."""
    run_id, space_no = the_plan.run_id, the_plan.space_no
    rd, m = ident(n.run_docs), ident(n.manifest)
    out = {"pending": conn.execute(sql.SQL("""
        SELECT count(*) FROM {rd} WHERE run_id = %s AND class IN ('new', 'changed') AND outcome IS NULL""")
        .format(rd=rd), (run_id,)).fetchone()[0]}
    out["failed"] = conn.execute(sql.SQL("""
        SELECT r.doc_id, m.last_error FROM {rd} r JOIN {m} m ON m.space_no = %s AND m.doc_id = r.doc_id
        WHERE r.run_id = %s AND (r.class = 'failed' OR r.outcome IN ('failed', 'quarantined'))
        ORDER BY r.doc_id""").format(rd=rd, m=m), (space_no, run_id)).fetchall()
    out["changed_during_run"] = [r[0] for r in conn.execute(sql.SQL("""
        SELECT doc_id FROM {rd} WHERE run_id = %s AND outcome = 'changed_during_run' ORDER BY doc_id""")
        .format(rd=rd), (run_id,))]
    out["quarantined"] = conn.execute(sql.SQL("""
        SELECT doc_id, last_error, attempts FROM {m} m WHERE space_no = %s AND status = 'quarantined'
          AND NOT EXISTS (SELECT 1 FROM {rd} r WHERE r.run_id = %s AND r.doc_id = m.doc_id
                          AND r.outcome IN ('written', 'deleted'))
        ORDER BY doc_id""").format(m=m, rd=rd), (space_no, run_id)).fetchall()
    out["lost_by_switch"] = conn.execute(sql.SQL("""
        SELECT count(*) FROM {m} s WHERE s.space_no = %s AND s.status = 'failed' AND EXISTS (
            SELECT 1 FROM {m} l JOIN {sp} sp ON sp.space_no = l.space_no AND sp.status = 'live'
            WHERE l.doc_id = s.doc_id AND l.space_no <> s.space_no AND l.content_hash IS NOT NULL)
        """).format(m=m, sp=ident(n.spaces)), (space_no,)).fetchone()[0]
    conn.commit()
    return out


def run_canary(settings: Settings, conn, n, the_plan: ReindexPlan, space, *, wrote: bool, phases: dict) -> dict:
    """Measure the candidate release against the golden set and judge it (baseline and floor)."""
    from tandem.knowledge.search import embedder_for

    if the_plan.mode == "build":  # a filled shadow space gets its HNSW index in one bulk build
        t0 = time.monotonic()
        with conn.transaction():
            store.ensure_hnsw(conn, the_plan.table)
        phases["hnsw"] = rounded(time.monotonic() - t0)
    t0 = time.monotonic()
    items, golden_sha, skip = canary.load_golden(settings.canary_path)
    if skip:
        result = {"status": "skipped", "reason": skip}
    else:
        ref = canary.reference(conn, n, golden_sha, settings.canary_k, settings.canary_floor_releases,
                               settings.canary_floor_tolerance)
        carry = canary.last_measured_is_good(conn, n, golden_sha, settings.canary_k)
        conn.commit()
        if not wrote and the_plan.mode != "build" and ref is not None and carry:
            result = {"hit_at_k": ref["hit_at_k"], "mrr": ref["mrr"], "k": settings.canary_k,
                      "status": "unchanged", "reason": f"index unchanged since release {ref['index_version']}: "
                                                       "metrics carried over"}
        else:
            measured = canary.evaluate(conn, the_plan.table, embedder_for(settings, space), items,
                                       settings.canary_k, settings.hnsw_ef_search, release=the_plan.candidate_index_version,
                                       fusion=settings.retrieval_fusion)
            result = canary.judge(measured, ref, settings.canary_max_drop)
    if golden_sha:
        result.update(golden_sha256=golden_sha, k=settings.canary_k, path=str(settings.canary_path))
    phases["canary"] = rounded(time.monotonic() - t0)
    return result


def _verdict(the_plan: ReindexPlan, docs: dict, canary_result: dict) -> tuple[str, str | None]:
    """("succeeded" | "failed", message)."""
    switch = the_plan.mode == "build"
    if docs["pending"]:
        return "failed", (f"{docs['pending']} planned documents were not processed (a batch did not finish); "
                          "nothing was published")
    if canary_result.get("status") == "failed":
        return "failed", ("retrieval canary regressed: " + canary_result.get("reason", "") +
                          ("; the new embedding space was NOT switched in" if switch else
                           f"; release {the_plan.candidate_index_version} was NOT published (the live index is unchanged)"))
    if switch and docs["changed_during_run"]:
        return "failed", (f"{len(docs['changed_during_run'])} documents changed during the run, so the new embedding "
                          "space lacks them: not switched in (the live index is unchanged); the next run indexes them")
    if switch and docs["lost_by_switch"]:
        return "failed", (f"the new embedding space failed {docs['lost_by_switch']} documents that the live space "
                          "serves: not switched in (the live index is unchanged); the next run retries them (after "
                          "max_attempts they are quarantined and the switch goes ahead)")
    return "succeeded", None


def _counts(the_plan: ReindexPlan, deleted: int, docs: dict, batch_stats: list[dict]) -> dict:
    return {"new": the_plan.new, "changed": the_plan.changed, "unchanged": the_plan.unchanged,
            "deleted": deleted, "failed": len(docs["failed"]), "quarantined": len(docs["quarantined"]),
            "changed_during_run": len(docs["changed_during_run"]),
            "written": sum(b.get("written", 0) for b in batch_stats),
            "chunks_embedded": sum(b.get("chunks_embedded", 0) for b in batch_stats)}


def publish(settings: Settings, conn, n, the_plan: ReindexPlan, space, owner: str, *, switch: bool, phases: dict,
            counts: dict, canary_result: dict) -> dict:
    """One short transaction: the candidate becomes the published release (a shadow space is switched in).
    Then, outside it: drop retired tables, collect rows no kept release can see."""
    t0 = time.monotonic()
    conn.commit()  # the publish below must be a transaction of its own, not a savepoint in a read
    with conn.transaction():
        lock.check(conn, n, owner)
        drop = releases.publish(conn, n, space, the_plan.candidate_index_version, the_plan.run_id, switch=switch,
                                counts=counts, canary=canary_result)
        faults.point("during_publish")
    phases["publish"] = rounded(time.monotonic() - t0)
    if drop:
        spaces.drop_tables(conn, drop)
    t0 = time.monotonic()
    with conn.transaction():
        collected = releases.collect(conn, n, spaces.by_fingerprint(conn, n, the_plan.fingerprint),
                                     settings.keep_releases)
    phases["collect"] = rounded(time.monotonic() - t0)
    log.info("published release %s%s; collected %s superseded rows", the_plan.candidate_index_version,
             " (embedding space switched)" if switch else "", collected["rows"])
    return {"index_version": the_plan.candidate_index_version, "switched": switch, "collected": collected}


def build_summary(conn, n, the_plan: ReindexPlan, space, batch_stats: list[dict], phases: dict, *, deleted: int, docs: dict,
                  canary_result: dict, status: str, message: str | None, published: dict | None) -> dict:
    live = spaces.live(conn, n)
    total = conn.execute(sql.SQL("SELECT extract(epoch FROM now() - started_at) FROM {r} WHERE run_id = %s")
                         .format(r=ident(n.runs)), (the_plan.run_id,)).fetchone()[0]
    conn.commit()
    batch_wall = sum(b.get("wall", 0.0) for b in batch_stats)
    counts = _counts(the_plan, deleted, docs, batch_stats)
    summary = {
        "run_id": the_plan.run_id, "index": n.index, "status": status, "mode": the_plan.mode, "dry_run": False,
        "full": the_plan.full, "sources": the_plan.sources,
        "sources_from": the_plan.sources_from, **counts,
        "index_version": live.index_version if live else None,
        "release": {"index_version": the_plan.candidate_index_version, "published": published is not None,
                    "collected_rows": (published or {}).get("collected", {}).get("rows", 0)},
        "space": {"no": space.space_no, "fingerprint": space.fingerprint,
                  "switched": bool(published and published["switched"]), "model": space.spec.get("model_ref", ""),
                  "backend": str(space.spec.get("backend", "torch")).split("/")[0]},
        "seconds": rounded(total), "phases": phases,
        "docs_per_s": rounded((counts["written"] + sum(b.get("failed", 0) for b in batch_stats)) / batch_wall)
        if batch_wall else 0.0,
        "chunks_per_s": rounded(counts["chunks_embedded"] / batch_wall) if batch_wall else 0.0,
        "delete_brake": the_plan.delete_brake,
        "canary": canary_result,
        "errors": [{"doc_id": d, "reason": e or ""} for d, e in docs["failed"][:MAX_LISTED_ERRORS]],
        "quarantined_docs": [{"doc_id": d, "reason": e or "", "attempts": a}
                             for d, e, a in docs["quarantined"][:MAX_LISTED_ERRORS]],
        "changed_during_run_docs": docs["changed_during_run"][:MAX_LISTED_ERRORS],
    }
    if message:
        summary["message"] = message
    return summary


def record(settings: Settings, conn, n, the_plan: ReindexPlan, summary: dict, canary_result: dict, *,
           log_mlflow: bool) -> None:
    """MLflow, the run row, and the candidate's release row (failed; or forgotten when it wrote nothing)."""
    if log_mlflow:
        tracked = summaries.log_to_mlflow(settings, summary)
        if "run_id" in tracked:
            summary["mlflow_run_id"], summary["mlflow_run_url"] = tracked["run_id"], tracked["url"]
        else:
            summary["mlflow"] = tracked
    with conn.transaction():
        conn.execute(sql.SQL("""
            UPDATE {r} SET status = %s, summary = %s, canary = %s, finished_at = now() WHERE run_id = %s""")
                     .format(r=ident(n.runs)), (summary["status"], dumps(summary), dumps(canary_result),
                                                the_plan.run_id))
        if summary["status"] == "failed":
            releases.fail(conn, n, the_plan.candidate_index_version, summary.get("message") or "failed",
                          counts={k: summary[k] for k in ("new", "changed", "deleted", "written")}, canary=canary_result)
        elif not summary["release"]["published"]:
            releases.forget(conn, n, the_plan.candidate_index_version)
        conn.execute(sql.SQL("""
            DELETE FROM {rd} WHERE run_id NOT IN (SELECT run_id FROM {r} ORDER BY started_at DESC LIMIT 5)""")
                     .format(rd=ident(n.run_docs), r=ident(n.runs)))
