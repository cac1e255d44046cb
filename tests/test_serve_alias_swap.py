"""Threaded answers while the champion alias flips: every answer names one version that was champion during it."""

from __future__ import annotations

import threading
import time

from adapters_fixtures import adapter_dirs, register_adapter  # noqa: F401 - fixture
from serve_fixtures import ANSWERABLE, clean_registry, flip_champion, was_champion


def test_threaded_asks_during_alias_swaps(serve_settings, serve_index, adapter_dirs):
    from tandem import registry
    from tandem.serve.adapter_cache import AdapterCache
    from tandem.serve.answer import answer

    clean_registry(serve_settings)
    v1, v2 = (register_adapter(serve_settings, d) for d in adapter_dirs[:2])
    live = serve_settings.replace(refusal_min_similarity=0.0, champion_check_seconds=0)  # re-check every request
    flips: list[tuple[float, float, str]] = []
    before = time.monotonic()
    registry.promote(live, v1, reason="start")
    flips.append((before, time.monotonic(), v1))
    cache = AdapterCache(live, check_seconds=0)
    answers: list[tuple[float, float, str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def asker() -> None:
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                got = answer(live, ANSWERABLE, k=2, cache=cache)
                answers.append((t0, time.monotonic(), got.adapter))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=asker) for _ in range(3)]
    for t in threads:
        t.start()
    def wait_for_answers(n: int) -> None:
        deadline = time.monotonic() + 300
        goal = len(answers) + n
        while len(answers) < goal and time.monotonic() < deadline and not errors:
            time.sleep(0.1)

    flip_champion(live, flips, (v1, v2), 3, wait_for_answers)
    wait_for_answers(4)
    stop.set()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(answers) >= 10

    assert all(was_champion(flips, label, t0, t1) for t0, t1, label in answers), (answers, flips)
    # a request that started after a move and ended before the next one was answered by the new champion
    for i, (_start, after, version) in enumerate(flips):
        end = flips[i + 1][0] if i + 1 < len(flips) else float("inf")
        for t0, t1, label in answers:
            if t0 > after and t1 < end:
                assert label == f"v{version}", (label, version)
    assert {label for _, _, label in answers} == {f"v{v1}", f"v{v2}"}  # both versions answered
    assert cache.peak_alive <= cache.max_alive
