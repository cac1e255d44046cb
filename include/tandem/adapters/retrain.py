"""The retrain pipeline, step by step. The ``lora_retrain`` DAG runs one step per task; the CLI
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

import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from tandem import faults, tracking
from tandem.adapters import params as params_mod
from tandem import registry
from tandem.config import Settings
from tandem.errors import JobFailed, UserError

log = logging.getLogger(__name__)

SNAPSHOT_ARTIFACT = "dataset"
EVAL_TABLE = "eval/three_way.json"
EVAL_ITEMS = "eval/items.json"
EVAL_PROBES = "eval/probes.json"


def _effective(settings: Settings, p) -> Settings:
    changes = {}
    if p.base_model:  # the run's own base model: the configured model store does not hold it
        changes.update(base_model=p.base_model, base_model_uri="", base_model_sha256="")
    if p.dataset:
        changes["train_set_path"] = p.dataset
    return settings.replace(**changes) if changes else settings


def workdir(settings: Settings, run_id: str) -> Path:
    path = Path(settings.home) / "retrain" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _resume(settings: Settings, run_id: str):
    """Re-open the retrain's MLflow run; an exception marks it FAILED (and re-raises)."""
    import mlflow

    tracking.use(settings, tracking.EXPERIMENT_TRAINING)
    with mlflow.start_run(run_id=run_id) as run:
        try:
            yield run
        except BaseException as exc:
            mlflow.set_tags(tracking.tags(status="failed", failure=f"{type(exc).__name__}: {exc}"[:5000]))
            raise


def _flat_params(p) -> dict[str, str]:
    out = {}
    for key, value in p.as_dict().items():
        out[key] = ",".join(value) if isinstance(value, list) else str(value)
    return out


# --- 1. prepare


def prepare(settings: Settings, values: dict | None, *, progress: Callable[[int], None] | None = None) -> dict:
    import mlflow

    from tandem.adapters import dataset
    from tandem.behavior.spec import load_spec
    from tandem.model_store import ensure_base_model
    from tandem.models import base_model_sha256

    p = params_mod.validate(values)
    settings = _effective(settings, p)
    base = ensure_base_model(settings)
    base_sha = base_model_sha256(base)
    spec = load_spec(settings.spec_path)
    examples = dataset.load_examples(settings.train_set_path)
    source = dataset.IndexSource(settings)
    index_version = source.version()
    started = time.monotonic()
    rows = dataset.build_rows(examples, source, spec, distractors=p.distractors,
                              no_oracle_fraction=p.no_oracle_fraction, holdout_fraction=p.holdout_fraction,
                              seed=p.seed, counterfactual_fraction=p.counterfactual_fraction,
                              distractor_chars=p.distractor_chars, unanswerable_fraction=p.unanswerable_fraction,
                              progress=progress)
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
                        failing_metrics=",".join(p.failing_metrics) or None),
        **tracking.airflow_context_tags(settings),
    }
    with mlflow.start_run(run_name=f"retrain-{time.strftime('%Y%m%d-%H%M%S')}", tags=run_tags) as run:
        run_id = run.info.run_id
        mlflow.log_params(_flat_params(p))
        with tempfile.TemporaryDirectory() as tmp:
            snap = dataset.write_snapshot(rows, Path(tmp) / dataset.SNAPSHOT_FILE)
            mlflow.log_artifact(str(snap), SNAPSHOT_ARTIFACT)
        for side in ("train", "holdout"):
            ds = _mlflow_dataset(settings, rows, side, digest)
            mlflow.log_input(ds, context=side, tags={"rows": str(ds.df.shape[0]), "dataset_digest": digest})
        mlflow.log_metrics({f"dataset_{k}": float(v) for k, v in counts.items()})
        altered = dataset.alterations(rows)
        train_answerable = counts.get("train_oracle", 0) + counts.get("train_counterfactual", 0)
        realised = len(altered) / train_answerable if train_answerable else 0.0
        mlflow.log_metric("dataset_counterfactual_share", round(realised, 4))
        mlflow.log_dict({"counterfactual_fraction": p.counterfactual_fraction, "realised_share": round(realised, 4),
                         "rows": altered}, f"{SNAPSHOT_ARTIFACT}/counterfactual.json")
        log.info("counterfactual rows: %d of %d training rows with an oracle (%.0f%%; asked %.0f%%)", len(altered),
                 train_answerable, 100 * realised, 100 * p.counterfactual_fraction)
    return {"run_id": run_id, "params": p.as_dict(), "base_model": base, "base_sha256": base_sha,
            "dataset_digest": digest, "counts": counts, "index_version": index_version,
            "spec_version": spec_version, "airflow": tracking.airflow_context_tags(settings)}


