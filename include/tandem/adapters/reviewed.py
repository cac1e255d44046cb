"""Reviewed answers feed the retrain: served answers a reviewer corrected become training rows.

1. ``collect``: the answer traces (experiment ``trace_experiment``) that carry an expectation
   ``corrected_answer`` (``POST /api/feedback``), newest first, at most ``MAX_FETCH`` read. A trace whose
   question or correction was redacted (``trace_redact_text``) cannot be trained on: it is counted and
   logged, never silently skipped.
2. ``sync``: they are merged into the versioned MLflow evaluation dataset ``tandem-reviewed-answers``
   (one record per trace: the question as ``inputs``, the correction and the documents the answer cited as
   ``expectations``, the trace id, adapter and index release as ``tags``); its digest goes on the run.
3. ``rows``: one RAFT row per record, always in the **training** split (kind ``reviewed``), never held out:
   the held-out rows stay the curated examples', so the gate compares every retrain on the same rows. The
   context is rebuilt from the live index (the chunks of the cited documents most relevant to the question,
   or the question's best chunks when it cited none): the adapter learns to answer in that form from its
   context, and the gate's base check keeps a retrain from making answers less correct than the base model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from tandem import tracking
from tandem.adapters import dataset
from tandem.config import Settings

log = logging.getLogger(__name__)

DATASET_NAME = "tandem-reviewed-answers"
EXPECTATION = tracking.ASSESSMENT_CORRECTION
MAX_FETCH = 5000
ROW_PREFIX = "reviewed:"  # row ids never collide with the curated examples' ids


def _span(trace, name: str):
    return next((s for s in trace.data.spans if s.name == name), None)


def _record(trace) -> dict[str, Any] | None:
    """The dataset record of one corrected trace; None when its text was redacted."""
    corrections = [a for a in (trace.info.assessments or []) if a.name == EXPECTATION]
    latest = max(corrections, key=lambda a: a.create_time_ms or 0)
    root = _span(trace, "tandem.answer")
    question = (root.inputs or {}).get("question") if root is not None else None
    if not isinstance(question, str) or not isinstance(latest.value, str):
        return None
    cited = list((root.outputs or {}).get("citations") or [])
    tags = trace.info.tags
    return {"inputs": {"question": question},
            "expectations": {EXPECTATION: latest.value, "cited_doc_ids": cited},
            "tags": {"trace_id": trace.info.trace_id, "adapter": tags.get("tandem.adapter", ""),
                     "index_version": tags.get("tandem.index_version", tags.get("tandem.index_release", ""))}}


def collect(settings: Settings) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(records sorted by trace id, counts: traces read, corrected, redacted)."""
    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.trace_experiment)
    counts = {"traces_read": 0, "corrected": 0, "redacted": 0}
    records: list[dict[str, Any]] = []
    token = None
    while experiment is not None and counts["traces_read"] < MAX_FETCH:
        page = client.search_traces(locations=[experiment.experiment_id], max_results=500, page_token=token,
                                    order_by=["timestamp_ms DESC"], include_spans=True)
        for trace in page:
            counts["traces_read"] += 1
            if not any(a.name == EXPECTATION for a in (trace.info.assessments or [])):
                continue
            counts["corrected"] += 1
            record = _record(trace)
            if record is None:
                counts["redacted"] += 1
            else:
                records.append(record)
        token = page.token
        if not token:
            break
    if counts["redacted"]:
        log.warning("%d corrected answer(s) were traced with TANDEM_TRACE_REDACT_TEXT: their text is not in "
                    "MLflow, so they cannot be trained on", counts["redacted"])
    log.info("reviewed answers: %d corrected of %d trace(s) read; %d usable", counts["corrected"],
             counts["traces_read"], len(records))
    return sorted(records, key=lambda r: r["tags"]["trace_id"]), counts


def sync(settings: Settings, records: list[dict[str, Any]]):
    """Merge ``records`` into the MLflow evaluation dataset (created on first use); returns the dataset."""
    import mlflow
    from mlflow.genai import datasets

    client = tracking.client(settings)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    experiment = client.get_experiment_by_name(settings.trace_experiment)
    found = datasets.search_datasets(filter_string=f'name = "{DATASET_NAME}"', max_results=1)
    ds = found[0] if found else datasets.create_dataset(
        name=DATASET_NAME, experiment_id=experiment.experiment_id if experiment else None,
        tags={"tandem.kind": "reviewed-answers"})
    if records:
        ds.merge_records(records)
    return datasets.get_dataset(dataset_id=ds.dataset_id)


def rows(records: list[dict[str, Any]], source, *, distractors: int) -> list[dict[str, Any]]:
    """One training row per record (see the module doc), sorted by id."""
    out = []
    for rec in records:
        question = rec["inputs"]["question"]
        cited = [d for d in rec["expectations"].get("cited_doc_ids") or [] if isinstance(d, str)]
        contexts = [c for doc in cited for c in source.chunks_of(doc, question)]
        if not contexts:
            contexts = source.search(question, distractors + 1)
        docs = list(dict.fromkeys(c.doc_id for c in contexts))
        out.append({"id": ROW_PREFIX + rec["tags"]["trace_id"], "split": "train", "kind": "reviewed",
                    "question": question, "answerable": True, "oracle_doc_ids": cited or docs[:1], "gold_facts": [],
                    "contexts": [dict(dataclasses.asdict(c), text=c.text[:dataset.MAX_CONTEXT_CHARS])
                                 for c in contexts],
                    "target": {"answer": rec["expectations"][EXPECTATION], "citations": cited or docs[:1],
                               "confidence": "high"}})
    return sorted(out, key=lambda r: r["id"])


def merge(curated: list[dict[str, Any]], reviewed_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The curated rows unchanged plus the reviewed ones (training split only), sorted by id."""
    bad = [r["id"] for r in reviewed_rows if r["split"] != "train" or not r["id"].startswith(ROW_PREFIX)]
    if bad:
        raise ValueError(f"reviewed rows must be training rows with ids {ROW_PREFIX}...: {bad[:5]}")
    return sorted([*curated, *reviewed_rows], key=lambda r: r["id"])
