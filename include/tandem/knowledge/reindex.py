"""Orchestration of a reindex: ``plan`` -> ``process_batch`` (once per batch) -> ``finalize``.

The CLI runs the three in one process (``run``); the DAG runs ``plan`` as one task, the batches as
dynamically-mapped tasks (pool ``knowledge``) and ``finalize`` as the last task. State between them lives in
Postgres (the run's row and its documents), so any task can run on any worker and be retried.

1. plan: take the lease, pick the target embedding space (the live one, or a shadow when the fingerprint
   changed), scan the sources and stage the scan with COPY in short transactions, classify it in SQL, check
   the mass-delete brake, discard what failed runs left unpublished, allocate the candidate release and
   persist the plan (documents of each class, batches of ``reindex_batch_docs``).
2. batches: read, extract, chunk and embed each new/changed document; write each one atomically into the
   candidate release (invisible to readers).
3. finalize, in four parts: ``apply_deletes`` (into the candidate), ``run_canary`` (on the candidate),
   ``publish`` (one short transaction; a shadow space is switched in), ``record`` (summary, MLflow, the run
   and release rows). Raises JobFailed when the run failed: then nothing was published.

Fault points (``tandem.faults``, no-ops unless a test installs a hook): ``after_plan``, ``before_canary``,
``during_publish`` (inside the publish transaction) and ``after_publish`` (committed, not yet recorded).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid

from psycopg import sql

from tandem import db, faults
from tandem.config import Settings
from tandem.db import ident
from tandem.errors import JobFailed, UserError
from tandem.knowledge import canary, diff, fingerprint, known_sources, lock, releases, spaces, store
from tandem.knowledge import summary as summaries
from tandem.knowledge.progress import Progress

log = logging.getLogger("tandem.knowledge")

MAX_LISTED_ERRORS = 100


def new_run_id(prefix: str = "cli") -> str:
    return f"{prefix}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _r(x: float) -> float:
    return round(float(x), 3)


def _json(value) -> str:
    import json

    return json.dumps(value, default=str, sort_keys=True)


def acquire_lease(settings: Settings, owner: str, *, keep_connection: bool) -> lock.Lease:
    n = store.names(settings.index_name)
    with db.connection(settings.db_url) as conn:
        store.ensure_schema(conn, n)
    return lock.acquire(settings.db_url, n, owner, wait_s=settings.lock_wait_seconds,
                        stale_s=settings.lock_stale_seconds, keep_connection=keep_connection)


# --------------------------------------------------------------------------------------------- plan
def plan(settings: Settings, *, run_id: str, owner: str | None, sources=None, full: bool = False,
         dry_run: bool = False, allow_mass_delete: bool = False, progress: bool = False,
         force: list[str] | None = None) -> dict:
    """Scan and diff. Writes the plan (not for dry runs) and returns it; raises JobFailed at the delete brake.
    ``force``: document ids rewritten (or removed) whatever the manifest says (``tandem index verify --repair``)."""
    from tandem.knowledge import scan, sources as src

    started = time.monotonic()
    n = store.names(settings.index_name)
    specs, sources_from = known_sources.resolve(settings, sources)
    source_list = src.parse_sources(specs)
    canary.load_golden(settings.canary_path)  # a malformed golden set fails now, before anything is written
    fp, spec, dim = _fingerprint_and_dim(settings)
    base = {"run_id": run_id, "index": n.index, "dry_run": dry_run, "full": full,
            "sources": [f"{s.name}={s.root}" for s in source_list], "sources_from": sources_from, "fingerprint": fp}
    with db.connection(settings.db_url) as conn:
        if not dry_run:
            store.ensure_schema(conn, n)
        live = spaces.live(conn, n)
        space, mode = spaces.target(conn, n, fp, spec, dim, full=full, create=not dry_run)
        conn.commit()
        space_no = space.space_no if space else None
        t_scan = time.monotonic()
        beat = (lambda: lock.heartbeat(None, n, owner, settings.db_url)) if owner else None
        try:
            with Progress("scan", None, bar=progress, beat=beat) as pr:
                staged = diff.stage(conn, scan.scan(source_list, settings.include_globs, settings.exclude_globs,
                                                    settings.max_file_bytes, progress=pr))
            scan_s = time.monotonic() - t_scan
            t_diff = time.monotonic()
            with conn.transaction():
                diff.classify(conn, n, space_no, full, force)
                counts = diff.counts(conn, staged)
                brake = _brake(settings, counts, allow_mass_delete)
                result = {
                    **base, "mode": mode, "space_no": space_no, "table": space.table if space else None,
                    "manifest_now": bool(space is not None and not space.published),
                    "live_version": live.version if live else None, "index_version": live.version if live else None,
                    **{c: counts[c] for c in diff.CLASSES}, "scanned": staged, "delete_brake": brake,
                    "errors": [{"doc_id": d, "reason": e} for d, e in diff.failures(conn)[:MAX_LISTED_ERRORS]],
                    "phases": {"scan": _r(scan_s)},
                }
                if dry_run:
                    result["ids"] = diff.ids_by_class(conn, n, space_no)
                elif not brake["blocked"]:
                    _record(conn, n, space, run_id, mode, owner, full, settings, result)
            result["phases"]["diff"] = _r(time.monotonic() - t_diff)
        finally:
            diff.drop_staging(conn)
        if dry_run or brake["blocked"]:
            result.update(status="dry_run" if dry_run else "failed", seconds=_r(time.monotonic() - started))
            if not dry_run:
                result["message"] = brake["message"]
                with conn.transaction():
                    _insert_run(conn, n, run_id, space_no, mode, "failed", owner, result)
                    conn.execute(sql.SQL("UPDATE {r} SET finished_at = now(), summary = %s WHERE run_id = %s")
                                 .format(r=ident(n.runs)), (_json(result), run_id))
                raise _Brake(result)
            return result
    log.info("plan %s: %s new, %s changed, %s unchanged, %s deleted, %s failed, %s quarantined; %d batches (%s, "
             "candidate release %s)", run_id, result["new"], result["changed"], result["unchanged"], result["deleted"],
             result["failed"], result["quarantined"], len(result["batches"]), mode, result["release"])
    faults.point("after_plan")
    return result


def _fingerprint_and_dim(settings: Settings) -> tuple[str, dict, int]:
    fp, spec, info, _chunk_cfg = fingerprint.current(settings)
    dim = info.dim
    if not dim:  # a hub model: only loading tells the dimension
        from tandem.knowledge.embedding import configured_embedder

        dim = configured_embedder(settings, info.ref).dim
        spec = {**spec, "dim": dim}
        fp = fingerprint.fingerprint_of(spec)
    return fp, spec, dim


def _record(conn, n, space, run_id, mode, owner, full, settings, result) -> None:
    """Under the lease: discard what failed runs left unpublished, allocate the candidate release, persist the
    plan and the run row."""
    lock.check(conn, n, owner)
    conn.execute(sql.SQL("UPDATE {r} SET status = 'abandoned', finished_at = now() WHERE status = 'running'")
                 .format(r=ident(n.runs)))
    result["discarded"] = releases.discard(conn, n, space)
    result["release"] = releases.allocate(conn, n, space.space_no, run_id)
    diff.record_plan(conn, n, run_id, space.space_no, settings.reindex_batch_docs, settings.max_attempts)
    result["batches"] = [r[0] for r in conn.execute(sql.SQL("""
        SELECT DISTINCT batch_no FROM {rd} WHERE run_id = %s AND batch_no IS NOT NULL ORDER BY 1""")
        .format(rd=ident(n.run_docs)), (run_id,))]
    _insert_run(conn, n, run_id, space.space_no, mode, "running", owner, result)


class _Brake(JobFailed):
    def __init__(self, result: dict):
        super().__init__(result["message"], fix="if the deletions are intended, rerun with --allow-mass-delete "
                         "(DAG param allow_mass_delete); if a mount is missing, fix it", summary=result)


def _brake(settings: Settings, counts: dict, allow: bool) -> dict:
    total, deleting = counts["indexed_total"], counts["indexed_deleted"]
    fraction = deleting / total if total else 0.0
    over = total > 0 and fraction > settings.mass_delete_fraction
    out = {"deleting": deleting, "indexed": total, "fraction": round(fraction, 4),
           "limit": settings.mass_delete_fraction, "blocked": bool(over and not allow), "allowed": bool(over and allow)}
    if over:
        out["message"] = (f"the run would delete {deleting} of {total} indexed documents ({fraction:.0%} > "
                          f"{settings.mass_delete_fraction:.0%}); " +
                          ("allowed by allow_mass_delete" if allow else "nothing was deleted or changed"))
    return out


def _insert_run(conn, n, run_id, space_no, mode, status, owner, plan_dict) -> None:
    plan_small = {k: v for k, v in plan_dict.items() if k not in ("ids", "errors")}
    conn.execute(sql.SQL("""
        INSERT INTO {r} (run_id, space_no, mode, status, owner, release_no, params, plan)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (run_id) DO UPDATE SET status = EXCLUDED.status, plan = EXCLUDED.plan, owner = EXCLUDED.owner
        """).format(r=ident(n.runs)),
        (run_id, space_no, mode, status, owner or "", plan_dict.get("release"),
         _json({"full": plan_dict.get("full"), "sources": plan_dict.get("sources")}), _json(plan_small)))


# --------------------------------------------------------------------------------------------- batches
def process_batch(settings: Settings, the_plan: dict, batch_no: int, *, owner: str, progress=None) -> dict:
    """Embed and write the not-yet-done documents of one batch. Safe to retry."""
    import numpy as np

    from tandem.knowledge import scan, sources as src, writer
    from tandem.knowledge.chunking import ChunkConfig, chunk_document
    from tandem.knowledge.embedding import configured_embedder

    n = store.names(settings.index_name)
    run_id = the_plan["run_id"]
    started = time.monotonic()
    times = {"read": 0.0, "chunk": 0.0, "embed": 0.0, "write": 0.0}
    stats = {"batch_no": batch_no, "docs": 0, "written": 0, "failed": 0, "quarantined": 0, "chunks_embedded": 0,
             "changed_during_run": 0}
    _, _spec, info, chunk_cfg = fingerprint.current(settings)
    if the_plan.get("fingerprint") != _fingerprint_of(settings):
        raise JobFailed("the embedding settings changed between the plan and this batch",
                        fix="rerun the reindex; settings must not change during a run")
    embedder = configured_embedder(settings, info.ref)
    chunk_cfg = ChunkConfig(chunk_size=chunk_cfg.chunk_size, chunk_overlap=chunk_cfg.chunk_overlap,
                            max_seq_length=min(chunk_cfg.max_seq_length, embedder.max_seq_length),
                            model_ref=info.ref)
    reader = src.Reader()
    group_chunks = max(settings.embed_batch_size * 16, 256)  # length-sorted within a group: big groups pad less
    lease = lock.Lease(settings.db_url, n, owner, None)
    own_progress = progress is None
    if own_progress:  # in an Airflow task: progress log lines (counts and rates) every 10 s
        progress = Progress(f"batch {batch_no}", None, bar=False)
    with db.connection(settings.db_url) as conn:
        with conn.cursor() as cur:
            docs = cur.execute(sql.SQL("""
                SELECT doc_id, uri, source, planned_hash FROM {rd}
                WHERE run_id = %s AND batch_no = %s AND outcome IS NULL ORDER BY doc_id""")
                .format(rd=ident(n.run_docs)), (run_id, batch_no)).fetchall()
        conn.commit()
        stats["docs"] = len(docs)
        if progress.total is None:
            progress.set_total(len(docs))
        if embedder.dim != _space_dim(conn, n, the_plan["space_no"]):
            raise JobFailed(f"the embedding model gives {embedder.dim}-d vectors but the index space expects "
                            f"{_space_dim(conn, n, the_plan['space_no'])}", fix="check TANDEM_EMBED_MODEL")

        def fail(doc_id, uri, source, marker, reason):
            status, attempts = writer.record_failure(
                conn, n, space_no=the_plan["space_no"], owner=owner, run_id=run_id, doc_id=doc_id, source=source,
                uri=uri, failed_hash=marker, error=reason, max_attempts=settings.max_attempts)
            stats["failed"] += 1
            stats["quarantined"] += status == "quarantined"
            log.warning("document %s failed (attempt %d%s): %s", doc_id, attempts,
                        ", quarantined" if status == "quarantined" else "", reason)

        def flush(pending):
            if not pending:
                return
            texts = [c.embed_text for w in pending for c in w.chunks]
            t0 = time.monotonic()
            try:
                vectors = embedder.encode(texts, batch_size=settings.embed_batch_size)
            except Exception:  # noqa: BLE001 - isolate the document that breaks the model
                vectors = None
            times["embed"] += time.monotonic() - t0
            offset = 0
            for w in pending:
                if vectors is not None:
                    w.vectors = vectors[offset:offset + len(w.chunks)]
                    offset += len(w.chunks)
                else:
                    try:
                        w.vectors = embedder.encode([c.embed_text for c in w.chunks],
                                                    batch_size=settings.embed_batch_size)
                    except Exception as exc:  # noqa: BLE001
                        fail(w.doc_id, w.uri, w.source, w.content_hash, f"embedding failed: {exc}")
                        continue
                t1 = time.monotonic()
                try:
                    writer.write_document(conn, n, table=the_plan["table"], space_no=the_plan["space_no"],
                                          owner=owner, run_id=run_id, doc=w, fingerprint=the_plan["fingerprint"],
                                          release=the_plan["release"], manifest_now=the_plan["manifest_now"])
                    stats["written"] += 1
                    stats["chunks_embedded"] += len(w.chunks)
                except lock.LeaseLost:
                    raise
                except Exception as exc:  # noqa: BLE001 - the document fails; its previous version stays
                    conn.rollback()
                    fail(w.doc_id, w.uri, w.source, w.content_hash, f"write failed: {type(exc).__name__}: {exc}")
                times["write"] += time.monotonic() - t1
                if progress is not None:
                    progress.update()
            lease.heartbeat(every_s=30)

        pending: list = []
        pending_chunks = 0
        for doc_id, uri, source, planned_hash in docs:
            t0 = time.monotonic()
            doc, marker, error = scan.load(reader, doc_id, uri, settings.max_file_bytes)
            times["read"] += time.monotonic() - t0
            if error is None and planned_hash is not None and marker != planned_hash:  # the file changed since the plan
                writer.record_changed_during_run(conn, n, owner=owner, run_id=run_id, doc_id=doc_id)
                stats["changed_during_run"] += 1
                log.warning("document %s changed during the run (planned %s, read %s): not indexed now; the next "
                            "run indexes its new content", doc_id, planned_hash[:12], marker[:12])
                if progress is not None:
                    progress.update()
                continue
            if error is not None:
                fail(doc_id, uri, source, marker, error)
                if progress is not None:
                    progress.update()
                continue
            t0 = time.monotonic()
            try:
                chunks = chunk_document(doc_id, doc, chunk_cfg)
                if not chunks:
                    raise ValueError("no text to index")
            except Exception as exc:  # noqa: BLE001
                times["chunk"] += time.monotonic() - t0
                fail(doc_id, uri, source, marker, f"chunking failed: {exc}")
                if progress is not None:
                    progress.update()
                continue
            times["chunk"] += time.monotonic() - t0
            pending.append(writer.DocWrite(doc_id=doc_id, source=source, uri=uri, title=doc.title,
                                           content_hash=doc.content_hash, fmt=doc.fmt, chunks=chunks,
                                           vectors=np.zeros((0,))))
            pending_chunks += len(chunks)
            if pending_chunks >= group_chunks:
                flush(pending)
                pending, pending_chunks = [], 0
        flush(pending)
    if own_progress:
        progress.close()
    stats["seconds"] = {k: _r(v) for k, v in times.items()}
    stats["wall"] = _r(time.monotonic() - started)
    log.info("batch %s: %d docs, %d written, %d failed, %d chunks in %.1fs (%.1f chunks/s)", batch_no, stats["docs"],
             stats["written"], stats["failed"], stats["chunks_embedded"], stats["wall"],
             stats["chunks_embedded"] / max(stats["wall"], 1e-9))
    return stats


def group_batches(batches: list[int], max_groups: int) -> list[list[int]]:
    """Contiguous groups of batch numbers, at most ``max_groups`` of them (Airflow's ``core.max_map_length``
    caps the tasks one mapped task may expand to)."""
    batches = list(batches)
    groups = max(1, min(len(batches), int(max_groups)))
    size, extra = divmod(len(batches), groups)
    out, start = [], 0
    for g in range(groups):
        end = start + size + (1 if g < extra else 0)
        if end > start:
            out.append(batches[start:end])
        start = end
    return out


def process_batches(settings: Settings, the_plan: dict, batch_nos: list[int], *, owner: str) -> dict:
    """Several batches in one task (see ``group_batches``); their stats summed."""
    stats = [process_batch(settings, the_plan, b, owner=owner) for b in batch_nos]
    out = {"batch_no": batch_nos[0] if batch_nos else None, "batches": list(batch_nos)}
    for key in ("docs", "written", "failed", "quarantined", "chunks_embedded", "changed_during_run", "wall"):
        out[key] = sum(s.get(key, 0) for s in stats)
    out["seconds"] = {k: _r(sum(s["seconds"].get(k, 0.0) for s in stats)) for k in ("read", "chunk", "embed", "write")}
    return out


def _fingerprint_of(settings: Settings) -> str:
    return fingerprint.current(settings)[0]


def _space_dim(conn, n, space_no: int) -> int:
    row = conn.execute(sql.SQL("SELECT dim FROM {s} WHERE space_no = %s").format(s=ident(n.spaces)),
                       (space_no,)).fetchone()
    conn.commit()
    return row[0]


# --------------------------------------------------------------------------------------------- finalize
def finalize(settings: Settings, the_plan: dict, batch_stats: list[dict], *, owner: str,
             log_mlflow: bool = True) -> dict:
    """Deletes, canary, publish, summary. Returns the summary; raises JobFailed when the run failed (then the
    published release is exactly as it was).

    Safe to retry: when an earlier try of this run already published its release (it died after the commit,
    before reporting success), nothing is deleted, measured or published again; the summary is the one that
    try recorded, or is built now from what it committed."""
    n = store.names(settings.index_name)
    phases = _batch_phases(the_plan, batch_stats)
    with db.connection(settings.db_url) as conn:
        space = spaces.by_fingerprint(conn, n, the_plan["fingerprint"])
        done = releases.published_by(conn, n, the_plan["release"], the_plan["run_id"])
        conn.commit()
        if done is not None:
            summary = _finish_published(settings, conn, n, the_plan, space, batch_stats, phases, done,
                                        log_mlflow=log_mlflow)
        else:
            summary = _finalize_candidate(settings, conn, n, the_plan, space, batch_stats, phases, owner=owner,
                                          log_mlflow=log_mlflow)
    summary = summaries.jsonable(summary)
    log.info("reindex %s %s: release %s, %s new, %s changed, %s deleted, %s failed, %s chunks in %.1fs",
             the_plan["run_id"], summary["status"], summary["index_version"], summary["new"], summary["changed"],
             summary["deleted"], summary["failed"], summary["chunks_embedded"], summary["seconds"])
    if summary["status"] == "failed":
        raise JobFailed(summary.get("message") or "the reindex failed", summary=summary)
    return summary


def _finalize_candidate(settings: Settings, conn, n, the_plan: dict, space, batch_stats: list[dict], phases: dict,
                        *, owner: str, log_mlflow: bool) -> dict:
    """The first complete try: deletes, canary, publish when it passed, summary and record."""
    deleted = apply_deletes(conn, n, the_plan, owner, phases)
    docs = _document_outcomes(conn, n, the_plan)
    wrote = sum(b.get("written", 0) for b in batch_stats) > 0 or deleted > 0
    switch = the_plan["mode"] == "build"
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


def _finish_published(settings: Settings, conn, n, the_plan: dict, space, batch_stats: list[dict], phases: dict,
                      done: dict, *, log_mlflow: bool) -> dict:
    """A retry after the publish committed: the recorded summary, or one built (and recorded) from the commit."""
    row = conn.execute(sql.SQL("SELECT status, summary FROM {r} WHERE run_id = %s").format(r=ident(n.runs)),
                       (the_plan["run_id"],)).fetchone()
    conn.commit()
    if row and row[0] == "succeeded" and row[1]:
        log.info("release %s was already published and recorded by an earlier try of %s", done["release"],
                 the_plan["run_id"])
        return row[1]
    log.info("release %s was already published by an earlier try of %s: recording it, publishing nothing again",
             done["release"], the_plan["run_id"])
    deleted = conn.execute(sql.SQL("SELECT count(*) FROM {rd} WHERE run_id = %s AND outcome = 'deleted'")
                           .format(rd=ident(n.run_docs)), (the_plan["run_id"],)).fetchone()[0]
    conn.commit()
    docs = _document_outcomes(conn, n, the_plan)
    canary_result = done["canary"] or {}
    published = {"release": done["release"], "switched": the_plan["mode"] == "build", "collected": {"rows": 0}}
    summary = build_summary(conn, n, the_plan, space, batch_stats, phases, deleted=deleted, docs=docs,
                            canary_result=canary_result, status="succeeded", message=None, published=published)
    record(settings, conn, n, the_plan, summary, canary_result, log_mlflow=log_mlflow)
    return summary


def _batch_phases(the_plan: dict, batch_stats: list[dict]) -> dict:
    phases = dict(the_plan.get("phases") or {})
    for key in ("read", "chunk", "embed", "write"):
        phases[key] = _r(sum((b.get("seconds") or {}).get(key, 0.0) for b in batch_stats))
    return phases


def apply_deletes(conn, n, the_plan: dict, owner: str, phases: dict) -> int:
    """The run's deleted documents leave the candidate release (one transaction)."""
    from tandem.knowledge import writer

    t0 = time.monotonic()
    deleted = writer.delete_documents(conn, n, table=the_plan["table"], space_no=the_plan["space_no"], owner=owner,
                                      run_id=the_plan["run_id"], release=the_plan["release"],
                                      manifest_now=the_plan["manifest_now"])
    phases["delete"] = _r(time.monotonic() - t0)
    return deleted


