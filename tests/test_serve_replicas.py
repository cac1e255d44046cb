"""Two `tandem serve` replicas behind one round-robin client while the champion alias flips: serve holds no state
of its own, so every answer comes back 200 and names a version that was champion during its request."""

from __future__ import annotations

import itertools
import threading
import time

import httpx

from adapters_fixtures import adapter_dirs, register_adapter  # noqa: F401 - fixture
from serve_fixtures import ANSWERABLE, clean_registry, flip_champion, start_serve, was_champion


def test_two_replicas_answer_in_turn_while_the_champion_flips(serve_settings, serve_index, adapter_dirs):
    from tandem import registry

    clean_registry(serve_settings)
    v1, v2 = (register_adapter(serve_settings, d) for d in adapter_dirs[:2])
    live = serve_settings.replace(refusal_min_similarity=0.0, champion_check_seconds=0, serve_token="replica-token")
    flips: list[tuple[float, float, str]] = []
    before = time.monotonic()
    registry.promote(live, v1, reason="start")
    flips.append((before, time.monotonic(), v1))
    replicas = [start_serve(live) for _ in range(2)]
    urls = itertools.cycle([url for _, url in replicas])  # what any load balancer does
    turn = threading.Lock()
    answers: list[tuple[float, float, int, str, str]] = []
    stop = threading.Event()

    def asker() -> None:
        while not stop.is_set():
            with turn:
                url = next(urls)
            t0 = time.monotonic()
            resp = httpx.post(f"{url}/api/ask", json={"question": ANSWERABLE, "k": 2}, timeout=300,
                              headers={"Authorization": "Bearer replica-token"})
            answers.append((t0, time.monotonic(), resp.status_code, url,
                            resp.json().get("adapter", "") if resp.status_code == 200 else resp.text))

    def wait_for_answers(n: int) -> None:
        goal, deadline = len(answers) + n, time.monotonic() + 300
        while len(answers) < goal and time.monotonic() < deadline:
            time.sleep(0.1)

    threads = [threading.Thread(target=asker) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        flip_champion(live, flips, (v1, v2), 2, wait_for_answers)
        wait_for_answers(4)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
        for proc, _ in replicas:
            proc.terminate()
            proc.wait(timeout=30)

    assert [a for a in answers if a[2] != 200] == []  # 0 errors, 5xx or otherwise
    assert {a[3] for a in answers} == {url for _, url in replicas}  # both replicas answered

    assert all(was_champion(flips, label, t0, t1) for t0, t1, _, _, label in answers), (answers, flips)
    assert {a[4] for a in answers} == {f"v{v1}", f"v{v2}"}
