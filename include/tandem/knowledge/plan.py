"""The reindex's first task: scan the sources, diff them against the manifest and persist the plan.

``make`` takes the lease's owner, picks the target embedding space (the live one, or a shadow when the
fingerprint changed), scans the sources and stages the scan with COPY in short transactions, classifies it in
SQL, checks the mass-delete brake, discards what failed runs left unpublished, allocates the candidate
release and persists the plan (documents of each class, batches of ``reindex_batch_docs``).

The result is a ``ReindexPlan``: the one shape the plan has between tasks (``to_xcom`` / ``from_xcom`` for
Airflow's XCom, where it travels as a plain dict).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from psycopg import sql

from tandem import db, faults
from tandem.config import Settings
from tandem.db import ident
from tandem.errors import JobFailed, UserError
from tandem.knowledge import canary, diff, fingerprint, known_sources, lock, releases, spaces, store
from tandem.knowledge.progress import Progress
from tandem.knowledge.summary import MAX_LISTED_ERRORS, dumps, rounded

log = logging.getLogger("tandem.knowledge")


@dataclasses.dataclass(frozen=True)
class ReindexPlan:
    """What ``make`` decided, read by the batch tasks and ``finalize``.

    ``index_version`` is the release that was live when the plan was made (None: nothing published yet);
    ``candidate_index_version`` is the release this run writes (None for a dry run or a braked plan).
    """

    run_id: str
    index: str
    fingerprint: str
    mode: str  # see spaces.target: "incremental" (the live space) or "build" (a shadow space)
    space_no: int | None
    table: str | None
    manifest_now: bool  # the space is unpublished: the manifest is written with each document
    index_version: int | None
    new: int
    changed: int
    unchanged: int
    deleted: int
    failed: int
    quarantined: int
    scanned: int
    delete_brake: dict
    full: bool = False
    dry_run: bool = False
    sources: list[str] = dataclasses.field(default_factory=list)
    sources_from: str = "given"
    phases: dict = dataclasses.field(default_factory=dict)
    errors: list[dict] = dataclasses.field(default_factory=list)
    candidate_index_version: int | None = None
    batches: list[int] = dataclasses.field(default_factory=list)
    discarded: Any = None
    owner: str | None = None  # the lease's owner (the DAG run), set by the plan task
    ids: dict | None = None  # dry runs: the document ids of each class
    status: str = "planned"  # "dry_run" for a dry run, "failed" when braked
    seconds: float | None = None
    message: str | None = None

    def to_xcom(self) -> dict:
        """The plan as JSON-able data (Airflow's XCom, the CLI's --json, the run row)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_xcom(cls, data: "ReindexPlan | dict") -> "ReindexPlan":
        """The plan from ``to_xcom``'s dict; names it does not know are an error, not silently dropped."""
        if isinstance(data, cls):
            return data
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"the reindex plan has fields this version does not know: {', '.join(unknown)}",
                            fix="run the reindex again from its first task (plan), with one Tandem version on "
                                "every worker")
        return cls(**data)

    def with_(self, **changes: Any) -> "ReindexPlan":
        return dataclasses.replace(self, **changes)


def make(settings: Settings, *, run_id: str, owner: str | None, sources=None, full: bool = False,
         dry_run: bool = False, allow_mass_delete: bool = False, progress: bool = False,
         force: list[str] | None = None) -> ReindexPlan:
    """Scan and diff. Writes the plan (not for dry runs) and returns it; raises ``Brake`` (a JobFailed) at the
    delete brake. ``force``: document ids rewritten (or removed) whatever the manifest says (``tandem index
    verify --repair``).

    About 65 lines: the scan, the classification and the plan's record share one connection and the
    staging table; split, each part would need both handed over."""
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
                    "index_version": live.index_version if live else None,
                    **{c: counts[c] for c in diff.CLASSES}, "scanned": staged, "delete_brake": brake,
                    "errors": [{"doc_id": d, "reason": e} for d, e in diff.failures(conn)[:MAX_LISTED_ERRORS]],
                    "phases": {"scan": rounded(scan_s)},
                }
                if dry_run:
                    result["ids"] = diff.ids_by_class(conn, n, space_no)
                elif not brake["blocked"]:
                    _record(conn, n, space, run_id, mode, owner, full, settings, result)
            result["phases"]["diff"] = rounded(time.monotonic() - t_diff)
        finally:
            diff.drop_staging(conn)
        if dry_run or brake["blocked"]:
            result.update(status="dry_run" if dry_run else "failed", seconds=rounded(time.monotonic() - started))
            if not dry_run:
                result["message"] = brake["message"]
                with conn.transaction():
                    _insert_run(conn, n, run_id, space_no, mode, "failed", owner, result)
                    conn.execute(sql.SQL("UPDATE {r} SET finished_at = now(), summary = %s WHERE run_id = %s")
                                 .format(r=ident(n.runs)), (dumps(result), run_id))
                raise Brake(result)
            return ReindexPlan.from_xcom(result)
    log.info("plan %s: %s new, %s changed, %s unchanged, %s deleted, %s failed, %s quarantined; %d batches (%s, "
             "candidate release %s)", run_id, result["new"], result["changed"], result["unchanged"], result["deleted"],
             result["failed"], result["quarantined"], len(result["batches"]), mode, result["candidate_index_version"])
    faults.point("after_plan")
    return ReindexPlan.from_xcom(result)


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
    result["candidate_index_version"] = releases.allocate(conn, n, space.space_no, run_id)
    diff.record_plan(conn, n, run_id, space.space_no, settings.reindex_batch_docs, settings.max_attempts)
    result["batches"] = [r[0] for r in conn.execute(sql.SQL("""
        SELECT DISTINCT batch_no FROM {rd} WHERE run_id = %s AND batch_no IS NOT NULL ORDER BY 1""")
        .format(rd=ident(n.run_docs)), (run_id,))]
    _insert_run(conn, n, run_id, space.space_no, mode, "running", owner, result)


class Brake(JobFailed):
    """The mass-delete brake stopped the run; ``summary`` is the plan as it would have been."""

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
        INSERT INTO {r} (run_id, space_no, mode, status, owner, index_version, params, plan)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (run_id) DO UPDATE SET status = EXCLUDED.status, plan = EXCLUDED.plan, owner = EXCLUDED.owner
        """).format(r=ident(n.runs)),
        (run_id, space_no, mode, status, owner or "", plan_dict.get("candidate_index_version"),
         dumps({"full": plan_dict.get("full"), "sources": plan_dict.get("sources")}), dumps(plan_small)))
