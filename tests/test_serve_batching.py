"""The generation queue of the answer path (tandem.serve.batcher) on the real base model: concurrent questions
decode in one batch, a question arriving mid-answer joins it, each answer equals the same question's answer
alone (budgets, streaming and the prefix cache included), models that cannot mix never share a batch, rows of
several adapter versions decode in one mixed step and still answer as their version alone, and past the
queue limit a request is refused at once with 429."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_fixtures import ANSWERABLE  # noqa: F401 - the session's serve fixtures
from tandem.behavior.decoding import PrefixCache, Sequence
from tandem.serve.batcher import Batcher, Overloaded

QUESTIONS = ["What does the Pro plan cost?", "How many seats does the Team plan include?",
             "Is there a free trial?", "How do I reset my password?", "What is the refund window?"]
BUDGETS = [16, 12, 16, 12, 16]


@pytest.fixture(scope="module")
def generator(base_model_path):
    from tandem.behavior.generate import Generator

    return Generator(str(base_model_path), threads=2)


def _messages(question: str) -> list[dict]:
    return [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": question}]


def _alone(generator, question: str, budget: int) -> str:
    return generator.generate([_messages(question)], max_new_tokens=budget, batch_size=1)[0]


def test_concurrent_questions_share_batches_and_answer_as_alone(generator):
    alone = {q: _alone(generator, q, b) for q, b in zip(QUESTIONS, BUDGETS)}
    batcher = Batcher(window_ms=300, max_batch=4, max_queue=16)
    start = threading.Barrier(len(QUESTIONS))

    def ask(question, budget):
        start.wait()
        return question, batcher.generate("base", generator, _messages(question), max_new_tokens=budget)

    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        results = list(pool.map(ask, QUESTIONS, BUDGETS))
    for question, (text, size) in results:
        assert text == alone[question], question
    state = batcher.state()
    sizes = state["batch_sizes"]
    assert sum(sizes.values()) == len(QUESTIONS), sizes  # one entry per answer
    assert 1 < max(sizes) <= 4, sizes  # they decoded together, never past the cap
    assert 1 < state["mean_rows_per_step"] <= 4, state


def test_a_question_arriving_mid_answer_joins_the_running_batch(generator):
    late = QUESTIONS[2]
    expected = _alone(generator, late, 16)
    batcher = Batcher(window_ms=0, max_batch=8, max_queue=16)
    with ThreadPoolExecutor(3) as pool:
        running = [pool.submit(batcher.generate, "base", generator, _messages(q), max_new_tokens=48)
                   for q in QUESTIONS[:2]]
        _wait_for(lambda: batcher.state()["decode_steps"] >= 3)  # the first two are decoding
        assert batcher.state()["generating"] == 2
        text, size = batcher.generate("base", generator, _messages(late), max_new_tokens=16)
        assert [f.result(120)[1] for f in running] == [3, 3]  # the late one decoded beside both
    assert text == expected and size == 3


def test_the_prefix_cache_reuses_stored_prompts_and_answers_the_same(generator):
    batcher = Batcher(window_ms=0, max_batch=8, max_queue=16, prefix_cache_mb=64)
    expected = {q: _alone(generator, q, 16) for q in QUESTIONS[:2]}
    first = batcher.generate("base", generator, _messages(QUESTIONS[0]), max_new_tokens=16)[0]
    cache = batcher.state()["prefix_cache"]
    assert cache["hits"] == 0 and cache["entries"] == 1, cache
    other = batcher.generate("base", generator, _messages(QUESTIONS[1]), max_new_tokens=16)[0]
    cache = batcher.state()["prefix_cache"]
    assert cache["hits"] == 1 and cache["reused_tokens"] > 0, cache  # the shared system prompt
    shared = cache["reused_tokens"]
    again = batcher.generate("base", generator, _messages(QUESTIONS[0]), max_new_tokens=16)[0]
    cache = batcher.state()["prefix_cache"]
    prompt = len(generator.tokenizer(generator.render(_messages(QUESTIONS[0])), add_special_tokens=False)["input_ids"])
    assert cache["reused_tokens"] - shared == prompt - 1, cache  # a repeated question runs its last token only
    assert (first, other, again) == (expected[QUESTIONS[0]], expected[QUESTIONS[1]], expected[QUESTIONS[0]])


def test_a_stream_inside_a_batch_gives_the_text_of_the_answer_alone(generator):
    expected = _alone(generator, QUESTIONS[3], 24)
    batcher = Batcher(window_ms=300, max_batch=8, max_queue=16)
    pieces: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        beside = pool.submit(batcher.generate, "base", generator, _messages(QUESTIONS[4]), max_new_tokens=24)
        text, size = batcher.generate("base", generator, _messages(QUESTIONS[3]), max_new_tokens=24,
                                      on_token=pieces.append)
        beside.result(120)
    assert size == 2 and text == expected
    assert len(pieces) > 1 and "".join(pieces).strip() == expected


class _Gated:
    """A loaded model whose real decoder's steps wait until every prompt of the test is prefilled: on a
    loaded machine the first answer could otherwise end before the last prompt is in, and "who shared a
    batch" would be down to timing. Prefill, decoding and the answers are the real model's."""

    def __init__(self, generator, begun: list, expected: int):
        self._decoder, self._begun, self._expected = generator.decoder(0), begun, expected
        self.all_in = threading.Event()

    def decoder(self, _prefix_cache_mb):
        return self

    def __getattr__(self, name):  # rows, prefix, join, fail: the real decoder's
        return getattr(self._decoder, name)

    def begin(self, messages, **kwargs):
        seq = self._decoder.begin(messages, **kwargs)
        self._begun.append(seq)  # one prefill thread appends, so no lock is needed
        if len(self._begun) >= self._expected:
            for gated in _GATED:
                gated.all_in.set()
        return seq

    def step(self):
        assert self.all_in.wait(120), "the prompts were never all prefilled"
        return self._decoder.step()


