"""The base model's model store: how a worker with an empty disk gets the base model, and proves it has the right one.

A worker never relies on another machine's disk. ``make setup`` converts the base model once on the machine
that runs it; ``tandem models publish`` (and ``make up`` with TANDEM_EXECUTOR=celery) logs that folder to
MLflow (a run in experiment ``tandem-models``, registered as model ``tandem-base-model``, alias ``current``).
A worker configured with

    TANDEM_BASE_MODEL_URI=models:/tandem-base-model@current   (or runs:/..., s3://..., file://...: any URI
                                                               MLflow's artifact API reads)
    TANDEM_BASE_MODEL_SHA256=<weights_sha256>            (optional pin)

fetches it into its own TANDEM_BASE_MODEL folder the first time a task needs it, and checks the weights
against the manifest (and the pin) before the folder appears. Concurrent tasks on one host take a file
lock; the download goes to a unique temporary folder and is renamed into place, so the folder appears
complete or not at all. A cached folder whose manifest differs from the pin is refused with a clear error.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from tandem import mlflow_auth, models, tracking
from tandem.config import Settings
from tandem.errors import JobFailed, UserError
from tandem.filelock import file_lock

log = logging.getLogger(__name__)

EXPERIMENT = "tandem-models"
ARTIFACT = "base-model"
SHA_TAG = "tandem.base_model_sha256"
REGISTERED_MODEL = "tandem-base-model"
ALIAS = "current"
STORE_URI = f"models:/{REGISTERED_MODEL}@{ALIAS}"


def _manifest_sha(folder: Path) -> str:
    try:
        return json.loads((folder / models.MANIFEST).read_text())["weights_sha256"]
    except (OSError, ValueError, KeyError):
        return ""


def _source(uri: str, tracking_uri: str) -> str:
    """A ``models:/name@alias`` (or ``models:/name/version``) URI as the version's own artifact location, read
    from the tracking server's registry. MLflow would resolve it against its process-wide default registry,
    a local SQLite file where none was set: a worker then finds no such model."""
    if not uri.startswith("models:/"):
        return uri
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, _, version = uri[len("models:/"):].partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    return client.get_model_version_download_uri(name, version)


def fetch(uri: str, folder: Path, *, tracking_uri: str, expected_sha256: str = "") -> str:
    """Download the model at ``uri`` into ``folder`` (atomic), verified; returns its weights sha256."""
    import mlflow.artifacts

    with file_lock(folder.parent / f".{folder.name}.lock"):
        if (folder / "config.json").exists():  # another task on this host fetched it while we waited
            return models.base_model_sha256(folder)
        started = time.monotonic()
        log.info("fetching the base model from %s into %s", uri, folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            try:
                got = Path(mlflow.artifacts.download_artifacts(artifact_uri=_source(uri, tracking_uri),
                                                               dst_path=str(tmp), tracking_uri=tracking_uri))
            except Exception as exc:  # noqa: BLE001 - any store error: say which URI and what to do
                raise UserError(f"cannot fetch the base model from TANDEM_BASE_MODEL_URI={uri}: {exc}",
                                fix="check the URI (`tandem models publish` prints it) and that the store is "
                                    "reachable from this worker") from None
            actual = models.weights_sha256(got)
            recorded = _manifest_sha(got)
            if recorded and recorded != actual:
                raise JobFailed(f"the base model fetched from {uri} is corrupt: its weights hash to {actual[:12]}, "
                                f"its manifest says {recorded[:12]}", fix="publish it again: `tandem models publish`")
            if expected_sha256 and actual != expected_sha256:
                raise UserError(f"the base model at {uri} has sha256 {actual[:12]}, but TANDEM_BASE_MODEL_SHA256 "
                                f"pins {expected_sha256[:12]}",
                                fix="point TANDEM_BASE_MODEL_URI at the pinned model, or update the pin")
            if not recorded:
                (got / models.MANIFEST).write_text(json.dumps({"source": uri, "weights_sha256": actual}) + "\n")
            got.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        seconds = time.monotonic() - started
        log.info("base model fetched: %.0f MB in %.1fs (%.0f MB/s), sha256 %s", size / 1e6, seconds,
                 size / 1e6 / max(seconds, 1e-6), actual[:12])
        return actual


def ensure_base_model(settings: Settings) -> str:
    """The base model to load on this machine: fetched from the model store when missing, always checked.

    Returns what ``from_pretrained`` takes (a folder, or a hub id when the setting is one).
    """
    ref = str(settings.base_model)
    if not models.is_local(ref) and not settings.base_model_uri:
        return models.resolve_base_model(ref)
    folder = Path(ref).expanduser()
    if not (folder / "config.json").exists() and settings.base_model_uri:
        mlflow_auth.sign_in(settings)
        fetch(settings.base_model_uri, folder, tracking_uri=settings.mlflow_uri,
              expected_sha256=settings.base_model_sha256)
    path = models.resolve_base_model(folder)
    pin = settings.base_model_sha256
    if pin:
        actual = models.base_model_sha256(folder)
        if actual != pin:
            raise UserError(f"the base model at {folder} has sha256 {actual[:12]}, but TANDEM_BASE_MODEL_SHA256 "
                            f"pins {pin[:12]}: this worker refuses to run on another model",
                            fix=f"delete {folder} so that it is fetched again from TANDEM_BASE_MODEL_URI, "
                                "or correct the pin")
    return path


def check_same_base(settings: Settings, expected_sha256: str, what: str) -> str:
    """This worker's base model, refused unless its sha256 is the one a run started with."""
    path = ensure_base_model(settings)
    actual = models.base_model_sha256(path)
    if expected_sha256 and actual != expected_sha256:
        raise JobFailed(f"{what}: this worker's base model ({path}, sha256 {actual[:12]}) is not the one the "
                        f"run started with (sha256 {expected_sha256[:12]})",
                        fix="give every worker the same base model: TANDEM_BASE_MODEL_URI and "
                            "TANDEM_BASE_MODEL_SHA256 (docs/scaling.md)")
    return path


