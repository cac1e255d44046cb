"""The retrain pipeline, step by step (steps 1-3 here; 4-6 in ``tandem.adapters.promotion``; what every step
finds of the run, on any worker, in ``tandem.adapters.run_state``). The ``lora_retrain`` DAG runs one step per task; the CLI
(``tandem adapters retrain``) runs them all in one process. Steps pass a JSON-able ``state`` dict
(Airflow XCom): the MLflow run id is the handle, and artifacts travel through MLflow, so each step can run
on another worker (training on a GPU worker of the ``training`` queue).

1. ``prepare``   validate params, build the RAFT dataset, open the MLflow run in ``tandem-lora-training``,
                 log params, the dataset (``mlflow.log_input``: digest + counts) and its snapshot artifact;
2. ``train``     LoRA training, per-step loss/lr to MLflow, the adapter folder logged as ``adapter/``;
3. ``evaluate``  candidate, champion and base on the holdout split with behavior_eval's scorers;
                 metrics per model and the three-way table in MLflow;
4. ``register``  a new ``tandem-adapter`` version (adapter only + base reference), tags, model card;
5. ``gate``      promote / wait for approval / challenger (with the reason as a tag);
6. ``promote``   move the aliases (``previous`` <- old champion, ``champion`` <- candidate).

Failure safety: nothing touches ``champion`` before step 6, and step 6 re-checks that the champion is
still the one the candidate was compared with. No version exists before step 4; a failure during or after
registration tags the version ``failed`` (``fail``), and ``resolve``/``promote`` refuse failed versions.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from tandem import tracking
from tandem import registry
from tandem.adapters import params as params_mod
from tandem.adapters import promotion, run_state
from tandem.config import Settings
from tandem.errors import UserError

log = logging.getLogger(__name__)


def prepare(settings: Settings, values: dict | None, *, progress: Callable[[int], None] | None = None) -> dict:
    import mlflow

    from tandem.adapters import dataset
    from tandem.behavior.spec import load_spec
    from tandem.model_store import ensure_base_model
    from tandem.models import base_model_sha256

    p = params_mod.validate(values)
    settings = run_state.effective_settings(settings, p)
    base = ensure_base_model(settings)
    base_sha = base_model_sha256(base)
    spec = load_spec(settings.spec_path)
    examples = dataset.load_examples(settings.train_set_path)
    source = dataset.IndexSource(settings)
    index_version = source.index_version()
    started = time.monotonic()
    rows = dataset.build_rows(examples, source, spec, distractors=p.distractors,
                              no_oracle_fraction=p.no_oracle_fraction, holdout_fraction=p.holdout_fraction,
                              seed=p.seed, counterfactual_fraction=p.counterfactual_fraction,
                              distractor_chars=p.distractor_chars, unanswerable_fraction=p.unanswerable_fraction,
                              progress=progress)
    rows, reviewed_info = _with_reviewed(settings, p, rows, source)
    digest = dataset.digest(rows)
    counts = dataset.counts(rows)
    if not counts.get("train") or not counts.get("holdout"):
        raise UserError(f"the dataset split is degenerate: {counts}",
                        fix="use at least 2 examples and a holdout_fraction that leaves both splits non-empty")
    log.info("RAFT dataset: %s (digest %s) in %.1fs", counts, digest[:12], time.monotonic() - started)
    spec_version = str(getattr(spec, "version", "") or "")

    tracking.use(settings, tracking.EXPERIMENT_TRAINING)
    run_tags = {
        **tracking.tags(status="running", dataset_digest=digest, base_model=base, base_model_sha256=base_sha,
                        spec_version=spec_version, index_version=index_version, trigger_reason=p.reason,
                        eval_run_id=p.eval_run_id or None,
                        failing_metrics=",".join(p.failing_metrics) or None, **reviewed_info),
        **tracking.airflow_context_tags(settings),
    }
    with mlflow.start_run(run_name=f"retrain-{time.strftime('%Y%m%d-%H%M%S')}", tags=run_tags) as run:
        run_id = run.info.run_id
        mlflow.log_params(run_state.flat_params(p))
        with tempfile.TemporaryDirectory() as tmp:
            snap = dataset.write_snapshot(rows, Path(tmp) / dataset.SNAPSHOT_FILE)
            mlflow.log_artifact(str(snap), run_state.SNAPSHOT_ARTIFACT)
        for side in ("train", "holdout"):
            ds = run_state.mlflow_dataset(settings, rows, side, digest)
            mlflow.log_input(ds, context=side, tags={"rows": str(ds.df.shape[0]), "dataset_digest": digest})
        mlflow.log_metrics({f"dataset_{k}": float(v) for k, v in counts.items()})
        altered = dataset.alterations(rows)
        train_answerable = counts.get("train_oracle", 0) + counts.get("train_counterfactual", 0)
        realised = len(altered) / train_answerable if train_answerable else 0.0
        mlflow.log_metric("dataset_counterfactual_share", round(realised, 4))
        mlflow.log_dict({"counterfactual_fraction": p.counterfactual_fraction, "realised_share": round(realised, 4),
                         "rows": altered}, f"{run_state.SNAPSHOT_ARTIFACT}/counterfactual.json")
        log.info("counterfactual rows: %d of %d training rows with an oracle (%.0f%%; asked %.0f%%)", len(altered),
                 train_answerable, 100 * realised, 100 * p.counterfactual_fraction)
    return {"run_id": run_id, "params": p.as_dict(), "base_model": base, "base_sha256": base_sha,
            "dataset_digest": digest, "counts": counts, "index_version": index_version,
            "spec_version": spec_version, "airflow": tracking.airflow_context_tags(settings)}


def _with_reviewed(settings: Settings, p, rows: list[dict], source) -> tuple[list[dict], dict[str, str]]:
    """The curated rows plus, with ``reviewed_answers``, the corrected answers as training rows; and the tags
    that name the MLflow evaluation dataset they came from (``tandem.adapters.reviewed``)."""
    if not p.reviewed_answers:
        return rows, {}
    from tandem.adapters import reviewed

    records, seen = reviewed.collect(settings)
    ds = reviewed.sync(settings, records)
    extra = reviewed.rows(records, source, distractors=p.distractors)
    log.info("reviewed answers: %d training row(s) from %s (digest %s; %d redacted, not usable)", len(extra),
             reviewed.DATASET_NAME, ds.digest, seen["redacted"])
    return reviewed.merge(rows, extra), {"reviewed_dataset": reviewed.DATASET_NAME,
                                         "reviewed_dataset_digest": ds.digest, "reviewed_rows": len(extra)}


def train(settings: Settings, state: dict, *, on_step: Callable[[int, int, float], None] | None = None) -> dict:
    import mlflow

    from tandem.adapters import train as train_mod
    from tandem.behavior.spec import load_spec
    from tandem.model_store import check_same_base
    from tandem.models import weights_sha256

    p = params_mod.validate(state["params"])
    settings = run_state.effective_settings(settings, p)
    with run_state.resume(settings, state["run_id"]):
        base = check_same_base(settings, state["base_sha256"], "train")
        rows = [r for r in run_state.snapshot(settings, state) if r["split"] == "train"]
        spec = load_spec(settings.spec_path)
        out_dir = run_state.workdir(settings, state["run_id"]) / "adapter"
        shutil.rmtree(out_dir, ignore_errors=True)

        def log_metrics(metrics: dict, step: int) -> None:
            mlflow.log_metrics(metrics, step=step)

        summary, _, _ = train_mod.train(settings, rows, spec, p, out_dir, base_model=base,
                                        base_sha256=state["base_sha256"], dataset_digest=state["dataset_digest"],
                                        log_metrics=log_metrics, on_step=on_step)
        adapter_sha = weights_sha256(out_dir)
        mlflow.log_artifacts(str(out_dir), registry.ARTIFACT_PATH)
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        mlflow.set_tags(tracking.tags(status="trained", adapter_sha256=adapter_sha, device=summary["device"],
                                      probe_logits_sha256=summary["probe_logits_sha256"]))
    log.info("trained: %s", summary)
    return {**state, "training": summary, "adapter_sha256": adapter_sha}


def evaluate(settings: Settings, state: dict, *, limit: int | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
    import mlflow

    from tandem.adapters import compare, gate
    from tandem.behavior.spec import load_spec
    from tandem.model_store import check_same_base

    p = params_mod.validate(state["params"])
    settings = run_state.effective_settings(settings, p)
    with run_state.resume(settings, state["run_id"]):
        base = check_same_base(settings, state["base_sha256"], "evaluate")
        holdout = [r for r in run_state.snapshot(settings, state) if r["split"] == "holdout"][: limit or None]
        spec = load_spec(settings.spec_path)
        champion = registry.resolve(settings, "champion")
        candidates = {"candidate": run_state.adapter_dir(settings, state), "base": None}
        if champion.version is not None:
            candidates["champion"] = champion.path
        key = compare.base_scores_key(state["base_sha256"], state["dataset_digest"], spec.digest, len(holdout))
        cached = _cached_base_scores(settings, key, exclude_run_id=state["run_id"])
        result = compare.three_way(settings, spec, holdout, candidates, base_model=base,
                                   progress=progress, known={"base": cached[1]} if cached else None)
        thresholds, primary = gate.spec_gate(spec)
        for name, scores in result["models"].items():
            mlflow.log_metrics({f"{name}.{m}": float(v) for m, v in scores.items() if isinstance(v, (int, float))})
        mlflow.log_table(result["table"], artifact_file=run_state.EVAL_TABLE)
        mlflow.log_table(result["items"], artifact_file=run_state.EVAL_ITEMS)
        if result["probes"]["id"]:
            mlflow.log_table(result["probes"], artifact_file=run_state.EVAL_PROBES)
        for name, st in result["stats"].items():
            mlflow.log_metrics({f"{name}.eval_{k}": float(v) for k, v in st.items() if isinstance(v, (int, float))})
        mlflow.set_tags(tracking.tags(status="evaluated", champion_version=champion.version or "base",
                                      spec_digest=spec.digest, base_scores_key=key,
                                      base_scores_from=cached[0] if cached else state["run_id"]))
    evaluation = {"models": result["models"], "champion_version": champion.version, "primary": primary,
                  "thresholds": thresholds, "n": len(holdout), "base_tolerance": spec.base_tolerance,
                  "probes": len(result["probes"]["id"]),
                  "eval_seconds": {k: v.get("seconds") for k, v in result["stats"].items()}}
    log.info("three-way evaluation on %d holdout rows: %s", len(holdout), result["models"])
    return {**state, "evaluation": evaluation}


def _cached_base_scores(settings: Settings, key: str, *, exclude_run_id: str) -> tuple[str, dict] | None:
    """(run id, base metrics) of an earlier retrain that scored the base model on the same holdout rows with
    the same spec and scorer (``compare.base_scores_key``), or None. The base model's scores cost a third of
    the evaluation and change only with those inputs."""

    from tandem.adapters.compare import gate_metrics

    client = tracking.client(settings)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT_TRAINING)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], max_results=5, order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.`{tracking.tag('base_scores_key')}` = '{key}'")
    for run in runs:
        scores = {k[len("base."):]: v for k, v in run.data.metrics.items()
                  if k.startswith("base.") and not k.startswith("base.eval_")}
        if run.info.run_id != exclude_run_id and scores:
            log.info("base model scores on this holdout reused from retrain run %s", run.info.run_id)
            return run.info.run_id, gate_metrics(scores)
    return None


def run_all(settings: Settings, values: dict | None, *, log_model: Callable[..., Any], on_step=None, progress=None,
            limit: int | None = None, approve: bool = False) -> dict:
    """prepare -> train -> evaluate -> register -> gate -> promote. With require_approval, the CLI
    cannot wait for a human: the version stays challenger unless ``approve`` is set. ``log_model``: see
    ``register``."""
    state: dict[str, Any] = {}
    try:
        state = prepare(settings, values)
        state = train(settings, state, on_step=on_step)
        state = evaluate(settings, state, limit=limit, progress=progress)
        state = promotion.register(settings, state, log_model=log_model)
        state = promotion.gate(settings, state)
        if state["action"] == "promote" or (state["action"] == "approve" and approve):
            state = promotion.promote(settings, state, actor="tandem adapters retrain")
        else:
            state["promoted"] = False
    except BaseException as exc:
        if state.get("run_id"):
            promotion.fail(settings, state, None, f"{type(exc).__name__}: {exc}")
        raise
    return state
