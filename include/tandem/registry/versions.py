"""Versions of the MLflow model ``tandem-adapter``: reading them, their local copies, registering and tagging.

What a version is: the peft ``save_pretrained`` output ONLY (adapter weights + adapter_config.json +
``tandem-adapter.json``), logged with its training run and registered with
``MlflowClient.create_model_version``. The base model is a reference (path or hub id) plus the sha256 of
its weights (tag ``tandem.base_model_sha256``), never a copy: ``mlflow.transformers.log_model`` on a
PEFT model with a local base logs wrong weights (docs/decisions.md), so Tandem never uses it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tandem import tracking
from tandem.config import Settings
from tandem.errors import JobFailed, ServiceUnavailable, UserError
from tandem.models import base_model_sha256, weights_sha256

log = logging.getLogger(__name__)

MODEL = tracking.REGISTERED_MODEL
CHAMPION, CHALLENGER, PREVIOUS = tracking.ALIAS_CHAMPION, tracking.ALIAS_CHALLENGER, tracking.ALIAS_PREVIOUS
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
ARTIFACT_PATH = "adapter"  # where a training run keeps the adapter folder
METADATA_FILE = "tandem-adapter.json"  # written beside the adapter: base reference, dataset, params
STATUS_TAG = tracking.tag("status")
STATUS_OK, STATUS_FAILED = "ok", "failed"
METRIC_TAG_PREFIX = tracking.tag("metric.")
LIST_FIX = "list the versions with `tandem adapters list`"


def version_number(ref: object) -> str | None:
    """The version number a reference names ("v3", "V3", "3", "03" -> "3"), or None when it names none.

    The one parser of version references: the registry, the CLI, the answer API and the status page use it.
    """
    text = str(ref).strip().lower()
    if text.startswith("v"):
        text = text[1:]
    return str(int(text)) if text.isdigit() else None


def label(version: str | None) -> str:
    """How a version is shown: "v3", or "base" for the base model alone."""
    return "base" if version in (None, "", "base", "none") else f"v{version_number(version) or version}"


@dataclasses.dataclass(frozen=True)
class ResolvedAdapter:
    """What ``resolve`` found. ``version`` None means the base model alone (no adapter)."""

    ref: str
    version: str | None
    path: Path | None  # local folder with the adapter files (cached download), or None for base
    base_sha256: str  # sha256 of the base weights the adapter was trained on (the configured base for "base")
    base_model: str  # the base reference recorded with the version (the configured base for "base")
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    base_by_choice: bool = False  # "champion" is the base model because a promotion or rollback chose it

    @property
    def is_base(self) -> bool:
        return self.version is None

    @property
    def label(self) -> str:
        return label(self.version)


def client(settings: Settings):
    """An MlflowClient for the configured server, after a quick health check (no minutes of retries)."""

    check_server(settings)
    return tracking.client(settings)


def check_server(settings: Settings) -> None:
    uri = settings.mlflow_uri
    if not uri.startswith("http"):
        return
    import httpx

    try:
        resp = httpx.get(uri.rstrip("/") + "/health", timeout=5.0)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"the MLflow tracking server at {uri} is not reachable ({type(exc).__name__})",
                                 fix="start the local stack with `make up`, or set TANDEM_MLFLOW_URI") from None


def not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


def ensure_registered_model(cl) -> None:
    from mlflow.exceptions import MlflowException

    try:
        cl.get_registered_model(MODEL)
    except MlflowException as exc:
        if not not_found(exc):
            raise
        try:
            cl.create_registered_model(MODEL, description="Tandem LoRA adapters (adapter weights only; the base "
                                                          "model is a reference + sha256 in the version tags).")
        except MlflowException as exc2:  # created concurrently
            if getattr(exc2, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise


def get_version(cl, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return cl.get_model_version(MODEL, str(version))
    except MlflowException as exc:
        if not_found(exc):
            raise UserError(f"adapter version {version} does not exist in the MLflow model {MODEL!r}",
                            fix=LIST_FIX) from None
        raise


def by_alias(cl, alias: str):
    """The version holding ``alias``, or None (also when the registered model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return cl.get_model_version_by_alias(MODEL, alias)
    except MlflowException as exc:
        if not_found(exc) or "alias" in str(exc).lower():
            return None
        raise


def alias_version(cl, alias: str) -> str | None:
    mv = by_alias(cl, alias)
    return None if mv is None else str(mv.version)


def is_failed(mv) -> bool:
    return mv.tags.get(STATUS_TAG) == STATUS_FAILED or str(mv.status) in ("FAILED_REGISTRATION",)


def base_ref(settings: Settings) -> tuple[str, str]:
    """(reference, sha256) of the configured base model."""
    from tandem.model_store import ensure_base_model

    ref = ensure_base_model(settings)
    return ref, base_model_sha256(ref)


def download_version(settings: Settings, cl, mv) -> Path:
    """The version's adapter folder, cached under $TANDEM_HOME/adapters/<version> and checked by sha256."""
    import mlflow.artifacts

    root = Path(settings.home) / "adapters"
    dest = root / str(mv.version)
    expected = mv.tags.get(tracking.tag("adapter_sha256"))
    if dest.is_dir() and expected and _safe_sha(dest) == expected:
        return dest
    root.mkdir(parents=True, exist_ok=True)
    # unique per download (several processes, threads or workers on one host may fetch the same version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}.partial-", dir=root))
    started = time.monotonic()
    try:
        # the version's own artifact location, from this client's registry: a "models:/" URI would be resolved
        # against MLflow's process-wide default registry (a local sqlite file where none was set)
        source = cl.get_model_version_download_uri(MODEL, str(mv.version))
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp),
                                                       tracking_uri=settings.mlflow_uri))
        # raw artifacts hold the adapter at the top; a pyfunc model under artifacts/adapter/
        found = sorted(got.rglob("adapter_config.json"), key=lambda p: len(p.parts))
        folder = found[0].parent if found else got
        if not (folder / "adapter_config.json").exists():
            raise JobFailed(f"adapter version {mv.version} has no adapter_config.json in its artifacts",
                            fix="the version is incomplete: tag it failed and register a new one")
        if expected and weights_sha256(folder) != expected:
            raise JobFailed(f"adapter version {mv.version}: downloaded weights do not match tandem.adapter_sha256",
                            fix="retry; if it persists the artifact store is corrupt")
        _swap_in(folder, dest, expected)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("downloaded adapter v%s to %s (%.1fs)", mv.version, dest, time.monotonic() - started)
    return dest


