"""The champion history: the registered model's tag ``tandem.champion_history``.

It holds the order of champions (``"base"`` where the base model served by choice) and the id of the last
move. A move writes it first, then makes the aliases follow it (``follow``): ``previous`` first, then
``champion`` in a single call, so ``champion`` always names a complete, registered version and a crash in
between leaves the old champion live. A retry of the same move (same ``op_id``) finds its own state written
and only finishes the aliases (``resumed``).
"""

from __future__ import annotations

import dataclasses
import json
import logging

from tandem import tracking
from tandem.registry.versions import CHAMPION, MODEL, PREVIOUS, alias_version, not_found

log = logging.getLogger(__name__)

HISTORY_TAG = tracking.tag("champion_history")
_HISTORY_MAX = 50


@dataclasses.dataclass(frozen=True)
class AliasState:
    """The registered model's champion history and the last move that wrote it."""

    history: list[str]
    op: str | None = None
    kind: str | None = None  # "promote" or "rollback"
    moved_from: str | None = None  # the champion the last move replaced


def read_state(cl) -> AliasState:
    from mlflow.exceptions import MlflowException

    try:
        rm = cl.get_registered_model(MODEL)
    except MlflowException as exc:
        if not_found(exc):
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


def history_of(cl) -> list[str]:
    return read_state(cl).history


def base_by_choice(cl) -> bool:
    """True when the base model serves because a promotion or rollback chose it (not for lack of a champion)."""
    history = history_of(cl)
    return bool(history) and history[-1] == "base"


def write_state(cl, history: list[str], op: str, kind: str, moved_from: str | None) -> None:
    value = {"history": history[-_HISTORY_MAX:], "op": op, "kind": kind, "from": moved_from}
    cl.set_registered_model_tag(MODEL, HISTORY_TAG, json.dumps(value))


def follow(cl, history: list[str]) -> None:
    """Make the aliases match the history: ``previous`` first, then ``champion`` (idempotent)."""
    champion = history[-1] if history else "base"
    previous = history[-2] if len(history) >= 2 and history[-2] != "base" else None
    if previous is None:
        if alias_version(cl, PREVIOUS) is not None:
            cl.delete_registered_model_alias(MODEL, PREVIOUS)
    elif alias_version(cl, PREVIOUS) != previous:
        cl.set_registered_model_alias(MODEL, PREVIOUS, previous)
    current = alias_version(cl, CHAMPION)
    if champion == "base":
        if current is not None:
            cl.delete_registered_model_alias(MODEL, CHAMPION)
    elif current != champion:
        cl.set_registered_model_alias(MODEL, CHAMPION, champion)  # the single switch users see


def consistent(cl, state: AliasState) -> list[str]:
    """The history, rebuilt from the aliases when they were moved outside Tandem."""
    current = alias_version(cl, CHAMPION) or "base"
    if state.history and state.history[-1] == current:
        return list(state.history)
    prev = alias_version(cl, PREVIOUS)
    return ([prev] if prev else []) + [current]


def resumed(cl, state: AliasState, op_id: str | None, kind: str) -> bool:
    """A retry of the move that wrote ``state``: finish it (the aliases follow its history) and say so."""
    if not op_id or state.op != op_id or state.kind != kind:
        return False
    follow(cl, state.history)
    log.info("%s %s resumed: the aliases follow the history it wrote", kind, op_id)
    return True


def shown(history: list[str]) -> dict[str, str | None]:
    champion = history[-1] if history else "base"
    previous = history[-2] if len(history) >= 2 and history[-2] != "base" else None
    return {"champion": None if champion == "base" else champion, "previous": previous}
