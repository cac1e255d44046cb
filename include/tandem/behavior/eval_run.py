"""The tracked eval of the live model: what the ``behavior_eval`` DAG and ``tandem eval`` run.

1. ``prepare``: load the spec and the eval set, resolve the adapter (champion -> base when there is none)
   and the live index version. Every bad input fails here, before any model loads.
2. ``run_eval``: retrieve context for each question from the live index, generate in batches, score and
   diagnose, and log it all to the MLflow experiment ``tandem-behavior-eval`` (metrics per rule and per
   class, the per-example table, tags). Returns a JSON-able summary (no rows).
3. ``decide_and_record``: read the anti-flap history from MLflow, decide, and record the decision on the
   run (tags, description, ``decision.json``) and in the log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import time
from typing import Any, Callable

from tandem import tracking
from tandem.behavior import antiflap
from tandem.behavior.decision import Decision, decide
from tandem.behavior.evalset import Example, file_digest, load_examples
from tandem.behavior.metrics import FAILURE_CLASSES, VERDICTS
from tandem.behavior.spec import Spec, load_spec
from tandem.config import Settings
from tandem.errors import ServiceUnavailable, UserError

log = logging.getLogger(__name__)

TABLE_FILE = "eval_table.json"
PROBE_TABLE_FILE = "faithfulness_probes.json"
SUMMARY_FILE = "summary.json"
DECISION_FILE = "decision.json"
Progress = Callable[[str, int, int], None]  # (stage, done since last call, total)


@dataclasses.dataclass
class Prepared:
    spec: Spec
    examples: list[Example]
    eval_set_digest: str
    partial: bool
    adapter_ref: str
    adapter_version: str | None  # None: the base model alone
    adapter_path: str | None
    base_model: str
    base_sha256: str
    index_version: int

    @property
    def adapter_label(self) -> str:
        return "base" if self.adapter_version is None else self.adapter_version


def prepare(settings: Settings, *, adapter: str = "champion", limit: int | None = None) -> Prepared:
    """Validate every input and resolve the live model and index. No model is loaded here."""
    from tandem import registry
    from tandem.knowledge import search

    spec = load_spec(settings.spec_path)
    all_examples = load_examples(settings.eval_set_path)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}", fix="pass a positive number of examples")
    examples = all_examples[:limit] if limit is not None else all_examples
    partial = len(examples) < len(all_examples)
    resolved = registry.resolve(settings, adapter)  # unknown version -> UserError; MLflow down -> ServiceUnavailable
    index_version = search.live_index_version(settings)
    if index_version is None:
        raise ServiceUnavailable(f"the knowledge index {settings.index_name!r} is empty: there is nothing to "
                                 "retrieve context from", fix="run `tandem reindex` (or the knowledge_reindex DAG) first")
    base_model, base_sha = registry.base_ref(settings)
    return Prepared(spec=spec, examples=examples, eval_set_digest=file_digest(settings.eval_set_path),
                    partial=partial, adapter_ref=adapter, adapter_version=resolved.version,
                    adapter_path=str(resolved.path) if resolved.path else None, base_model=base_model,
                    base_sha256=base_sha, index_version=index_version)


def retrieve(settings: Settings, spec: Spec, examples: list[Example],
             progress: Progress | None = None) -> tuple[list, str]:
    """(example, hits) for every example: the top ``retrieval.k`` chunks of the published release, all from
    one release (pinned at the start) whose index version is returned with them."""
    from tandem.knowledge import search

    started = time.monotonic()
    pinned = search.pin(settings)
    if pinned is None:
        raise ServiceUnavailable(f"the knowledge index {settings.index_name!r} is empty: there is nothing to "
                                 "retrieve context from", fix="run `tandem reindex` (or the knowledge_reindex DAG) first")
    items = []
    for i, example in enumerate(examples, start=1):
        items.append((example, search.search(settings, example.question, k=spec.retrieval_k, at=pinned)))
        if progress is not None:
            progress("retrieve", 1, len(examples))
    seconds = time.monotonic() - started
    log.info("retrieved context for %d questions from index release %s in %.1fs (%.1f questions/s)", len(items),
             pinned.index_version, seconds, len(items) / seconds if seconds else 0.0)
    return items, pinned.index_version


def _table(rows: list[dict]) -> dict[str, list]:
    """The per-example table for ``mlflow.log_table``: one column per field, lists as text."""
    columns = ["id", "question", "answerable", "gold_doc_ids", "retrieved_ids", "refused_by_similarity", "raw_output",
               *VERDICTS,
               "passed", "diagnosis", "failed_rules", "missing_docs", "facts_not_in_context", "missing_facts",
               "old_facts_found", "ungrounded", "invented_citations",
               "forbidden_found", "parse_error"]

    def cell(value):
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        if value is None:
            return "n/a"
        return value

    return {col: [cell(row[col]) for row in rows] for col in columns}


def diagnosis_mix(counts: dict[str, int]) -> dict[str, float]:
    """Share of the failures per class."""
    failures = sum(counts.get(k, 0) for k in FAILURE_CLASSES)
    return {k: round(counts.get(k, 0) / failures, 4) if failures else 0.0 for k in FAILURE_CLASSES}


def run_eval(settings: Settings, *, adapter: str = "champion", limit: int | None = None, source: str = "cli",
             progress: Progress | None = None, prepared: Prepared | None = None) -> dict[str, Any]:
    """Run and track one eval (see the module docstring). Returns the summary."""
    from tandem.behavior.evaluate import evaluate
    from tandem.behavior.generate import Generator
    from tandem.behavior.refusal import refusal_decision

    started = time.monotonic()
    p = prepared or prepare(settings, adapter=adapter, limit=limit)
    spec = p.spec
    log.info("eval of %s (base %s, sha256 %s) on index %s: %d examples, spec %s", p.adapter_label, p.base_model,
             p.base_sha256[:12], p.index_version, len(p.examples), spec.version)
    items, used_version = retrieve(settings, spec, p.examples, progress)
    if used_version != p.index_version:  # a release was published between prepare and retrieve
        log.info("index release %s was published since the eval was prepared: scoring against it", used_version)
        p = dataclasses.replace(p, index_version=used_version)
    # the answer path's similarity gate, so the eval scores what `tandem ask` and the API would answer
    threshold = float(settings.refusal_min_similarity)
    refuse = [refusal_decision(hits, threshold)[0] for _, hits in items]
    log.info("%d of %d questions refused without generating (best similarity < %s)", sum(refuse), len(items),
             threshold)
    from tandem.behavior.faithfulness import build_probes

    probes = build_probes(items, seed=spec.probe_seed, limit=spec.probes, max_chars=spec.max_context_chars)
    log.info("%d counterfactual probes (of at most %d, seed %d) from the answerable questions' retrieved context",
             len(probes), spec.probes, spec.probe_seed)
    generator = Generator(p.base_model, p.adapter_path, threads=settings.torch_threads)
    total = len(items) + len(probes)
    result = evaluate(spec, generator, items, refuse=refuse, probes=probes,
                      progress=(lambda n: progress("generate", n, total)) if progress else None)
    return _track(settings, p, result, refuse=refuse, n_probes=len(probes), threshold=threshold,
                  device=generator.device, limit=limit, source=source, wall=time.monotonic() - started)


def decide_and_record(settings: Settings, summary: dict[str, Any], *, now: dt.datetime | None = None,
                      spec: Spec | None = None, card: Callable[[dict, Decision], str] | None = None) -> Decision:
    """Decide (with the anti-flap history from MLflow) and record the decision on the eval run. ``spec`` and
    ``card`` (the run's markdown description) default to the behavior spec's and the eval-set scorecard."""

    from tandem.behavior.report import scorecard

    spec = spec or load_spec(settings.spec_path)
    card = card or (lambda summ, dec: scorecard(summ, dec, markdown=True))
    client = tracking.client(settings)
    history = antiflap.history(client, adapter_version=summary["adapter"], eval_set_digest=summary["eval_set_digest"],
                               exclude_run_id=summary["run_id"])
    decision = decide(spec, summary["metrics"], summary["counts"], missing_docs=summary["missing_docs"],
                      history=history, trigger_reindex=settings.trigger_reindex_on_knowledge_failure,
                      partial=summary["partial"], now=now)
    decided_at = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    tags = tracking.tags(decision=decision.action, decision_kind=decision.kind, decision_reason=decision.reason[:4900],
                         behavior_failing=str(decision.behavior_failing).lower(),
                         failing_metrics=",".join(decision.failing_metrics) or "none", decided_at=decided_at)
    for key, value in tags.items():
        client.set_tag(summary["run_id"], key, value)
    client.set_tag(summary["run_id"], "mlflow.note.content", card(summary, decision))
    client.log_dict(summary["run_id"], {"decision": decision.as_dict(), "decided_at": decided_at,
                         "anti_flap_history": {"failing_streak": history.failing_streak,
                                               "streak_run_ids": list(history.streak_run_ids),
                                               "retrain_times": [t.isoformat() for t in history.retrain_times]}},
                    DECISION_FILE)
    log.info("decision for eval run %s: %s (%s): %s", summary["run_id"], decision.action, decision.kind,
             decision.reason)
    return decision


def _track(settings: Settings, p: Prepared, result, *, refuse: list[bool], n_probes: int, threshold: float,
           device: str, limit: int | None, source: str, wall: float) -> dict[str, Any]:
    """The eval's MLflow run in ``tandem-behavior-eval``: tags a reviewer filters on, params, metrics, the
    per-example and probe tables, the summary. Returns the summary."""
    import mlflow

    spec = p.spec
    ungrounded = sum(1 for row in result.rows if row["values_grounded"] is False)

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout is the CLI's (--json)
    exp = tracking.use(settings, tracking.EXPERIMENT_EVAL)
    mix = diagnosis_mix(result.counts)
    tags = tracking.tags(
        adapter_version=p.adapter_label, adapter_ref=p.adapter_ref, base_model=p.base_model,
        base_model_sha256=p.base_sha256, index_version=p.index_version, spec_version=spec.version,
        spec_digest=spec.digest, eval_set_digest=p.eval_set_digest, eval_partial=str(p.partial).lower(),
        eval_source=source, primary_metric=spec.primary_metric, diagnosis_mix=json.dumps(mix, sort_keys=True),
    ) | tracking.airflow_context_tags(settings)
    metrics = {**result.metrics, "n_examples": result.n, "wall_s": round(wall, 2),
               "generation_s": round(result.stats.get("generation_s", 0.0), 2),
               "examples_per_s": round(result.stats.get("examples_per_s", 0.0), 4),
               "n_refused_by_similarity": sum(refuse), "n_probes": n_probes, "n_ungrounded": ungrounded,
               **{f"n_{name}": count for name, count in result.counts.items()}}
    run_name = f"eval {p.adapter_label if p.adapter_version is None else 'v' + p.adapter_label} @ {p.index_version}"
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=run_name) as run:
        mlflow.set_tags(tags)
        mlflow.log_params({"spec_path": spec.path, "eval_set_path": str(settings.eval_set_path),
                           "retrieval_k": spec.retrieval_k, "max_new_tokens": spec.max_new_tokens,
                           "batch_size": spec.batch_size, "max_context_chars": spec.max_context_chars,
                           "limit": limit if limit is not None else "all", "n_examples": result.n,
                           "refusal_min_similarity": threshold, "probes": spec.probes,
                           "probe_seed": spec.probe_seed,
                           "device": device})
        mlflow.log_metrics(metrics)
        mlflow.log_table(_table(result.rows), artifact_file=TABLE_FILE)
        if result.probe_rows:
            mlflow.log_table({col: [row[col] for row in result.probe_rows] for col in result.probe_rows[0]},
                             artifact_file=PROBE_TABLE_FILE)
        summary = {
            "run_id": run.info.run_id, "experiment_id": exp.experiment_id,
            "run_url": tracking.run_url(settings, exp.experiment_id, run.info.run_id),
            "adapter": p.adapter_label, "adapter_ref": p.adapter_ref, "index_version": p.index_version,
            "base_model": p.base_model, "base_model_sha256": p.base_sha256, "spec_version": spec.version,
            "eval_set_digest": p.eval_set_digest, "n": result.n, "partial": p.partial,
            "metrics": {k: round(v, 4) for k, v in result.metrics.items()}, "counts": result.counts,
            "diagnosis_mix": mix, "thresholds": spec.thresholds, "primary_metric": spec.primary_metric,
            "missing_docs": result.missing_docs(), "wall_s": round(wall, 1),
            "generation_s": metrics["generation_s"], "examples_per_s": metrics["examples_per_s"],
            "refused_by_similarity": sum(refuse), "probes": n_probes, "ungrounded": ungrounded,
        }
        mlflow.log_dict(summary, SUMMARY_FILE)
    log.info("eval run %s logged: %d examples in %.1fs (%.2f examples/s generating); pass_rate %.3f; %s",
             run.info.run_id, result.n, wall, metrics["examples_per_s"], result.metrics["pass_rate"],
             ", ".join(f"{k} {v}" for k, v in result.counts.items()))
    return summary