def _document_outcomes(conn, n, the_plan: dict) -> dict:
    """Pending (a batch did not finish), failed and quarantined documents; for a shadow space, the documents it
    failed that the live space serves."""
    run_id, space_no = the_plan["run_id"], the_plan["space_no"]
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


def run_canary(settings: Settings, conn, n, the_plan: dict, space, *, wrote: bool, phases: dict) -> dict:
    """Measure the candidate release against the golden set and judge it (baseline and floor)."""
    from tandem.knowledge.search import embedder_for

    if the_plan["mode"] == "build":  # a filled shadow space gets its HNSW index in one bulk build
        t0 = time.monotonic()
        with conn.transaction():
            store.ensure_hnsw(conn, the_plan["table"])
        phases["hnsw"] = _r(time.monotonic() - t0)
    t0 = time.monotonic()
    items, golden_sha, skip = canary.load_golden(settings.canary_path)
    if skip:
        result = {"status": "skipped", "reason": skip}
    else:
        ref = canary.reference(conn, n, golden_sha, settings.canary_k, settings.canary_floor_releases,
                               settings.canary_floor_tolerance)
        carry = canary.last_measured_is_good(conn, n, golden_sha, settings.canary_k)
        conn.commit()
        if not wrote and the_plan["mode"] != "build" and ref is not None and carry:
            result = {"hit_at_k": ref["hit_at_k"], "mrr": ref["mrr"], "k": settings.canary_k,
                      "status": "unchanged", "reason": f"index unchanged since release {ref['release']}: "
                                                       "metrics carried over"}
        else:
            measured = canary.evaluate(conn, the_plan["table"], embedder_for(settings, space), items,
                                       settings.canary_k, settings.hnsw_ef_search, release=the_plan["release"])
            result = canary.judge(measured, ref, settings.canary_max_drop)
    if golden_sha:
        result.update(golden_sha256=golden_sha, k=settings.canary_k, path=str(settings.canary_path))
    phases["canary"] = _r(time.monotonic() - t0)
    return result