def _mlflow_dataset(settings: Settings, rows: list[dict], side: str, digest: str):
    """One split of the RAFT rows as an MLflow dataset (what the run's inputs and the model's metrics name)."""
    import mlflow.data
    import pandas as pd

    part = [r for r in rows if r["split"] == side]
    frame = pd.DataFrame([{"id": r["id"], "kind": r["kind"], "question": r["question"],
                           "contexts": json.dumps([c["chunk_id"] for c in r["contexts"]]),
                           "target": json.dumps(r["target"], sort_keys=True)} for r in part])
    return mlflow.data.from_pandas(frame, source=f"{settings.train_set_path}", name=f"tandem-raft-{side}",
                                   digest=digest[:36])


def _snapshot(settings: Settings, state: dict) -> list[dict]:
    import mlflow.artifacts

    from tandem.adapters import dataset

    local = workdir(settings, state["run_id"]) / dataset.SNAPSHOT_FILE
    if not local.exists():
        with tempfile.TemporaryDirectory(prefix=".snapshot.", dir=local.parent) as tmp:
            got = mlflow.artifacts.download_artifacts(run_id=state["run_id"],
                                                      artifact_path=f"{SNAPSHOT_ARTIFACT}/{dataset.SNAPSHOT_FILE}",
                                                      dst_path=tmp, tracking_uri=settings.mlflow_uri)
            os.replace(got, local)  # atomic: a concurrent reader sees the whole file or none
    rows = dataset.read_snapshot(local)
    if dataset.digest(rows) != state["dataset_digest"]:
        raise JobFailed("the dataset snapshot does not match its digest", fix="re-run the retrain from the start")
    return rows


# --- 2. train


def train(settings: Settings, state: dict, *, on_step: Callable[[int, int, float], None] | None = None) -> dict:
    import mlflow

    from tandem.adapters import train as train_mod
    from tandem.behavior.spec import load_spec
    from tandem.model_store import check_same_base
    from tandem.models import weights_sha256

    p = params_mod.validate(state["params"])
    settings = _effective(settings, p)
    with _resume(settings, state["run_id"]):
        base = check_same_base(settings, state["base_sha256"], "train")
        rows = [r for r in _snapshot(settings, state) if r["split"] == "train"]
        spec = load_spec(settings.spec_path)
        out_dir = workdir(settings, state["run_id"]) / "adapter"
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


def _adapter_dir(settings: Settings, state: dict) -> Path:
    """The run's adapter folder (downloaded from MLflow when this worker did not train it)."""
    import mlflow.artifacts

    from tandem.models import weights_sha256

    local = workdir(settings, state["run_id"]) / "adapter"
    if local.is_dir() and (local / "adapter_config.json").exists():
        try:
            if weights_sha256(local) == state["adapter_sha256"]:
                return local
        except UserError:
            pass
    with tempfile.TemporaryDirectory(prefix=".adapter.", dir=local.parent) as tmp:
        got = Path(mlflow.artifacts.download_artifacts(run_id=state["run_id"], artifact_path=registry.ARTIFACT_PATH,
                                                       dst_path=tmp, tracking_uri=settings.mlflow_uri))
        if weights_sha256(got) != state["adapter_sha256"]:
            raise JobFailed("the downloaded adapter does not match the trained one (sha256)",
                            fix="re-run the retrain")
        stale = Path(tempfile.mkdtemp(prefix=".adapter.old.", dir=local.parent))
        if local.exists():
            local.rename(stale / "adapter")  # moved aside, not deleted first: the swap leaves no gap
        got.rename(local)
        shutil.rmtree(stale, ignore_errors=True)
    return local


# --- 3. evaluate