_GATED: list[_Gated] = []


def test_models_that_cannot_mix_never_share_a_batch(generator, base_model_path):
    from tandem.behavior.generate import Generator

    other = Generator(str(base_model_path), threads=2)  # another loaded version, as the adapter cache holds it
    begun: list = []
    _GATED[:] = [_Gated(generator, begun, 3), _Gated(other, begun, 3)]
    base, version_7 = _GATED
    expected = _alone(generator, QUESTIONS[0], 8)
    batcher = Batcher(window_ms=300, max_batch=8, max_queue=16)
    start = threading.Barrier(3)

    def ask(key, model):
        start.wait()
        return batcher.generate(key, model, _messages(QUESTIONS[0]), max_new_tokens=8)

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(ask, ["base", "7", "base"], [base, version_7, base]))
    assert [size for _, size in answers] == [2, 1, 2]  # the two base questions together, version 7 alone
    assert {text for text, _ in answers} == {expected}


def _adapter(folder, base_model_path, seed: int) -> str:
    """A LoRA adapter of random weights (seeded; B scaled so answers change but stay words), saved as
    lora_retrain saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model_path),
                           LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.3)
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def versions(generator, base_model_path, tmp_path_factory):
    """base, version 1 and version 2 (merged, as the adapter cache loads them)."""
    from tandem.behavior.generate import Generator

    root = tmp_path_factory.mktemp("adapters")
    return {"base": generator,
            **{key: Generator(str(base_model_path), _adapter(root / f"v{key}", base_model_path, int(key)), threads=2)
               for key in ("1", "2")}}


def _ask_all(batcher, versions: dict, jobs: list) -> list[str]:
    start = threading.Barrier(len(jobs))

    def ask(job):
        key, question = job
        start.wait()
        return batcher.generate(key, versions[key], _messages(question), max_new_tokens=32)[0]

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(ask, jobs))


def test_rows_of_several_versions_decode_in_one_step_and_answer_as_their_version_alone(versions):
    jobs = [(key, q) for key in versions for q in QUESTIONS[:3]]
    alone = {(key, q): versions[key].generate([_messages(q)], max_new_tokens=32, batch_size=1)[0] for key, q in jobs}
    for q in QUESTIONS[:3]:  # the versions answer differently, so a row answered by another would show
        assert len({alone[(key, q)] for key in versions}) >= 2, q
    batcher = Batcher(window_ms=300, max_batch=8, max_queue=16, mix=True)
    first = _ask_all(batcher, versions, jobs)  # the mixer loads its model and attaches both adapters meanwhile
    steps = batcher.state()["mixed_steps"]
    second = _ask_all(batcher, versions, jobs)
    state = batcher.state()
    assert first == second == [alone[job] for job in jobs]
    assert state["mixed_steps"] > steps and state["row_moves"] > 0, state
    assert [{k: m[k] for k in ("attached", "failed")} for m in state["mixers"]] == [{"attached": 2, "failed": None}]
    assert state["mixers"][0]["fused_steps"] == state["mixed_steps"], state  # RowLora took every mixed step
    assert state["generating"] == 0 and max(state["batch_sizes"]) > 3, state  # versions shared steps

    unmixed = Batcher(window_ms=300, max_batch=8, max_queue=16, mix=False)
    assert _ask_all(unmixed, versions, jobs) == first
    assert unmixed.state()["mixed_steps"] == 0 and max(unmixed.state()["batch_sizes"]) <= 3


def test_an_adapter_that_cannot_be_attached_turns_mixing_off_and_the_answers_stay_right(versions, base_model_path,
                                                                                        tmp_path):
    from tandem.behavior.generate import Generator

    broken = Generator(str(base_model_path), threads=2)  # answers as the base model ...
    broken.adapter_path = str(tmp_path / "gone")  # ... but names an adapter folder the mixer cannot read
    batcher = Batcher(window_ms=300, max_batch=8, max_queue=16, mix=True)
    jobs = [("base", QUESTIONS[0]), ("1", QUESTIONS[0]), ("9", QUESTIONS[1])]
    models = {**versions, "9": broken}
    expected = [models[key].generate([_messages(q)], max_new_tokens=32, batch_size=1)[0] for key, q in jobs]
    assert _ask_all(batcher, models, jobs) == expected
    _wait_for(lambda: batcher.state()["mixers"][0]["failed"] is not None)
    assert _ask_all(batcher, models, jobs) == expected  # mixing is off now: each version in its own batch
    assert "gone" in batcher.state()["mixers"][0]["failed"]


class _HeldDecoder:
    """Stands in for the model only to hold the worker busy for as long as the test needs (a real model
    finishes at its own pace, so "the queue is full now" could not be arranged); the refusal under test is
    the batcher's own. ``fail`` makes its prefill raise, as a model error would."""

    def __init__(self, fail: bool = False):
        self.release = threading.Event()
        self.fail = fail
        self.prefix = PrefixCache(0)
        self.rows: list = []

    def decoder(self, _prefix_cache_mb):
        return self

    def begin(self, messages, *, max_new_tokens, on_token=None):
        self.release.wait(30)
        if self.fail:
            raise RuntimeError("the model broke")
        return Sequence([1], max_new_tokens, done=True, text="held", largest_batch=1)


def test_past_the_queue_limit_a_request_is_refused_at_once():
    held = _HeldDecoder()
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


def test_a_failing_model_fails_its_own_request_and_the_worker_goes_on():
    broken, fine = _HeldDecoder(fail=True), _HeldDecoder()
    broken.release.set(), fine.release.set()
    batcher = Batcher(window_ms=0, max_batch=4, max_queue=4)
    with pytest.raises(RuntimeError, match="the model broke"):
        batcher.generate("7", broken, [], max_new_tokens=4)
    assert batcher.generate("base", fine, [], max_new_tokens=4) == ("held", 1)
    assert batcher.state()["generating"] == 0


def test_the_api_answers_429_with_retry_after_when_the_queue_is_full(airflow_app, serve_index, serve_cache):
    held = _HeldDecoder()
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


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the batcher never reached the expected state")
        time.sleep(0.005)