def _verdict(the_plan: dict, docs: dict, canary_result: dict) -> tuple[str, str | None]:
    """("succeeded" | "failed", message)."""
    switch = the_plan["mode"] == "build"
    if docs["pending"]:
        return "failed", (f"{docs['pending']} planned documents were not processed (a batch did not finish); "
                          "nothing was published")
    if canary_result.get("status") == "failed":
        return "failed", ("retrieval canary regressed: " + canary_result.get("reason", "") +
                          ("; the new embedding space was NOT switched in" if switch else
                           f"; release {the_plan['release']} was NOT published (the live index is unchanged)"))
    if switch and docs["changed_during_run"]:
        return "failed", (f"{len(docs['changed_during_run'])} documents changed during the run, so the new embedding "
                          "space lacks them: not switched in (the live index is unchanged); the next run indexes them")
    if switch and docs["lost_by_switch"]:
        return "failed", (f"the new embedding space failed {docs['lost_by_switch']} documents that the live space "
                          "serves: not switched in (the live index is unchanged); the next run retries them (after "
                          "max_attempts they are quarantined and the switch goes ahead)")
    return "succeeded", None


def _counts(the_plan: dict, deleted: int, docs: dict, batch_stats: list[dict]) -> dict:
    return {"new": the_plan["new"], "changed": the_plan["changed"], "unchanged": the_plan["unchanged"],
            "deleted": deleted, "failed": len(docs["failed"]), "quarantined": len(docs["quarantined"]),
            "changed_during_run": len(docs["changed_during_run"]),
            "written": sum(b.get("written", 0) for b in batch_stats),
            "chunks_embedded": sum(b.get("chunks_embedded", 0) for b in batch_stats)}


