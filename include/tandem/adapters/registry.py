"""The MLflow registry of adapters: versions of ``tandem-adapter``, their aliases, and local copies.

What a version is: the peft ``save_pretrained`` output ONLY (adapter weights + adapter_config.json +
``tandem-adapter.json``), logged as artifacts of its training run and registered with
``MlflowClient.create_model_version``. The base model is a reference (path or hub id) plus the sha256 of
its weights (tag ``tandem.base_model_sha256``), never a copy: ``mlflow.transformers.log_model`` on a
PEFT model with a local base logs wrong weights (docs/decisions.md), so Tandem never uses it.

Aliases (docs/architecture.md): ``champion`` is live, ``challenger`` is the latest candidate that was not promoted,
``previous`` is the champion before the current one.

Every alias move (the gate's challenger, a promotion, a rollback, the CLI) runs under one Postgres advisory
lock (``alias_lock``) and re-reads the state inside it. The state is the registered model's tag
``tandem.champion_history``: the order of champions (``"base"`` where the base model served by choice) and
the id of the last move. A move writes that state first, then makes the aliases follow it: ``previous``
first, then ``champion`` in a single call, so ``champion`` always names a complete, registered version and
a crash in between leaves the old champion live. A retry of the same move (same ``op_id``, e.g. the Airflow
try of the same run) finds its own state written and only finishes the aliases: it converges, and counts as
the success it was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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
HISTORY_TAG = tracking.tag("champion_history")
STATUS_TAG = tracking.tag("status")
STATUS_OK, STATUS_FAILED = "ok", "failed"
METRIC_TAG_PREFIX = tracking.tag("metric.")
LIST_FIX = "list the versions with `tandem adapters list`"
_HISTORY_MAX = 50


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
        return "base" if self.version is None else f"v{self.version}"


# --- connection


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


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


def ensure_registered_model(cl) -> None:
    from mlflow.exceptions import MlflowException

    try:
        cl.get_registered_model(MODEL)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        try:
            cl.create_registered_model(MODEL, description="Tandem LoRA adapters (adapter weights only; the base "
                                                          "model is a reference + sha256 in the version tags).")
        except MlflowException as exc2:  # created concurrently
            if getattr(exc2, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise


# --- reading


def _version(cl, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return cl.get_model_version(MODEL, str(version))
    except MlflowException as exc:
        if _not_found(exc):
            raise UserError(f"adapter version {version} does not exist in the MLflow model {MODEL!r}",
                            fix=LIST_FIX) from None
        raise


def _by_alias(cl, alias: str):
    """The version holding ``alias``, or None (also when the registered model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return cl.get_model_version_by_alias(MODEL, alias)
    except MlflowException as exc:
        if _not_found(exc) or "alias" in str(exc).lower():
            return None
        raise


def _is_failed(mv) -> bool:
    return mv.tags.get(STATUS_TAG) == STATUS_FAILED or str(mv.status) in ("FAILED_REGISTRATION",)


def base_ref(settings: Settings) -> tuple[str, str]:
    """(reference, sha256) of the configured base model."""
    from tandem.model_store import ensure_base_model

    ref = ensure_base_model(settings)
    return ref, base_model_sha256(ref)


def resolve(settings: Settings, ref: str | None = "champion", *, download: bool = True,
            check_base: bool = True) -> ResolvedAdapter:
    """Turn ``ref`` ("champion", "base", an alias, or a version number) into a local adapter.

    "champion" with no champion yet means the base model. An unknown version or alias, a version tagged
    failed, or one trained on another base than the configured one raises ``UserError``.
    """
    text = "champion" if ref is None else str(ref).strip()
    if text.lower().startswith("v") and text[1:].isdigit():
        text = text[1:]
    if text in ("", "base", "none"):
        base, sha = base_ref(settings)
        return ResolvedAdapter(ref=text or "base", version=None, path=None, base_sha256=sha, base_model=base)
    cl = client(settings)
    if text.isdigit():
        mv = _version(cl, text)
    elif text in ALIASES:
        mv = _by_alias(cl, text)
        if mv is None:
            if text == CHAMPION:
                base, sha = base_ref(settings)
                return ResolvedAdapter(ref=text, version=None, path=None, base_sha256=sha, base_model=base,
                                       base_by_choice=base_by_choice(cl))
            raise UserError(f"no adapter version has the alias {text!r}", fix=LIST_FIX)
    else:
        raise UserError(f"unknown adapter reference {text!r}",
                        fix="use a version number, 'champion', 'challenger', 'previous' or 'base'; " + LIST_FIX)
    if _is_failed(mv):
        raise UserError(f"adapter version {mv.version} is tagged failed and cannot be served",
                        fix="pick another version; " + LIST_FIX)
    recorded_sha = mv.tags.get(tracking.tag("base_model_sha256"), "")
    recorded_base = mv.tags.get(tracking.tag("base_model"), "")
    if check_base:
        _, configured_sha = base_ref(settings)
        if recorded_sha and recorded_sha != configured_sha:
            message = (f"adapter version {mv.version} was trained on base model {recorded_base} (sha256 "
                       f"{recorded_sha[:12]}), but the configured base model {settings.base_model} has sha256 "
                       f"{configured_sha[:12]}")
            if text in ALIASES:  # the deployment's state, not the caller's choice: the service cannot answer
                raise ServiceUnavailable(f"the {text} {message}",
                                         fix=f"set TANDEM_BASE_MODEL to {recorded_base}, or move the {text} alias to "
                                             f"a version trained on the configured base (`tandem adapters promote "
                                             f"VERSION`); {LIST_FIX}")
            raise UserError(message, fix=f"set TANDEM_BASE_MODEL to {recorded_base}, or use the base model alone "
                                         "(--adapter base)")
    path = download_version(settings, cl, mv) if download else None
    return ResolvedAdapter(ref=text, version=str(mv.version), path=path, base_sha256=recorded_sha,
                           base_model=recorded_base, aliases=tuple(sorted(getattr(mv, "aliases", []) or [])),
                           tags=dict(mv.tags))


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


@dataclasses.dataclass(frozen=True)
class AliasState:
    """The registered model's champion history and the last move that wrote it."""

    history: list[str]
    op: str | None = None
    kind: str | None = None  # "promote" or "rollback"
    moved_from: str | None = None  # the champion the last move replaced


def _read_state(cl) -> AliasState:
    from mlflow.exceptions import MlflowException

    try:
        rm = cl.get_registered_model(MODEL)
    except MlflowException as exc:
        if _not_found(exc):
            return AliasState([])
        raise
    raw = (rm.tags or {}).get(HISTORY_TAG)
    try:
        data = json.loads(raw) if raw else []
    except ValueError:
        return AliasState([])
    if isinstance(data, list):  # written by an older Tandem: the history alone
        return AliasState([str(v) for v in data])
    return AliasState([str(v) for v in data.get("history", [])], data.get("op"), data.get("kind"),
                      data.get("from"))


def _history(cl) -> list[str]:
    return _read_state(cl).history


def base_by_choice(cl) -> bool:
    """True when the base model serves because a promotion or rollback chose it (not for lack of a champion)."""
    history = _history(cl)
    return bool(history) and history[-1] == "base"


def _metrics_of(mv) -> dict[str, float]:
    out = {}
    for key, value in mv.tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                out[key[len(METRIC_TAG_PREFIX):]] = float(value)
            except ValueError:
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
    mv = _by_alias(client(settings), CHAMPION)
    return None if mv is None else str(mv.version)


# --- writing


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

    With ``model_info`` (the run's pyfunc model, ``tandem.adapters.pyfunc``, or a function that logs it and
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


LOCK_NAME = "tandem-adapter aliases"


@contextmanager
def alias_lock(settings: Settings, timeout: float = 120) -> Iterator[None]:
    """Serialize alias moves across processes and hosts: a Postgres advisory lock in the knowledge database.

    The lock belongs to a session of its own, so a process killed while holding it releases it with its
    connection. Waiting longer than ``timeout`` is a ServiceUnavailable that says who to look for.
    """
    import psycopg

    from tandem.db import connect

    conn = connect(settings.db_url, autocommit=True, register_vector=False)
    try:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(timeout * 1000)}ms",))
        try:
            conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (LOCK_NAME,))
        except psycopg.errors.LockNotAvailable:
            raise ServiceUnavailable(f"another alias move held the lock for more than {timeout:.0f}s",
                                     fix="wait for the running promotion or rollback to finish, then retry") from None
        yield
    finally:
        conn.close()  # ends the session: the advisory lock is released with it