def _swap_in(folder: Path, dest: Path, expected: str | None) -> None:
    """Put a verified download at ``dest`` with renames only: readers see the old folder or the new one.

    A stale ``dest`` is renamed aside first (a folder can't be renamed over a non-empty one); if another
    download put a good copy there meanwhile, that copy is kept and this one dropped.
    """
    if dest.is_dir():
        if expected and _safe_sha(dest) == expected:
            return  # a concurrent download finished first
        aside = dest.with_name(f".{dest.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            dest.rename(aside)
        except OSError:
            pass  # another download moved it already
        shutil.rmtree(aside, ignore_errors=True)
    try:
        folder.rename(dest)
    except OSError:
        if not (dest.is_dir() and expected and _safe_sha(dest) == expected):
            raise


def _safe_sha(folder: Path) -> str | None:
    try:
        return weights_sha256(folder)
    except UserError:
        return None


def _metrics_of(mv) -> dict[str, float]:
    out = {}
    for key, value in mv.tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                out[key[len(METRIC_TAG_PREFIX):]] = float(value)
            except ValueError:  # a hand-set tag that is not a number is not a metric
                pass
    return out


def version_info(mv) -> dict[str, Any]:
    t = mv.tags
    return {
        "version": str(mv.version),
        "aliases": sorted(getattr(mv, "aliases", []) or []),
        "metrics": _metrics_of(mv),
        "status": t.get(STATUS_TAG, "unknown"),
        "gate": t.get(tracking.tag("gate_decision"), ""),
        "gate_reason": t.get(tracking.tag("gate_reason"), ""),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mv.creation_timestamp / 1000)),
        "run_id": mv.run_id,
        "base_model_sha256": t.get(tracking.tag("base_model_sha256"), ""),
        "dataset_digest": t.get(tracking.tag("dataset_digest"), ""),
        "reason": t.get(tracking.tag("trigger_reason"), ""),
    }


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every version of ``tandem-adapter``, newest first: version, aliases, key metrics, status tags, created."""
    cl = client(settings)
    versions = cl.search_model_versions(f"name = '{MODEL}'")
    rows = []
    for mv in versions:
        full = cl.get_model_version(MODEL, mv.version)  # search results may omit aliases
        rows.append(version_info(full))
    rows.sort(key=lambda r: int(r["version"]), reverse=True)
    return rows


def champion_version(settings: Settings) -> str | None:
    mv = by_alias(client(settings), CHAMPION)
    return None if mv is None else str(mv.version)


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def version_of_run(settings: Settings, run_id: str) -> str | None:
    """The version that run ``run_id`` already registered (a retried register reuses it), else None."""
    if not _RUN_ID.match(run_id or ""):
        raise UserError(f"{run_id!r} is not an MLflow run id", fix="pass the 32-hex-digit id of the training run")
    found = client(settings).search_model_versions(f"name = '{MODEL}' and run_id = '{run_id}'")
    found = [mv for mv in found if mv.tags.get(STATUS_TAG) != STATUS_FAILED]
    return str(min(int(mv.version) for mv in found)) if found else None


def register_version(settings: Settings, run_id: str, *, tags: dict[str, str], description: str,
                     artifact_path: str = ARTIFACT_PATH, adapter_dir: Path | None = None,
                     model_info: Any = None) -> str:
    """Register the adapter logged by run ``run_id`` as a new version; returns the version number.

    With ``model_info`` (the run's pyfunc model, ``tandem.serve.pyfunc``, or a function that logs it and
    returns it) the version is that logged model, so ``mlflow.pyfunc.load_model("models:/tandem-adapter@champion")``
    loads it; without, the run's raw adapter artifacts (versions registered by older Tandem releases).

    Safe to retry: a version this run already registered is reused (its tags are finished), and a
    ``model_info`` function is then not called, so no second model is logged.

    The version gets ``tags`` plus ``tandem.status=ok`` last: if anything fails after the version exists,
    it is tagged ``failed`` (and never served by ``resolve``) before the error propagates.
    """
    from mlflow.exceptions import MlflowException

    cl = client(settings)
    ensure_registered_model(cl)
    existing = version_of_run(settings, run_id)
    if existing is not None:  # a retry: finish tagging the version this run registered, register nothing new
        log.info("run %s already registered %s version %s: reusing it", run_id, MODEL, existing)
        mv = cl.get_model_version(MODEL, existing)
    elif model_info is not None:
        if callable(model_info):
            model_info = model_info()
        mv = cl.create_model_version(MODEL, source=model_info.model_uri, run_id=run_id, description=description,
                                     tags={STATUS_TAG: "registering"}, model_id=model_info.model_id)
    else:
        run = cl.get_run(run_id)
        source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        mv = cl.create_model_version(MODEL, source=source, run_id=run_id, description=description,
                                     tags={STATUS_TAG: "registering"})
    version = str(mv.version)
    try:
        for key, value in sorted(tags.items()):
            cl.set_model_version_tag(MODEL, version, key, str(value)[:5000])
        cl.set_model_version_tag(MODEL, version, STATUS_TAG, STATUS_OK)
    except (MlflowException, OSError) as exc:
        mark_failed(settings, version, f"registration failed: {exc}")
        raise JobFailed(f"registering adapter version {version} failed: {exc}", fix="retry the run") from None
    log.info("registered %s version %s from run %s", MODEL, version, run_id)
    return version


def mark_failed(settings: Settings, version: str, reason: str) -> None:
    """Tag a version failed (best effort: called while handling another error)."""
    try:
        cl = client(settings)
        cl.set_model_version_tag(MODEL, str(version), STATUS_TAG, STATUS_FAILED)
        cl.set_model_version_tag(MODEL, str(version), tracking.tag("failure"), reason[:5000])
    except Exception:  # noqa: BLE001 - the original error matters more
        log.exception("could not tag version %s failed", version)


def set_version_tags(settings: Settings, version: str, tags: dict[str, str]) -> None:
    cl = client(settings)
    for key, value in sorted(tags.items()):
        cl.set_model_version_tag(MODEL, str(version), key, str(value)[:5000])