def publish(settings: Settings, conn, n, the_plan: dict, space, owner: str, *, switch: bool, phases: dict,
            counts: dict, canary_result: dict) -> dict:
    """One short transaction: the candidate becomes the published release (a shadow space is switched in).
    Then, outside it: drop retired tables, collect rows no kept release can see."""
    t0 = time.monotonic()
    conn.commit()  # the publish below must be a transaction of its own, not a savepoint in a read
    with conn.transaction():
        lock.check(conn, n, owner)
        drop = releases.publish(conn, n, space, the_plan["release"], the_plan["run_id"], switch=switch,
                                counts=counts, canary=canary_result)
        faults.point("during_publish")
    phases["publish"] = _r(time.monotonic() - t0)
    if drop:
        spaces.drop_tables(conn, drop)
    t0 = time.monotonic()
    with conn.transaction():
        collected = releases.collect(conn, n, spaces.by_fingerprint(conn, n, the_plan["fingerprint"]),
                                     settings.keep_releases)
    phases["collect"] = _r(time.monotonic() - t0)
    log.info("published release %s%s; collected %s superseded rows", the_plan["release"],
             " (embedding space switched)" if switch else "", collected["rows"])
    return {"release": the_plan["release"], "switched": switch, "collected": collected}


def build_summary(conn, n, the_plan: dict, space, batch_stats: list[dict], phases: dict, *, deleted: int, docs: dict,
                  canary_result: dict, status: str, message: str | None, published: dict | None) -> dict:
    live = spaces.live(conn, n)
    total = conn.execute(sql.SQL("SELECT extract(epoch FROM now() - started_at) FROM {r} WHERE run_id = %s")
                         .format(r=ident(n.runs)), (the_plan["run_id"],)).fetchone()[0]
    conn.commit()
    batch_wall = sum(b.get("wall", 0.0) for b in batch_stats)
    counts = _counts(the_plan, deleted, docs, batch_stats)
    summary = {
        "run_id": the_plan["run_id"], "index": n.index, "status": status, "mode": the_plan["mode"], "dry_run": False,
        "full": the_plan.get("full"), "sources": the_plan.get("sources"),
        "sources_from": the_plan.get("sources_from"), **counts,
        "index_version": live.version if live else None,
        "release": {"no": the_plan["release"], "published": published is not None,
                    "collected_rows": (published or {}).get("collected", {}).get("rows", 0)},
        "space": {"no": space.space_no, "fingerprint": space.fingerprint,
                  "switched": bool(published and published["switched"]), "model": space.spec.get("model_ref", ""),
                  "backend": str(space.spec.get("backend", "torch")).split("/")[0]},
        "seconds": _r(total), "phases": phases,
        "docs_per_s": _r((counts["written"] + sum(b.get("failed", 0) for b in batch_stats)) / batch_wall)
        if batch_wall else 0.0,
        "chunks_per_s": _r(counts["chunks_embedded"] / batch_wall) if batch_wall else 0.0,
        "delete_brake": the_plan.get("delete_brake"),
        "canary": canary_result,
        "errors": [{"doc_id": d, "reason": e or ""} for d, e in docs["failed"][:MAX_LISTED_ERRORS]],
        "quarantined_docs": [{"doc_id": d, "reason": e or "", "attempts": a}
                             for d, e, a in docs["quarantined"][:MAX_LISTED_ERRORS]],
        "changed_during_run_docs": docs["changed_during_run"][:MAX_LISTED_ERRORS],
    }
    if message:
        summary["message"] = message
    return summary


