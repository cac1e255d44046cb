"""`make bench-batching`: where a batched answer's time goes on this machine. Prints figures; asserts nothing.

Eight answer prompts of the serving shape (the spec's system prompt, 3 chunks of seeded text from the
README, a golden question), base model on CPU, greedy: the prefill alone (1 new token) and the whole answer
(the spec's 96-token budget) at batch 1, 4 and 8, per answer. It separates what batching saves in decoding
from what padded batched prefill costs.

``--engines`` instead puts the three ways to answer the eight prompts submitted at once side by side, each
``--runs`` times (medians): serve's decoder (``tandem.behavior.decoding``: each prompt prefilled alone, decode
steps batched, no prefix cache), transformers' own continuous batching (``generate_batch``, paged attention)
and one padded ``generate`` call of batch 8. Every engine's answer texts are compared with the decoder's.

Usage: python benchmarks/bench_batching.py [--threads 1] [--engines [--runs 3]]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--engines", action="store_true",
                   help="compare serve's decoder, transformers' generate_batch and a batched generate")
    p.add_argument("--runs", type=int, default=3, help="runs per engine with --engines (medians)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be at least 1 (got {args.runs})")
    import torch

    torch.set_num_threads(args.threads)
    from tandem.behavior.generate import Generator
    from tandem.behavior.prompt import build_messages
    from tandem.behavior.spec import load_spec

    spec = load_spec(REPO / "include/tandem/data/demo/behavior_spec.yaml")
    rng = random.Random(0)
    words = sorted((REPO / "README.md").read_text().split())
    questions = [json.loads(line)["query"] for line in
                 (REPO / "include/tandem/data/demo/golden_retrieval.jsonl").read_text().splitlines() if line.strip()]

    def chunks(i: int) -> list[dict]:
        return [{"doc_id": f"doc-{i}-{j}.md", "title": f"T{j}", "text": " ".join(rng.choice(words) for _ in range(120))}
                for j in range(3)]

    convs = [build_messages(questions[i % len(questions)], chunks(i), spec) for i in range(8)]
    base = os.environ.get("TANDEM_BASE_MODEL") or str(REPO / ".tandem/models/SmolLM2-135M-Instruct")  # as bench-serve
    gen = Generator(base, threads=args.threads)
    tokens = [len(gen.tokenizer(gen.render(c))["input_ids"]) for c in convs]
    print(f"bench-batching: {args.threads} torch threads, prompt tokens {tokens}")
    gen.generate(convs[:1], max_new_tokens=4, batch_size=1)  # warm-up
    if args.engines:
        return _engines(gen, convs, spec.max_new_tokens, args.runs)
    for size in (1, 4, 8):
        for budget in (1, spec.max_new_tokens):
            t0 = time.monotonic()
            gen.generate(convs[:size], max_new_tokens=budget, batch_size=size)
            seconds = time.monotonic() - t0
            what = "prefill (1 token)" if budget == 1 else f"answer ({budget} tokens max)"
            print(f"batch {size} {what:<24} {seconds:6.2f} s, {seconds / size:5.2f} s per answer, "
                  f"{gen.last_stats['new_tokens']} new tokens", flush=True)
    return 0


def _engines(gen, convs: list, budget: int, runs: int) -> int:
    """The eight prompts at once through each engine, ``runs`` times; prints medians and answer agreement."""
    import statistics

    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    ids = [gen.tokenizer(gen.render(c), add_special_tokens=False)["input_ids"] for c in convs]
    decoder = gen.decoder(0)

    def tandem_decoder() -> list[str]:
        seqs = [decoder.begin(c, max_new_tokens=budget) for c in convs]
        for seq in seqs:
            if not seq.done:
                decoder.join(seq)
        while decoder.rows:
            decoder.step()
        return [s.text for s in seqs]

    config = GenerationConfig(max_new_tokens=budget, do_sample=False, eos_token_id=gen.tokenizer.eos_token_id,
                              pad_token_id=gen.tokenizer.pad_token_id)
    paged = ContinuousBatchingConfig(num_blocks=64, max_batch_tokens=2048, page_size=256)

    def transformers_cb() -> list[str]:
        out = gen.model.generate_batch(ids, generation_config=config, continuous_batching_config=paged, warmup=False)
        return [gen._decode(list(out[f"req_{i}"].generated_tokens))[0] for i in range(len(ids))]

    def batched_generate() -> list[str]:
        return gen.generate(convs, max_new_tokens=budget, batch_size=len(convs))

    engines = [("serve's decoder (tandem.behavior.decoding)", tandem_decoder),
               ("transformers generate_batch (continuous batching, paged)", transformers_cb),
               ("generate, one padded batch of 8", batched_generate)]
    reference = tandem_decoder()  # also the warm-up of the decoder
    print(f"the {len(convs)} prompts submitted at once, {budget} new tokens at most, {runs} runs each")
    for name, engine in engines:
        engine()  # warm-up
        seconds = []
        for _ in range(runs):
            t0 = time.monotonic()
            answers = engine()
            seconds.append(time.monotonic() - t0)
        median = statistics.median(seconds)
        same = sum(r == a for r, a in zip(reference, answers))
        print(f"{name:<58} {median:6.2f} s (runs {', '.join(f'{x:.2f}' for x in seconds)}), "
              f"{len(convs) / median:5.3f} answers/s, same answer as the decoder {same} of {len(convs)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
