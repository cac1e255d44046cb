"""The reindex's batch tasks: read, extract, chunk and embed each new or changed document of a batch, and
write each one atomically into the candidate release (invisible to readers until ``publish``).

A batch is safe to retry: documents with an outcome are skipped. ``group`` bundles batch numbers into at most
``core.max_map_length`` mapped tasks; ``process_many`` runs one such bundle.
"""

from __future__ import annotations

import logging
import time

from psycopg import sql

from tandem import db
from tandem.config import Settings
from tandem.db import ident
from tandem.errors import JobFailed
from tandem.knowledge import fingerprint, lock, store
from tandem.knowledge.formats.bounded import BoundedExtractor
from tandem.knowledge.plan import ReindexPlan
from tandem.knowledge.progress import Progress
from tandem.knowledge.summary import rounded

log = logging.getLogger("tandem.knowledge")

PHASES = ("read", "chunk", "embed", "write")
COUNTS = ("docs", "written", "failed", "quarantined", "chunks_embedded", "changed_during_run")


def group(batches: list[int], max_groups: int) -> list[list[int]]:
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


def process_many(settings: Settings, the_plan: ReindexPlan, batch_nos: list[int], *, owner: str) -> dict:
    """Several batches in one task (see ``group``); their stats summed."""
    stats = [process(settings, the_plan, b, owner=owner) for b in batch_nos]
    out = {"batch_no": batch_nos[0] if batch_nos else None, "batches": list(batch_nos)}
    for key in (*COUNTS[1:], "docs", "wall"):
        out[key] = sum(s.get(key, 0) for s in stats)
    out["seconds"] = {k: rounded(sum(s["seconds"].get(k, 0.0) for s in stats)) for k in PHASES}
    return out


def process(settings: Settings, the_plan: ReindexPlan, batch_no: int, *, owner: str, progress=None) -> dict:
    """Embed and write the not-yet-done documents of one batch. Safe to retry. Returns the batch's stats."""
    started = time.monotonic()
    own_progress = progress is None
    if own_progress:  # in an Airflow task: progress log lines (counts and rates) every 10 s
        progress = Progress(f"batch {batch_no}", None, bar=False)
    job = _Batch(settings, the_plan, batch_no, owner, progress)
    with db.connection(settings.db_url) as conn:
        job.run(conn)
    if own_progress:
        progress.close()
    stats = {**job.stats, "seconds": {k: rounded(v) for k, v in job.times.items()},
             "wall": rounded(time.monotonic() - started)}
    log.info("batch %s: %d docs, %d written, %d failed, %d chunks in %.1fs (%.1f chunks/s)", batch_no, stats["docs"],
             stats["written"], stats["failed"], stats["chunks_embedded"], stats["wall"],
             stats["chunks_embedded"] / max(stats["wall"], 1e-9))
    return stats