def record(settings: Settings, conn, n, the_plan: dict, summary: dict, canary_result: dict, *,
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
                     .format(r=ident(n.runs)), (summary["status"], _json(summary), _json(canary_result),
                                                the_plan["run_id"]))
        if summary["status"] == "failed":
            releases.fail(conn, n, the_plan["release"], summary.get("message") or "failed",
                          counts={k: summary[k] for k in ("new", "changed", "deleted", "written")}, canary=canary_result)
        elif not summary["release"]["published"]:
            releases.forget(conn, n, the_plan["release"])
        conn.execute(sql.SQL("""
            DELETE FROM {rd} WHERE run_id NOT IN (SELECT run_id FROM {r} ORDER BY started_at DESC LIMIT 5)""")
                     .format(rd=ident(n.run_docs), r=ident(n.runs)))


def mark_failed(settings: Settings, run_id: str, message: str) -> None:
    """Record a run that stopped before finalize (a batch raised, the process is going down)."""
    n = store.names(settings.index_name)
    try:
        with db.connection(settings.db_url) as conn:
            conn.execute(sql.SQL("""
                UPDATE {r} SET status = 'failed', finished_at = now(),
                    summary = coalesce(summary, plan) || jsonb_build_object('status', 'failed', 'message', %s::text)
                WHERE run_id = %s AND status = 'running'""").format(r=ident(n.runs)), (message[:2000], run_id))
            if store.exists(conn, n.releases):
                conn.execute(sql.SQL("""UPDATE {r} SET status = 'failed', ended_at = now(), message = %s
                                        WHERE run_id = %s AND status = 'candidate'""").format(r=ident(n.releases)),
                             (message[:2000], run_id))
            conn.commit()
    except Exception as exc:  # noqa: BLE001 - best effort while failing
        log.warning("could not record run %s as failed: %s", run_id, exc)


