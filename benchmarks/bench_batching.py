"""`make bench-batching`: where a batched answer's time goes on this machine. Prints figures; asserts nothing.

Eight answer prompts of the serving shape (the spec's system prompt, 3 chunks of seeded text from the
README, a golden question), base model on CPU, greedy: the prefill alone (1 new token) and the whole answer
(the spec's 96-token budget) at batch 1, 4 and 8, per answer. It separates what batching saves in decoding
from what padded batched prefill costs.

Usage: python benchmarks/bench_batching.py [--threads 1]
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
    args = p.parse_args(argv)
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
    for size in (1, 4, 8):
        for budget in (1, spec.max_new_tokens):
            t0 = time.monotonic()
            gen.generate(convs[:size], max_new_tokens=budget, batch_size=size)
            seconds = time.monotonic() - t0
            what = "prefill (1 token)" if budget == 1 else f"answer ({budget} tokens max)"
            print(f"batch {size} {what:<24} {seconds:6.2f} s, {seconds / size:5.2f} s per answer, "
                  f"{gen.last_stats['new_tokens']} new tokens", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
