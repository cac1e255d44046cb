"""Moving the aliases: ``champion`` is live, ``challenger`` the latest candidate that was not promoted,
``previous`` the champion before the current one (docs/architecture.md).

Every move (the gate's challenger, a promotion, a rollback, the CLI) runs under one Postgres advisory lock
(``alias_lock``), re-reads the champion history inside it (``tandem.registry.history``) and converges on a
retry with the same ``op_id``.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from tandem import tracking
from tandem.config import Settings
from tandem.errors import ServiceUnavailable, UserError
from tandem.registry.history import consistent, follow, read_state, resumed, shown, write_state
from tandem.registry.versions import (ALIASES, CHALLENGER, CHAMPION, LIST_FIX, MODEL, alias_version, client,
                                      get_version, is_failed, not_found, version_number)

log = logging.getLogger(__name__)

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


def set_challenger(settings: Settings, version: str, reason: str) -> None:
    """The candidate was not promoted: alias ``challenger`` and the reason as tags. Champion is untouched."""
    with alias_lock(settings):
        cl = client(settings)
        if alias_version(cl, CHAMPION) == str(version):  # a move that already made it champion stays
            return
        cl.set_registered_model_alias(MODEL, CHALLENGER, str(version))
        for key, value in {tracking.tag("gate_decision"): "challenger", tracking.tag("gate_reason"): reason}.items():
            cl.set_model_version_tag(MODEL, str(version), key, value[:5000])


def _normalise_target(version: str) -> str:
    target = version_number(version) or str(version).strip()
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
        state = read_state(cl)
        if resumed(cl, state, op_id, "promote"):
            return {**shown(state.history), "changed": True}
        if target != "base":
            mv = get_version(cl, target)
            if is_failed(mv):
                raise UserError(f"adapter version {target} is tagged failed and cannot become champion",
                                fix="pick another version; " + LIST_FIX)
        history = consistent(cl, state)
        current = history[-1]
        if current == target:
            follow(cl, history)
            return {**shown(history), "changed": False}
        if expected is not _ANY and current != (expected or "base"):
            return {**shown(history), "changed": False, "conflict": current}
        new = history + [target]
        write_state(cl, new, op_id or f"cli-{uuid.uuid4().hex[:12]}", "promote", current)
        follow(cl, new)
        if target != "base":
            if alias_version(cl, CHALLENGER) == target:
                cl.delete_registered_model_alias(MODEL, CHALLENGER)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for key, value in {tracking.tag("promoted_at"): now, tracking.tag("promoted_by"): actor,
                               tracking.tag("promotion_reason"): reason}.items():
                cl.set_model_version_tag(MODEL, target, key, value[:5000])
    log.info("champion: %s -> %s (%s)", current, target, reason)
    return {**shown(new), "changed": True}


def rollback(settings: Settings, *, reason: str = "rollback", actor: str = "tandem",
             op_id: str | None = None) -> dict[str, Any]:
    """Put the previous champion back, one step back in the history (to the base model, where it served).

    The rolled-back version is tagged ``tandem.rolled_back_at``. A retry with the same ``op_id`` finishes
    that rollback and never steps back twice. Raises UserError when there is nothing to roll back to.
    """
    with alias_lock(settings):
        cl = client(settings)
        state = read_state(cl)
        if resumed(cl, state, op_id, "rollback"):
            return {**shown(state.history), "rolled_back": state.moved_from, "changed": True}
        history = consistent(cl, state)
        if len(history) < 2:
            raise UserError("there is no previous champion to roll back to",
                            fix="promote a version explicitly with `tandem adapters promote VERSION` (or 'base'); "
                                + LIST_FIX)
        rolled, new = history[-1], history[:-1]
        if new[-1] != "base" and is_failed(get_version(cl, new[-1])):
            raise UserError(f"the previous champion (version {new[-1]}) is tagged failed", fix=LIST_FIX)
        write_state(cl, new, op_id or f"cli-{uuid.uuid4().hex[:12]}", "rollback", rolled)
        follow(cl, new)
        if rolled != "base":
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for key, value in {tracking.tag("rolled_back_at"): now, tracking.tag("rolled_back_by"): actor,
                               tracking.tag("rollback_reason"): reason}.items():
                cl.set_model_version_tag(MODEL, rolled, key, value[:5000])
    log.info("rollback: champion %s -> %s", rolled, new[-1])
    return {**shown(new), "rolled_back": None if rolled == "base" else rolled, "changed": True}


def reset_aliases(settings: Settings) -> None:
    """No champion, challenger or previous, and an empty history (the demo's reset). Versions are kept."""
    from mlflow.exceptions import MlflowException

    with alias_lock(settings):
        cl = client(settings)
        for alias in ALIASES:
            if alias_version(cl, alias) is not None:
                cl.delete_registered_model_alias(MODEL, alias)
        try:
            write_state(cl, [], f"reset-{uuid.uuid4().hex[:12]}", "reset", None)
        except MlflowException as exc:
            if not not_found(exc):
                raise
