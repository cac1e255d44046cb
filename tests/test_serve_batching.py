"""The generation queue of the answer path (tandem.serve.batcher) on the real base model: concurrent questions
form batches, each answer equals the same question's answer alone, and past the queue limit a request is
refused at once with 429."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_fixtures import ANSWERABLE  # noqa: F401 - the session's serve fixtures
from tandem.serve.batcher import Batcher, Overloaded

QUESTIONS = ["What does the Pro plan cost?", "How many seats does the Team plan include?",
             "Is there a free trial?", "How do I reset my password?", "What is the refund window?"]


@pytest.fixture(scope="module")
def generator(base_model_path):
    from tandem.behavior.generate import Generator

    return Generator(str(base_model_path), threads=2)


def _messages(question: str) -> list[dict]:
    return [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": question}]


def test_concurrent_questions_share_batches_and_answer_as_alone(generator):
    alone = {q: generator.generate([_messages(q)], max_new_tokens=16, batch_size=1)[0] for q in QUESTIONS}
    batcher = Batcher(window_ms=300, max_batch=4, max_queue=16)
    start = threading.Barrier(len(QUESTIONS))

    def ask(question):
        start.wait()
        return question, batcher.generate("base", generator, _messages(question), max_new_tokens=16)

    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        results = list(pool.map(ask, QUESTIONS))
    for question, (text, size) in results:
        assert text == alone[question], question
    sizes = batcher.state()["batch_sizes"]
    assert max(sizes) > 1 and max(sizes) <= 4, sizes  # they shared batches, never past the cap
    assert sum(size * count for size, count in sizes.items()) == len(QUESTIONS)


def test_other_versions_and_budgets_never_share_a_batch(generator):
    batcher = Batcher(window_ms=300, max_batch=8, max_queue=16)
    start = threading.Barrier(3)

    def ask(key, budget):
        start.wait()
        return batcher.generate(key, generator, _messages(QUESTIONS[0]), max_new_tokens=budget)[1]

    with ThreadPoolExecutor(3) as pool:
        sizes = list(pool.map(ask, ["base", "7", "base"], [8, 8, 12]))
    assert sizes == [1, 1, 1]


class _Held:
    """Stands in for the model only to hold the worker busy for as long as the test needs (a real model
    finishes at its own pace, so "the queue is full now" could not be arranged); the refusal under test is
    the batcher's own."""

    def __init__(self):
        self.release = threading.Event()

    def generate(self, conversations, max_new_tokens, batch_size):
        self.release.wait(30)
        return ["held"] * len(conversations)


def test_past_the_queue_limit_a_request_is_refused_at_once():
    held = _Held()
    batcher = Batcher(window_ms=0, max_batch=1, max_queue=2)
    pool = ThreadPoolExecutor(3)
    running = pool.submit(batcher.generate, "base", held, [], max_new_tokens=4)
    _wait_for(lambda: batcher.state()["generating"] == 1)
    waiting = [pool.submit(batcher.generate, "base", held, [], max_new_tokens=4) for _ in range(2)]
    _wait_for(lambda: batcher.state()["queue_depth"] == 2)
    with pytest.raises(Overloaded, match="already waiting") as refused:
        batcher.generate("base", held, [], max_new_tokens=4)
    assert refused.value.retry_after >= 1 and "TANDEM_SERVE_QUEUE_MAX" in refused.value.fix
    held.release.set()
    assert [f.result(30)[0] for f in (running, *waiting)] == ["held"] * 3
    assert batcher.state()["refused"] == 1
    pool.shutdown()


def test_the_api_answers_429_with_retry_after_when_the_queue_is_full(airflow_app, serve_index, serve_cache):
    held = _Held()
    full = Batcher(window_ms=0, max_batch=1, max_queue=1)
    pool = ThreadPoolExecutor(2)
    first = pool.submit(full.generate, "base", held, [], max_new_tokens=4)
    _wait_for(lambda: full.state()["generating"] == 1)
    second = pool.submit(full.generate, "base", held, [], max_new_tokens=4)
    _wait_for(lambda: full.state()["queue_depth"] == 1)
    kept, serve_cache.batcher = serve_cache.batcher, full
    try:
        resp = airflow_app.client.post("/tandem/api/ask", json={"question": ANSWERABLE, "adapter": "base"},
                                       headers=airflow_app.headers())
        assert resp.status_code == 429, resp.text
        assert int(resp.headers["retry-after"]) >= 1 and "TANDEM_SERVE_QUEUE_MAX" in resp.json()["fix"]
    finally:
        serve_cache.batcher = kept
        held.release.set()
        first.result(30), second.result(30)
        pool.shutdown()


def _wait_for(condition, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the batcher never reached the expected state")
        time.sleep(0.01)
