"""Alias moves are serialized and retry-safe, against the real MLflow server and the real Postgres lock."""

from __future__ import annotations

import threading

import pytest

from adapters_fixtures import adapter_dirs, register_adapter  # noqa: F401 - fixture
from test_adapters_registry import clean_registry  # noqa: F401 - fixture


def _aliases(settings) -> dict:
    from tandem import registry

    cl = registry.client(settings)
    return {a: registry.alias_version(cl, a) for a in registry.ALIASES}


def _assert_consistent(settings) -> list[str]:
    """The aliases say what the history says: champion is its last entry, previous the one before."""
    from tandem import registry

    history = registry.read_state(registry.client(settings)).history
    aliases = _aliases(settings)
    assert aliases["champion"] == (None if history[-1] == "base" else history[-1]), (history, aliases)
    expected_prev = history[-2] if len(history) >= 2 and history[-2] != "base" else None
    assert aliases["previous"] == expected_prev, (history, aliases)
    return history


class DiesAtChampion:
    """The real MLflow client, except that the task dies at the `champion` alias write: before it
    (``after=False``) or right after it (``after=True``)."""

    def __init__(self, cl, after: bool):
        self._cl, self._after = cl, after

    def __getattr__(self, name):
        return getattr(self._cl, name)

    def set_registered_model_alias(self, name, alias, version):
        from tandem import registry

        if alias == registry.CHAMPION and not self._after:
            raise ConnectionError("injected: the task died between two alias writes")
        result = self._cl.set_registered_model_alias(name, alias, version)
        if alias == registry.CHAMPION:
            raise ConnectionError("injected: the task died after its last alias write")
        return result


@pytest.fixture
def three_versions(clean_registry, adapter_dirs):
    return clean_registry, [register_adapter(clean_registry, d) for d in adapter_dirs]


def test_concurrent_promotions_and_rollbacks_end_consistent(three_versions):
    from tandem import registry
    from tandem.errors import UserError

    settings, versions = three_versions
    registry.promote(settings, versions[0], reason="start")
    errors: list[BaseException] = []
    results: list[dict] = []

    def worker(i: int) -> None:
        try:
            for j in range(3):
                if (i + j) % 3 == 2:
                    try:
                        results.append(registry.rollback(settings, reason=f"t{i}"))
                    except UserError:
                        pass  # nothing left to roll back to at that moment: a fine answer
                else:
                    results.append(registry.promote(settings, versions[(i + j) % 3], reason=f"t{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) >= 8
    history = _assert_consistent(settings)
    # every promotion that reported a change appended exactly once: no lost or doubled writes
    changed_promotions = sum(1 for r in results if r["changed"] and "rolled_back" not in r)
    rollbacks = sum(1 for r in results if "rolled_back" in r)
    assert len(history) == 2 + changed_promotions - rollbacks  # it started as ["base", v1]


def test_a_failure_between_two_alias_writes_then_a_retry_converges(three_versions, monkeypatch):
    """The promotion dies after it set `previous` and before `champion`; the retry (same op id) finishes it."""
    from tandem import registry

    settings, (v1, v2, _) = three_versions
    registry.promote(settings, v1, reason="start")
    real_client = registry.client
    monkeypatch.setattr(registry.aliases, "client", lambda s: DiesAtChampion(real_client(s), after=False))
    with pytest.raises(ConnectionError):
        registry.promote(settings, v2, reason="gate passed", op_id="run-1:promote")
    monkeypatch.setattr(registry.aliases, "client", real_client)
    assert _aliases(settings)["champion"] == v1  # the old champion stayed live in between
    out = registry.promote(settings, v2, reason="gate passed", op_id="run-1:promote")
    assert out == {"champion": v2, "previous": v1, "changed": True}  # the retry reports the move: event once
    assert _assert_consistent(settings) == ["base", v1, v2]
    # a second retry of the same move changes nothing more
    assert registry.promote(settings, v2, reason="gate passed", op_id="run-1:promote")["champion"] == v2
    assert _assert_consistent(settings) == ["base", v1, v2]


def test_a_rollback_retried_after_a_partial_write_steps_back_once(three_versions, monkeypatch):
    from tandem import registry

    settings, (v1, v2, v3) = three_versions
    for v in (v1, v2, v3):
        registry.promote(settings, v, reason="up")
    real_client = registry.client  # the history and both aliases are written, then the task dies
    monkeypatch.setattr(registry.aliases, "client", lambda s: DiesAtChampion(real_client(s), after=True))
    with pytest.raises(ConnectionError):
        registry.rollback(settings, reason="bad", op_id="run-9:move_champion")
    monkeypatch.setattr(registry.aliases, "client", real_client)
    out = registry.rollback(settings, reason="bad", op_id="run-9:move_champion")
    assert (out["champion"], out["previous"], out["rolled_back"], out["changed"]) == (v2, v1, v3, True)
    assert _assert_consistent(settings) == ["base", v1, v2]  # one step back, not two


def test_rollback_to_the_base_model_serves_the_base_by_choice(three_versions):
    from tandem import registry

    settings, (v1, _, _) = three_versions
    got = registry.resolve(settings, "champion", download=False)
    assert got.is_base and not got.base_by_choice  # nothing promoted yet
    registry.promote(settings, v1, reason="first")
    out = registry.rollback(settings, reason="back to base")
    assert (out["champion"], out["rolled_back"]) == (None, v1)
    got = registry.resolve(settings, "champion", download=False)
    assert got.is_base and got.base_by_choice and got.label == "base"
    # promoting "base" explicitly is the same state, and promoting it again changes nothing
    registry.promote(settings, v1, reason="again")
    assert registry.promote(settings, "base", reason="explicit")["changed"]
    assert registry.resolve(settings, "champion", download=False).base_by_choice
    assert registry.promote(settings, "base", reason="explicit")["changed"] is False


def test_the_gate_check_happens_under_the_lock(three_versions):
    """A candidate compared against v1 is not promoted once v2 became champion meanwhile."""
    from tandem import registry

    settings, (v1, v2, v3) = three_versions
    registry.promote(settings, v1, reason="first")
    registry.promote(settings, v2, reason="meanwhile")
    out = registry.promote(settings, v3, reason="gate", op_id="run-2:promote", expected=v1)
    assert out["changed"] is False and out["conflict"] == v2
    assert _aliases(settings)["champion"] == v2


def test_an_approval_that_times_out_leaves_the_version_challenger(three_versions):
    from tandem import tracking
    from tandem import registry
    from tandem.adapters import promotion

    settings, (v1, v2, _) = three_versions
    registry.promote(settings, v1, reason="first")
    promotion.fail(settings, {"version": v2, "action": "approve", "run_id": None}, None, "approve_promotion failed")
    tags = registry.client(settings).get_model_version(registry.MODEL, v2).tags
    assert tags.get(registry.STATUS_TAG) != registry.STATUS_FAILED
    assert tags[tracking.tag("gate_reason")] == "approval timed out"
    assert _aliases(settings) == {"champion": v1, "challenger": v2, "previous": None}
    assert registry.resolve(settings, v2, download=False).version == v2  # still servable, still promotable