def evaluate(settings: Settings, state: dict, *, limit: int | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
    import mlflow

    from tandem.adapters import compare, gate
    from tandem.behavior.spec import load_spec
    from tandem.model_store import check_same_base

    p = params_mod.validate(state["params"])
    settings = _effective(settings, p)
    with _resume(settings, state["run_id"]):
        base = check_same_base(settings, state["base_sha256"], "evaluate")
        holdout = [r for r in _snapshot(settings, state) if r["split"] == "holdout"][: limit or None]
        spec = load_spec(settings.spec_path)
        champion = registry.resolve(settings, "champion")
        candidates = {"candidate": _adapter_dir(settings, state), "base": None}
        if champion.version is not None:
            candidates["champion"] = champion.path
        key = compare.base_scores_key(state["base_sha256"], state["dataset_digest"], spec.digest, len(holdout))
        cached = _cached_base_scores(settings, key, exclude_run_id=state["run_id"])
        result = compare.three_way(settings, spec, holdout, candidates, base_model=base,
                                   progress=progress, known={"base": cached[1]} if cached else None)
        thresholds, primary = gate.spec_gate(spec)
        for name, scores in result["models"].items():
            mlflow.log_metrics({f"{name}.{m}": float(v) for m, v in scores.items() if isinstance(v, (int, float))})
        mlflow.log_table(result["table"], artifact_file=EVAL_TABLE)
        mlflow.log_table(result["items"], artifact_file=EVAL_ITEMS)
        if result["probes"]["id"]:
            mlflow.log_table(result["probes"], artifact_file=EVAL_PROBES)
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


# --- 4. register


def register(settings: Settings, state: dict, *, log_model: Callable[..., Any]) -> dict:
    """Register the run's adapter as a version. ``log_model`` logs it as a servable MLflow model (the answer
    path's ``tandem.serve.pyfunc.log_adapter_model``, passed in by the DAG and the CLI: serving sits above
    this package)."""
    from tandem.adapters import card

    p = params_mod.validate(state["params"])
    settings = _effective(settings, p)
    evaluation = state["evaluation"]
    cand = evaluation["models"]["candidate"]
    tags = tracking.tags(
        base_model=state["base_model"], base_model_sha256=state["base_sha256"], adapter_sha256=state["adapter_sha256"],
        probe_logits_sha256=state["training"].get("probe_logits_sha256"),
        dataset_digest=state["dataset_digest"], spec_version=state.get("spec_version") or None,
        index_version=state.get("index_version") or None, trigger_reason=p.reason,
        eval_run_id=p.eval_run_id or None, failing_metrics=",".join(p.failing_metrics) or None,
        training_run_id=state["run_id"],
        compared_with=evaluation["champion_version"] or "base", holdout_rows=evaluation["n"],
    )
    tags.update(state.get("airflow") or {})
    tags.update({registry.METRIC_TAG_PREFIX + m: f"{v:.6g}" for m, v in cand.items() if isinstance(v, (int, float))})
    description = card.render(base_model=state["base_model"], base_sha256=state["base_sha256"], params=state["params"],
                              dataset={"digest": state["dataset_digest"], "counts": state["counts"],
                                       "source": settings.train_set_path, "index_version": state.get("index_version")},
                              training=state["training"], evaluation=evaluation,
                              context={"training run": state["run_id"], "trigger reason": p.reason,
                                       "triggering eval run": p.eval_run_id,
                                       "airflow run": (state.get("airflow") or {}).get(tracking.tag("airflow_run_url"))})
    def log_run_model():  # the version is an MLflow model, linked to this run and its metrics (not on a retry)
        with _resume(settings, state["run_id"]):
            holdout = _mlflow_dataset(settings, _snapshot(settings, state), "holdout", state["dataset_digest"])
            return log_model(_adapter_dir(settings, state), base_model=state["base_model"],
                                            base_sha256=state["base_sha256"], dataset=holdout,
                                            metrics={m: v for m, v in cand.items() if isinstance(v, (int, float))})

    version = registry.register_version(settings, state["run_id"], tags=tags, description=description,
                                        model_info=log_run_model)
    faults.point("after_register", version=version)
    with _resume(settings, state["run_id"]):
        import mlflow

        mlflow.set_tags(tracking.tags(status="registered", adapter_version=version))
    return {**state, "version": version}


# --- 5. gate


def gate(settings: Settings, state: dict) -> dict:
    """Decide. Returns state with ``decision`` and ``action``: "promote", "approve" or "challenger"."""
    from tandem.adapters import gate as gate_mod

    p = params_mod.validate(state["params"])
    settings = _effective(settings, p)
    ev = state["evaluation"]
    incumbent = ev["models"].get("champion") or ev["models"]["base"]
    decision = gate_mod.decide(ev["models"]["candidate"], incumbent, thresholds=ev["thresholds"],
                               primary=ev["primary"], margin=p.promotion_margin, tolerance=p.regression_tolerance,
                               base=ev["models"].get("base"), base_tolerance=float(ev.get("base_tolerance", 0.05)))
    version = state["version"]
    if not decision.promote:
        action, reason = "challenger", decision.reason
    elif not p.auto_promote:
        action, reason = "challenger", f"{decision.reason}; auto_promote is off: promote with `tandem adapters promote {version}`"
    elif p.require_approval:
        action, reason = "approve", f"{decision.reason}; waiting for approval in the Airflow UI"
    else:
        action, reason = "promote", decision.reason
    if action != "promote":
        registry.set_challenger(settings, version, reason)  # champion untouched
    registry.set_version_tags(settings, version, {tracking.tag("gate_decision"): action,
                                                  tracking.tag("gate_reason"): reason,
                                                  tracking.tag("gate_checks"): json.dumps(list(decision.checks))})
    with _resume(settings, state["run_id"]):
        import mlflow

        mlflow.set_tags(tracking.tags(status="gated", gate_decision=action, gate_reason=reason))
    log.info("gate for version %s: %s (%s)", version, action, reason)
    return {**state, "decision": decision.as_dict(), "action": action, "reason": reason}


# --- 6. promote


def promote(settings: Settings, state: dict, *, actor: str = "lora_retrain", op_id: str | None = None) -> dict:
    """Make the candidate champion, unless the champion changed since the evaluation (then: challenger).

    The check happens under the alias lock. ``op_id`` (the Airflow run) makes a retry converge: a promotion
    that moved the aliases before its task failed is finished, and reported as promoted.
    """
    p = params_mod.validate(state["params"])
    settings = _effective(settings, p)
    version = state["version"]
    compared = state["evaluation"]["champion_version"]
    out = registry.promote(settings, version, reason=state.get("reason") or "gate passed", actor=actor,
                           op_id=op_id, expected=compared)
    if "conflict" in out:
        current = out["conflict"]
        reason = (f"the champion changed during the run (compared with {compared or 'base'}, now {current}); "
                  f"re-run the retrain or promote with `tandem adapters promote {version}`")
        registry.set_challenger(settings, version, reason)
        return {**state, "promoted": False, "reason": reason}
    registry.set_version_tags(settings, version, {tracking.tag("gate_decision"): "promoted"})
    return {**state, "promoted": bool(out["changed"]), "aliases": out}


# --- failure


APPROVAL_TIMED_OUT = "approval timed out"


def fail(settings: Settings, state: dict | None, run_id: str | None, error: str) -> None:
    """Mark a partial run: the MLflow run FAILED + tagged, its version (if any) tagged failed.

    A version that passed the gate and waited for an approval that never came is not broken: it stays
    ``challenger`` with the reason "approval timed out", and the run is marked the same way.
    """

    run_id = run_id or (state or {}).get("run_id")
    version = (state or {}).get("version")
    if version and (state or {}).get("action") == "approve" and not (state or {}).get("promoted"):
        registry.set_challenger(settings, version, APPROVAL_TIMED_OUT)
        registry.set_version_tags(settings, version, {tracking.tag("gate_decision"): "challenger"})
        error = APPROVAL_TIMED_OUT
        version = None  # not failed
    if version and not (state or {}).get("promoted"):
        current = None
        try:
            current = registry.champion_version(settings)
        except Exception:  # noqa: BLE001
            pass
        if current != str(version):
            registry.mark_failed(settings, version, error)
    if run_id:
        try:
            cl = tracking.client(settings)
            cl.set_tag(run_id, tracking.tag("status"), "failed")
            cl.set_tag(run_id, tracking.tag("failure"), error[:5000])
            cl.set_terminated(run_id, status="FAILED")
        except Exception:  # noqa: BLE001 - best effort while handling the real error
            log.exception("could not mark run %s failed", run_id)


# --- all steps in one process (CLI, benchmark)


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
        state = register(settings, state, log_model=log_model)
        state = gate(settings, state)
        if state["action"] == "promote" or (state["action"] == "approve" and approve):
            state = promote(settings, state, actor="tandem adapters retrain")
        else:
            state["promoted"] = False
    except BaseException as exc:
        if state.get("run_id"):
            fail(settings, state, None, f"{type(exc).__name__}: {exc}")
        raise
    return state