def _write_state(cl, history: list[str], op: str, kind: str, moved_from: str | None) -> None:
    value = {"history": history[-_HISTORY_MAX:], "op": op, "kind": kind, "from": moved_from}
    cl.set_registered_model_tag(MODEL, HISTORY_TAG, json.dumps(value))


def _follow(cl, history: list[str]) -> None:
    """Make the aliases match the history: ``previous`` first, then ``champion`` (idempotent)."""
    champion = history[-1] if history else "base"
    previous = history[-2] if len(history) >= 2 and history[-2] != "base" else None
    if previous is None:
        if _alias_version(cl, PREVIOUS) is not None:
            cl.delete_registered_model_alias(MODEL, PREVIOUS)
    elif _alias_version(cl, PREVIOUS) != previous:
        cl.set_registered_model_alias(MODEL, PREVIOUS, previous)
    current = _alias_version(cl, CHAMPION)
    if champion == "base":
        if current is not None:
            cl.delete_registered_model_alias(MODEL, CHAMPION)
    elif current != champion:
        cl.set_registered_model_alias(MODEL, CHAMPION, champion)  # the single switch users see


def _consistent(cl, state: AliasState) -> list[str]:
    """The history, rebuilt from the aliases when they were moved outside Tandem."""
    current = _alias_version(cl, CHAMPION) or "base"
    if state.history and state.history[-1] == current:
        return list(state.history)
    prev = _alias_version(cl, PREVIOUS)
    return ([prev] if prev else []) + [current]