def mark_failed_by_owner(settings: Settings, owner: str, message: str) -> None:
    """Record every still-running run of ``owner`` as failed (the DAG's teardown)."""
    n = store.names(settings.index_name)
    with db.connection(settings.db_url) as conn:
        if not store.exists(conn, n.runs):
            return
        rows = conn.execute(sql.SQL("SELECT run_id FROM {r} WHERE owner = %s AND status = 'running'")
                            .format(r=ident(n.runs)), (owner,)).fetchall()
    for (run_id,) in rows:
        mark_failed(settings, run_id, message)


# --------------------------------------------------------------------------------------------- one process
def run(settings: Settings, *, sources=None, full: bool = False, dry_run: bool = False,
        allow_mass_delete: bool = False, progress: bool = True, force: list[str] | None = None) -> dict:
    """The whole reindex in this process (the CLI). Returns the summary; raises JobFailed when the run failed."""
    run_id = new_run_id("cli")
    if dry_run:
        return summaries.jsonable(plan(settings, run_id=run_id, owner=None, sources=sources, full=full,
                                       dry_run=True, allow_mass_delete=allow_mass_delete, progress=progress))
    owner = lock.new_owner("cli")
    lease = acquire_lease(settings, owner, keep_connection=True)
    try:
        try:
            the_plan = plan(settings, run_id=run_id, owner=owner, sources=sources, full=full,
                            allow_mass_delete=allow_mass_delete, progress=progress, force=force)
        except _Brake as exc:
            raise JobFailed(str(exc.message), fix=exc.fix, summary=summaries.jsonable(exc.summary)) from None
        todo = the_plan["new"] + the_plan["changed"]
        stats = []
        try:
            with Progress("embed", todo, bar=progress) as pr:
                for batch_no in the_plan["batches"]:
                    stats.append(process_batch(settings, the_plan, batch_no, owner=owner, progress=pr))
            return finalize(settings, the_plan, stats, owner=owner)
        except JobFailed:
            raise
        except BaseException as exc:
            mark_failed(settings, run_id, f"{type(exc).__name__}: {exc}")
            raise
    finally:
        lease.release()


def rollback(settings: Settings) -> dict:
    """``tandem index rollback``: the previous published release is served again, in the same embedding space
    or in the previous one (under the lease)."""
    n = store.names(settings.index_name)
    owner = lock.new_owner("rollback")
    with acquire_lease(settings, owner, keep_connection=True):
        with db.connection(settings.db_url) as conn:
            result = releases.rollback(conn, n)
    log.info("rolled back index %s to version %s", n.index, result["index_version"])
    return result


__all__ = ["run", "plan", "process_batch", "finalize", "rollback", "acquire_lease", "new_run_id", "UserError"]
