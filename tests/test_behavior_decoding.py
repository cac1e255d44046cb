"""Continuous batched decoding (tandem.behavior.decoding) on the real base model: rows that join a running
batch at different steps, with prompts of different lengths and budgets, give the answers ``generate`` gives
each prompt alone; the prefix cache stays within its bound and evicts the least recently used prompt."""

from __future__ import annotations

import pytest

from tandem.behavior.decoding import Decoder, PrefixCache

PROMPTS = [
    ("Answer in one short sentence.", "What does the Pro plan cost?", 20),
    ("Answer in one short sentence.", "Is there a free trial?", 12),
    ("You are a support assistant. Answer politely, in two sentences at most, and name the plan.",
     "How many seats does the Team plan include, and can I add more later?", 24),
    ("Answer in one short sentence.", "How do I reset my password?", 8),
]


@pytest.fixture(scope="module")
def generator(base_model_path):
    from tandem.behavior.generate import Generator

    return Generator(str(base_model_path), threads=2)


def _messages(system: str, question: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def test_rows_joining_at_different_steps_answer_as_alone(generator):
    alone = [generator.generate([_messages(s, q)], max_new_tokens=b, batch_size=1)[0] for s, q, b in PROMPTS]
    decoder = Decoder(generator, prefix_cache_bytes=32 * 2**20)
    answers: dict[int, str] = {}
    rows: dict[int, object] = {}
    joins = {0: [0, 1], 3: [2], 5: [3]}  # step -> the prompts that begin before it
    widest = 0
    for step in range(200):
        for i in joins.get(step, []):
            seq = decoder.begin(_messages(*PROMPTS[i][:2]), max_new_tokens=PROMPTS[i][2])
            rows[id(seq)] = i
            if seq.done:
                answers[i] = seq.text
            else:
                decoder.join(seq)
        widest = max(widest, len(decoder.rows))
        for seq in decoder.step():
            answers[rows[id(seq)]] = seq.text
        if len(answers) == len(PROMPTS):
            break
    assert [answers[i] for i in range(len(PROMPTS))] == alone
    assert widest >= 3 and not decoder.rows  # they did decode side by side, and every row left
    assert decoder.prefix.state()["hits"] >= 1  # the shared system prompt was reused


def test_the_prefix_cache_keeps_within_its_bound_least_recently_used_out():
    import torch

    def kv(n):  # one layer of n tokens: 2 x 1x1xnx4 float32 = 32n bytes
        return [(torch.zeros(1, 1, n, 4), torch.zeros(1, 1, n, 4))]

    cache = PrefixCache(max_bytes=32 * 10)
    cache.put([1, 2, 3, 4], kv(4))
    cache.put([5, 6, 7, 8], kv(4))
    assert cache.longest([1, 2, 3, 9])[0] == 3  # the longest shared prefix, [1, 2, 3]
    cache.put([9, 9, 9], kv(3))  # 11 tokens stored > 10: the least recently used, [5..8], goes
    state = cache.state()
    assert state["entries"] == 2 and state["mb"] <= 32 * 10 / 2**20
    assert cache.longest([5, 6, 7, 0])[0] == 0 and cache.longest([1, 2, 3, 4])[0] == 3  # never the last token
    n, layers = cache.longest([9, 9, 9, 1])
    assert n == 3 and layers[0][0].shape[2] == 3
    cache.put(list(range(20)), kv(20))  # larger than the whole bound: not stored, nothing evicted
    assert cache.state()["entries"] == 2
    assert PrefixCache(0).longest([1, 2]) == (0, None)
    cache.resize(32 * 4)  # a smaller bound: the least recently used go until it fits
    assert cache.state()["entries"] == 1 and cache.longest([9, 9, 9, 2])[0] == 3