def publish(settings: Settings) -> dict:
    """Log the local base model to MLflow once per sha256, as a version of the registered model
    ``tandem-base-model`` with the alias ``current``; returns {"uri", "sha256", "version", "new"}.

    The URI ``models:/tandem-base-model@current`` is stable: compose and Helm set it once, and a worker
    pinned with TANDEM_BASE_MODEL_SHA256 refuses a model published later under the same alias.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    folder = Path(models.resolve_base_model(settings.base_model))
    sha = models.base_model_sha256(folder)
    client = tracking.client(settings)
    try:
        client.get_registered_model(REGISTERED_MODEL)
    except MlflowException:
        client.create_registered_model(REGISTERED_MODEL, description="Tandem's base LLM: the weights every "
                                       "worker fetches (TANDEM_BASE_MODEL_URI) and verifies by sha256.")
    found = [mv for mv in client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
             if mv.tags.get(SHA_TAG) == sha]
    new = not found
    if found:
        version = max(found, key=lambda mv: int(mv.version))
    else:
        started = time.monotonic()
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
        run = client.create_run(experiment_id, run_name=f"base-model-{sha[:12]}",
                                tags={SHA_TAG: sha, "tandem.base_model": folder.name})
        try:
            mlflow.set_tracking_uri(settings.mlflow_uri)
            client.log_artifacts(run.info.run_id, str(folder), ARTIFACT)
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        client.set_terminated(run.info.run_id, "FINISHED")
        version = client.create_model_version(REGISTERED_MODEL, source=f"{run.info.artifact_uri}/{ARTIFACT}",
                                              run_id=run.info.run_id, tags={SHA_TAG: sha})
        log.info("published the base model %s as version %s in %.1fs", sha[:12], version.version,
                 time.monotonic() - started)
    client.set_registered_model_alias(REGISTERED_MODEL, ALIAS, version.version)
    return {"uri": STORE_URI, "sha256": sha, "version": str(version.version), "new": new}
