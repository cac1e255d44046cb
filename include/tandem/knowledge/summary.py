"""The run summary: its text form for the CLI, and its MLflow run (experiment ``tandem-knowledge``)."""

from __future__ import annotations

import json
import logging

from tandem import mlflow_auth
from tandem.config import Settings

log = logging.getLogger(__name__)

CONTRACT_KEYS = ("new", "changed", "unchanged", "deleted", "failed", "chunks_embedded", "index_version", "seconds")


def text(summary: dict) -> str:
    """A plan or summary as the lines the CLI and the task log print (about 65 lines of formatting, one
    figure per line, in the order they are read)."""
    s = summary
    head = f"knowledge index {s.get('index')!r}: "
    if s.get("dry_run"):
        head += f"DRY RUN (nothing written) - would {'build a new embedding space' if s.get('mode') == 'build' else 'update'} " \
                f"release {s.get('index_version') or '(none yet)'}"
    else:
        rel = s.get("release") or {}
        candidate = rel.get("index_version", rel.get("no"))  # "no": a summary recorded before the one name
        served = f"serving release {s.get('index_version') or '(none)'}"
        if rel.get("published"):
            served = f"published release {candidate}"
        elif candidate and s.get("status") == "failed":
            served += f"; candidate release {candidate} NOT published"
        head += f"{s.get('status', '?').upper()} - {served} ({s.get('mode')})"
    lines = [head,
             "  documents: " + " . ".join(f"{k} {s.get(k, 0)}" for k in
                                          ("new", "changed", "unchanged", "deleted", "failed", "quarantined"))]
    if not s.get("dry_run"):
        lines.append(f"  chunks embedded {s.get('chunks_embedded', 0)} . {s.get('docs_per_s', 0)} docs/s . "
                     f"{s.get('chunks_per_s', 0)} chunks/s . total {s.get('seconds', 0)}s")
    phases = s.get("phases") or {}
    if phases:
        lines.append("  phases: " + " . ".join(f"{k} {v}s" for k, v in phases.items()))
    if s.get("space", {}).get("switched"):
        lines.append(f"  switched to embedding space {s['space']['no']} (fingerprint {s['space']['fingerprint']}); "
                     f"previous kept for `tandem index rollback`")
    brake = s.get("delete_brake") or {}
    if brake.get("blocked"):
        lines.append(f"  MASS DELETE BLOCKED: {brake.get('message')}")
    canary = s.get("canary") or {}
    if canary:
        if canary.get("status") in ("skipped", None) or "hit_at_k" not in canary:
            lines.append(f"  canary: {canary.get('status')} - {canary.get('reason', '')}")
        else:
            base = canary.get("baseline")
            extra = f" (baseline hit@k {base['hit_at_k']}, MRR {base['mrr']})" if base else ""
            lines.append(f"  canary: {canary['status']} - hit@{canary.get('k')} {canary['hit_at_k']}, "
                         f"MRR {canary['mrr']}{extra}; {canary.get('reason', '')}")
    if s.get("dry_run"):
        for cls in ("new", "changed", "deleted", "failed", "quarantined"):
            ids = (s.get("ids") or {}).get(cls) or []
            if ids:
                lines.append(f"  {cls}:")
                lines.extend(f"    {d}" for d in ids[:50])
                if len(ids) > 50:
                    lines.append(f"    ... and {len(ids) - 50} more (--json lists all)")
    errors = s.get("errors") or []
    if errors:
        lines.append("  errors (previous versions kept):")
        lines.extend(f"    {e['doc_id']}: {e['reason']}" for e in errors[:50])
    quarantined = s.get("quarantined_docs") or []
    if quarantined:
        lines.append("  quarantined (skipped until the file changes):")
        lines.extend(f"    {q['doc_id']}: {q['reason']} ({q['attempts']} attempts)" for q in quarantined[:50])
    moved = s.get("changed_during_run_docs") or []
    if moved:
        lines.append("  changed during the run (not indexed now; the next run indexes the new content):")
        lines.extend(f"    {d}" for d in moved[:50])
    if s.get("mlflow_run_url"):
        lines.append(f"  mlflow: {s['mlflow_run_url']}")
    elif (s.get("mlflow") or {}).get("error"):
        lines.append(f"  mlflow: not logged ({s['mlflow']['error']})")
    if s.get("message"):
        lines.append(f"  {s['message']}")
    return "\n".join(lines)


def log_to_mlflow(settings: Settings, summary: dict) -> dict:
    """One MLflow run per reindex with counts, rates, phase seconds and canary metrics. Never fails the reindex:
    returns {"run_id", "url"} or {"error"}."""
    reachable = _reachable(settings.mlflow_uri)
    if reachable is not None:
        log.warning("not logging the reindex to MLflow: %s", reachable)
        return {"error": reachable}
    import contextlib
    import os
    import sys

    # MLflow prints "View run ..." on stdout: keep stdout for the CLI's result (--json)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    with contextlib.redirect_stdout(sys.stderr):
        return _log(settings, summary)