class _Batch:
    """One batch's work: its documents are read and chunked one by one, embedded in length-sorted groups of
    about ``embed_batch_size * 16`` chunks, and written one document per transaction."""

    def __init__(self, settings: Settings, the_plan: ReindexPlan, batch_no: int, owner: str, progress) -> None:
        from tandem.knowledge import sources as src
        from tandem.knowledge.chunking import ChunkConfig
        from tandem.knowledge.embedding import configured_embedder

        self.settings, self.plan, self.batch_no, self.owner, self.progress = settings, the_plan, batch_no, owner, progress
        self.n = store.names(settings.index_name)
        self.times = {k: 0.0 for k in PHASES}
        self.stats = {"batch_no": batch_no, **{k: 0 for k in COUNTS}}
        fp, _spec, info, chunk_cfg = fingerprint.current(settings)
        if the_plan.fingerprint != fp:
            raise JobFailed("the embedding settings changed between the plan and this batch",
                            fix="rerun the reindex; settings must not change during a run")
        self.embedder = configured_embedder(settings, info.ref)
        self.chunk_cfg = ChunkConfig(chunk_size=chunk_cfg.chunk_size, chunk_overlap=chunk_cfg.chunk_overlap,
                                     max_seq_length=min(chunk_cfg.max_seq_length, self.embedder.max_seq_length),
                                     model_ref=info.ref)
        self.reader = src.Reader()
        self.extractor = BoundedExtractor.from_settings(settings)  # PDF, Office: a worker starts at the first
        self.group_chunks = max(settings.embed_batch_size * 16, 256)  # length-sorted in a group: big groups pad less
        self.lease = lock.Lease(settings.db_url, self.n, owner, None)
        self.conn = None

    def run(self, conn) -> None:
        try:
            self._run(conn)
        finally:
            self.extractor.close()

    def _run(self, conn) -> None:
        self.conn = conn
        docs = self._documents()
        self.stats["docs"] = len(docs)
        if self.progress.total is None:
            self.progress.set_total(len(docs))
        expected = _space_dim(conn, self.n, self.plan.space_no)
        if self.embedder.dim != expected:
            raise JobFailed(f"the embedding model gives {self.embedder.dim}-d vectors but the index space expects "
                            f"{expected}", fix="check TANDEM_EMBED_MODEL")
        pending: list = []
        pending_chunks = 0
        for doc_id, uri, source, planned_hash in docs:
            write = self._prepare(doc_id, uri, source, planned_hash)
            if write is None:
                self._advance()
                continue
            pending.append(write)
            pending_chunks += len(write.chunks)
            if pending_chunks >= self.group_chunks:
                self._flush(pending)
                pending, pending_chunks = [], 0
        self._flush(pending)

    def _documents(self) -> list[tuple]:
        with self.conn.cursor() as cur:
            docs = cur.execute(sql.SQL("""
                SELECT doc_id, uri, source, planned_hash FROM {rd}
                WHERE run_id = %s AND batch_no = %s AND outcome IS NULL ORDER BY doc_id""")
                .format(rd=ident(self.n.run_docs)), (self.plan.run_id, self.batch_no)).fetchall()
        self.conn.commit()
        return docs

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.update()

    def _prepare(self, doc_id: str, uri: str, source: str, planned_hash: str | None):
        """The document read and chunked, ready to embed; None when it failed or changed since the plan."""
        import numpy as np

        from tandem.knowledge import scan, writer
        from tandem.knowledge.chunking import chunk_document

        t0 = time.monotonic()
        doc, marker, error = scan.load(self.reader, doc_id, uri, self.settings.max_file_bytes, self.extractor)
        self.times["read"] += time.monotonic() - t0
        if error is None and planned_hash is not None and marker != planned_hash:  # the file changed since the plan
            writer.record_changed_during_run(self.conn, self.n, owner=self.owner, run_id=self.plan.run_id,
                                             doc_id=doc_id)
            self.stats["changed_during_run"] += 1
            log.warning("document %s changed during the run (planned %s, read %s): not indexed now; the next "
                        "run indexes its new content", doc_id, planned_hash[:12], marker[:12])
            return None
        if error is not None:
            self._fail(doc_id, uri, source, marker, error)
            return None
        t0 = time.monotonic()
        try:
            chunks = chunk_document(doc_id, doc, self.chunk_cfg)
            if not chunks:
                raise ValueError("no text to index")
        except Exception as exc:  # noqa: BLE001 - the document fails, the batch goes on
            self._fail(doc_id, uri, source, marker, f"chunking failed: {exc}")
            return None
        finally:
            self.times["chunk"] += time.monotonic() - t0
        return writer.DocWrite(doc_id=doc_id, source=source, uri=uri, title=doc.title, content_hash=doc.content_hash,
                               fmt=doc.fmt, chunks=chunks, vectors=np.zeros((0,)))

    def _fail(self, doc_id, uri, source, marker, reason) -> None:
        from tandem.knowledge import writer

        status, attempts = writer.record_failure(
            self.conn, self.n, space_no=self.plan.space_no, owner=self.owner, run_id=self.plan.run_id, doc_id=doc_id,
            source=source, uri=uri, failed_hash=marker, error=reason, max_attempts=self.settings.max_attempts)
        self.stats["failed"] += 1
        self.stats["quarantined"] += status == "quarantined"
        log.warning("document %s failed (attempt %d%s): %s", doc_id, attempts,
                    ", quarantined" if status == "quarantined" else "", reason)

    def _embed(self, texts: list[str]):
        return self.embedder.encode(texts, batch_size=self.settings.embed_batch_size)

    def _flush(self, pending: list) -> None:
        """Embed the group in one call (a document that breaks the model is retried alone), then write each."""
        if not pending:
            return
        t0 = time.monotonic()
        try:
            vectors = self._embed([c.embed_text for w in pending for c in w.chunks])
        except Exception:  # noqa: BLE001 - isolate the document that breaks the model
            vectors = None
        self.times["embed"] += time.monotonic() - t0
        offset = 0
        for w in pending:
            if vectors is not None:
                w.vectors = vectors[offset:offset + len(w.chunks)]
                offset += len(w.chunks)
            else:
                try:
                    w.vectors = self._embed([c.embed_text for c in w.chunks])
                except Exception as exc:  # noqa: BLE001
                    self._fail(w.doc_id, w.uri, w.source, w.content_hash, f"embedding failed: {exc}")
                    continue
            self._write(w)
            self._advance()
        self.lease.heartbeat(every_s=30)

    def _write(self, w) -> None:
        from tandem.knowledge import writer

        t1 = time.monotonic()
        p = self.plan
        try:
            writer.write_document(self.conn, self.n, table=p.table, space_no=p.space_no, owner=self.owner,
                                  run_id=p.run_id, doc=w, fingerprint=p.fingerprint, release=p.candidate_index_version,
                                  manifest_now=p.manifest_now)
            self.stats["written"] += 1
            self.stats["chunks_embedded"] += len(w.chunks)
        except lock.LeaseLost:
            raise
        except Exception as exc:  # noqa: BLE001 - the document fails; its previous version stays
            self.conn.rollback()
            self._fail(w.doc_id, w.uri, w.source, w.content_hash, f"write failed: {type(exc).__name__}: {exc}")
        self.times["write"] += time.monotonic() - t1


def _space_dim(conn, n, space_no: int) -> int:
    row = conn.execute(sql.SQL("SELECT dim FROM {s} WHERE space_no = %s").format(s=ident(n.spaces)),
                       (space_no,)).fetchone()
    conn.commit()
    return row[0]