def _resumed(cl, state: AliasState, op_id: str | None, kind: str) -> bool:
    """A retry of the move that wrote ``state``: finish it (the aliases follow its history) and say so."""
    if not op_id or state.op != op_id or state.kind != kind:
        return False
    _follow(cl, state.history)
    log.info("%s %s resumed: the aliases follow the history it wrote", kind, op_id)
    return True


def _shown(history: list[str]) -> dict[str, str | None]:
    champion = history[-1] if history else "base"
    previous = history[-2] if len(history) >= 2 and history[-2] != "base" else None
    return {"champion": None if champion == "base" else champion, "previous": previous}


def set_challenger(settings: Settings, version: str, reason: str) -> None:
    """The candidate was not promoted: alias ``challenger`` and the reason as tags. Champion is untouched."""
    with alias_lock(settings):
        cl = client(settings)
        if _alias_version(cl, CHAMPION) == str(version):  # a move that already made it champion stays
            return
        cl.set_registered_model_alias(MODEL, CHALLENGER, str(version))
        for key, value in {tracking.tag("gate_decision"): "challenger", tracking.tag("gate_reason"): reason}.items():
            cl.set_model_version_tag(MODEL, str(version), key, value[:5000])


def _normalise_target(version: str) -> str:
    target = str(version).strip()
    if target.lower().startswith("v") and target[1:].isdigit():
        target = target[1:]
    if target != "base" and not target.isdigit():
        raise UserError(f"not a version number: {version!r}", fix=LIST_FIX + " (or use 'base')")
    return target


_ANY = object()