def _log(settings: Settings, summary: dict) -> dict:
    try:
        from tandem import mlflow_rest, tracking

        run_tags = {**tracking.tags(index_version=summary.get("index_version"), index=summary.get("index"),
                                    reindex_run_id=summary.get("run_id"), mode=summary.get("mode"),
                                    status=summary.get("status"),
                                    fingerprint=(summary.get("space") or {}).get("fingerprint")),
                    **tracking.airflow_context_tags(settings)}
        record = _mlflow_record(settings, summary)
        if mlflow_rest.supported(settings.mlflow_uri):
            return _log_rest(settings, summary, run_tags, record)
        return _log_library(settings, summary, run_tags, record)
    except Exception as exc:  # noqa: BLE001 - tracking must not break indexing; the summary says it failed
        log.warning("could not log the reindex to MLflow at %s: %s", settings.mlflow_uri, exc)
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}


def _mlflow_record(settings: Settings, summary: dict) -> dict:
    """The params, metrics and extra tags of a reindex's MLflow run."""
    from tandem import tracking

    params = {
        "sources": ",".join(summary.get("sources") or [])[:500],
        "full": summary.get("full"), "chunk_size": settings.chunk_size,
        "chunk_overlap": settings.chunk_overlap, "embed_batch_size": settings.embed_batch_size,
        "embed_model": (summary.get("space") or {}).get("model", "")[:250],
        "embed_backend": (summary.get("space") or {}).get("backend", ""),
    }
    metrics = {k: float(summary.get(k) or 0) for k in
               ("new", "changed", "unchanged", "deleted", "failed", "quarantined", "changed_during_run",
                "chunks_embedded", "seconds", "docs_per_s", "chunks_per_s")}
    metrics.update({f"seconds_{k}": float(v) for k, v in (summary.get("phases") or {}).items()})
    canary = summary.get("canary") or {}
    if "hit_at_k" in canary:
        metrics["canary_hit_at_k"] = float(canary["hit_at_k"])
        metrics["canary_mrr"] = float(canary["mrr"])
    failed = summary.get("status") == "failed"
    extra = {tracking.tag("failure"): str(summary.get("message", ""))[:500]} if failed else {}
    return {"params": params, "metrics": metrics, "tags": extra, "failed": failed}


def _log_rest(settings: Settings, summary: dict, run_tags: dict, record: dict) -> dict:
    """An http(s) tracking server: a handful of REST calls, without importing mlflow (see tandem.mlflow_rest)."""
    from tandem import mlflow_rest, tracking

    mlflow_auth.sign_in(settings)
    with mlflow_rest.RunLogger(settings.mlflow_uri) as run:
        run.start(tracking.EXPERIMENT_KNOWLEDGE, f"reindex {summary.get('run_id')}", run_tags)
        try:
            run.log_batch(record["params"], record["metrics"], record["tags"])
            if run.can_upload():
                run.log_json(summary, "summary.json")
            else:  # an artifact store the server does not proxy: the library writes to it directly
                import mlflow

                mlflow.set_tracking_uri(settings.mlflow_uri)
                mlflow.MlflowClient().log_dict(run.run_id, summary, "summary.json")
        except Exception:
            run.finish("FAILED")
            raise
        run.finish("FAILED" if record["failed"] else "FINISHED")
        return {"run_id": run.run_id, "url": tracking.run_url(settings, run.experiment_id, run.run_id)}


def _log_library(settings: Settings, summary: dict, run_tags: dict, record: dict) -> dict:
    import mlflow

    from tandem import tracking

    exp = tracking.use(settings, tracking.EXPERIMENT_KNOWLEDGE)
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=f"reindex {summary.get('run_id')}",
                          tags=run_tags) as run:
        mlflow.log_params(record["params"])
        mlflow.log_metrics(record["metrics"])
        mlflow.log_dict(summary, "summary.json")
        if record["tags"]:
            mlflow.set_tags(record["tags"])
    if record["failed"]:
        mlflow.MlflowClient().set_terminated(run.info.run_id, status="FAILED")
    return {"run_id": run.info.run_id, "url": tracking.run_url(settings, exp.experiment_id, run.info.run_id)}


def _reachable(uri: str) -> str | None:
    """None when the tracking server answers /health (file stores always do); else the reason. Avoids MLflow's
    minutes of retries against a server that is down."""
    if not uri.startswith(("http://", "https://")):
        return None
    import httpx

    try:
        httpx.get(uri.rstrip("/") + "/health", timeout=5.0).raise_for_status()
    except Exception as exc:  # noqa: BLE001
        return f"MLflow server {uri} is not reachable ({type(exc).__name__})"
    return None


MAX_LISTED_ERRORS = 100  # documents listed by name in a plan or summary (the counts are always complete)


def rounded(seconds: float) -> float:
    """A duration as summaries show it: milliseconds."""
    return round(float(seconds), 3)


def dumps(value) -> str:
    """A plan or summary as the JSON stored in the run's row (sorted keys: stable)."""
    return json.dumps(value, default=str, sort_keys=True)


def jsonable(summary: dict) -> dict:
    return json.loads(json.dumps(summary, default=str))
