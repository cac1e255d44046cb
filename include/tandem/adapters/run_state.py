"""The retrain's run, as every step finds it on any worker: its MLflow run (``resume``), its work folder,
the dataset snapshot and the adapter folder, fetched from MLflow when this worker did not make them."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tandem import registry, tracking
from tandem.config import Settings
from tandem.errors import JobFailed, UserError

SNAPSHOT_ARTIFACT = "dataset"
EVAL_TABLE = "eval/three_way.json"
EVAL_ITEMS = "eval/items.json"
EVAL_PROBES = "eval/probes.json"


def effective_settings(settings: Settings, p) -> Settings:
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
def resume(settings: Settings, run_id: str):
    """Re-open the retrain's MLflow run; an exception marks it FAILED (and re-raises)."""
    import mlflow

    tracking.use(settings, tracking.EXPERIMENT_TRAINING)
    with mlflow.start_run(run_id=run_id) as run:
        try:
            yield run
        except BaseException as exc:
            mlflow.set_tags(tracking.tags(status="failed", failure=f"{type(exc).__name__}: {exc}"[:5000]))
            raise


def flat_params(p) -> dict[str, str]:
    out = {}
    for key, value in p.as_dict().items():
        out[key] = ",".join(value) if isinstance(value, list) else str(value)
    return out


def mlflow_dataset(settings: Settings, rows: list[dict], side: str, digest: str):
    """One split of the RAFT rows as an MLflow dataset (what the run's inputs and the model's metrics name)."""
    import mlflow.data
    import pandas as pd

    part = [r for r in rows if r["split"] == side]
    frame = pd.DataFrame([{"id": r["id"], "kind": r["kind"], "question": r["question"],
                           "contexts": json.dumps([c["chunk_id"] for c in r["contexts"]]),
                           "target": json.dumps(r["target"], sort_keys=True)} for r in part])
    return mlflow.data.from_pandas(frame, source=f"{settings.train_set_path}", name=f"tandem-raft-{side}",
                                   digest=digest[:36])


def snapshot(settings: Settings, state: dict) -> list[dict]:
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


def adapter_dir(settings: Settings, state: dict) -> Path:
    """The run's adapter folder (downloaded from MLflow when this worker did not train it)."""
    import mlflow.artifacts

    from tandem.models import weights_sha256

    local = workdir(settings, state["run_id"]) / "adapter"
    if local.is_dir() and (local / "adapter_config.json").exists():
        try:
            if weights_sha256(local) == state["adapter_sha256"]:
                return local
        except UserError:  # an unreadable local copy: fetched again below
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