def promote(settings: Settings, version: str, *, reason: str, actor: str = "tandem",
            op_id: str | None = None, expected: Any = _ANY) -> dict[str, Any]:
    """Make ``version`` the champion ("base": the base model serves, by choice). The old champion becomes
    ``previous``. Returns {"champion", "previous", "changed"}.

    ``op_id`` names the move (an Airflow run); a retry with the same id finishes that move and reports it as
    changed, so its caller emits the asset event it could not emit the first time. ``expected``: the champion
    the caller compared against (a version, or None for the base model); if another is champion by the time
    the lock is held, nothing moves and the result has ``conflict`` set to it.
    """
    target = _normalise_target(version)
    with alias_lock(settings):
        cl = client(settings)
        state = _read_state(cl)
        if _resumed(cl, state, op_id, "promote"):
            return {**_shown(state.history), "changed": True}
        if target != "base":
            mv = _version(cl, target)
            if _is_failed(mv):
                raise UserError(f"adapter version {target} is tagged failed and cannot become champion",
                                fix="pick another version; " + LIST_FIX)
        history = _consistent(cl, state)
        current = history[-1]
        if current == target:
            _follow(cl, history)
            return {**_shown(history), "changed": False}
        if expected is not _ANY and current != (expected or "base"):
            return {**_shown(history), "changed": False, "conflict": current}
        new = history + [target]
        _write_state(cl, new, op_id or f"cli-{uuid.uuid4().hex[:12]}", "promote", current)
        _follow(cl, new)
        if target != "base":
            if _alias_version(cl, CHALLENGER) == target:
                cl.delete_registered_model_alias(MODEL, CHALLENGER)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for key, value in {tracking.tag("promoted_at"): now, tracking.tag("promoted_by"): actor,
                               tracking.tag("promotion_reason"): reason}.items():
                cl.set_model_version_tag(MODEL, target, key, value[:5000])
    log.info("champion: %s -> %s (%s)", current, target, reason)
    return {**_shown(new), "changed": True}


def _alias_version(cl, alias: str) -> str | None:
    mv = _by_alias(cl, alias)
    return None if mv is None else str(mv.version)


def rollback(settings: Settings, *, reason: str = "rollback", actor: str = "tandem",
             op_id: str | None = None) -> dict[str, Any]:
    """Put the previous champion back, one step back in the history (to the base model, where it served).

    The rolled-back version is tagged ``tandem.rolled_back_at``. A retry with the same ``op_id`` finishes
    that rollback and never steps back twice. Raises UserError when there is nothing to roll back to.
    """
    with alias_lock(settings):
        cl = client(settings)
        state = _read_state(cl)
        if _resumed(cl, state, op_id, "rollback"):
            return {**_shown(state.history), "rolled_back": state.moved_from, "changed": True}
        history = _consistent(cl, state)
        if len(history) < 2:
            raise UserError("there is no previous champion to roll back to",
                            fix="promote a version explicitly with `tandem adapters promote VERSION` (or 'base'); "
                                + LIST_FIX)
        rolled, new = history[-1], history[:-1]
        if new[-1] != "base" and _is_failed(_version(cl, new[-1])):
            raise UserError(f"the previous champion (version {new[-1]}) is tagged failed", fix=LIST_FIX)
        _write_state(cl, new, op_id or f"cli-{uuid.uuid4().hex[:12]}", "rollback", rolled)
        _follow(cl, new)
        if rolled != "base":
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for key, value in {tracking.tag("rolled_back_at"): now, tracking.tag("rolled_back_by"): actor,
                               tracking.tag("rollback_reason"): reason}.items():
                cl.set_model_version_tag(MODEL, rolled, key, value[:5000])
    log.info("rollback: champion %s -> %s", rolled, new[-1])
    return {**_shown(new), "rolled_back": None if rolled == "base" else rolled, "changed": True}


def reset_aliases(settings: Settings) -> None:
    """No champion, challenger or previous, and an empty history (the demo's reset). Versions are kept."""
    from mlflow.exceptions import MlflowException

    with alias_lock(settings):
        cl = client(settings)
        for alias in ALIASES:
            if _alias_version(cl, alias) is not None:
                cl.delete_registered_model_alias(MODEL, alias)
        try:
            _write_state(cl, [], f"reset-{uuid.uuid4().hex[:12]}", "reset", None)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
