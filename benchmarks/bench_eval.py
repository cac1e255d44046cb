"""Benchmark of the behavior eval (``make bench-behavior``): batched generation throughput and the demo eval.

Prints (and writes to benchmarks/results/eval.json):
- batched greedy generation on real demo prompts (eval questions + context retrieved from the demo index):
  examples/s and new tokens/s per batch size, the median of ``--repeats`` runs (same inputs, greedy, so the
  outputs are identical across repeats, which is checked);
- the whole demo eval (``eval_run.run_eval`` + the decision, exactly what ``tandem eval`` and the DAG run)
  with the base model: wall time against the 10-minute target, the scorecard and the diagnosis mix.

By default it starts its own stack in a temporary TANDEM_HOME (embedded Postgres + pgvector, MLflow server)
and indexes release 1 of the demo KB; ``--use-stack`` uses the configured one (``make up``) instead. The
load average is printed with the figures: on a shared machine, compare runs taken under similar load.

    python benchmarks/bench_eval.py [--examples 16] [--batch-sizes 1,8] [--repeats 3] [--skip-full-eval]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

from tandem.stack.ephemeral import EphemeralStack  # noqa: E402 - after the environment defaults

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET_WALL_S = 600  # the issue: the demo eval (~80 examples) on CPU in <= 10 minutes


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def throughput(settings, spec, examples, batch_sizes, repeats, max_new_tokens) -> dict:
    from tandem.behavior import eval_run
    from tandem.behavior.generate import Generator
    from tandem.behavior.prompt import build_messages

    items, _version = eval_run.retrieve(settings, spec, examples)
    conversations = [build_messages(ex.question, hits, spec) for ex, hits in items]
    t0 = time.monotonic()
    gen = Generator(str(settings.base_model), threads=settings.torch_threads)
    load_s = time.monotonic() - t0
    out = {"examples": len(conversations), "max_new_tokens": max_new_tokens, "model_load_s": round(load_s, 1),
           "device": gen.device, "batch_sizes": {}}
    for bs in batch_sizes:
        runs, outputs = [], set()
        for r in range(repeats):
            answers = gen.generate(conversations, max_new_tokens=max_new_tokens, batch_size=bs)
            stats = dict(gen.last_stats)
            outputs.add(json.dumps(answers))
            runs.append(stats)
            print(f"  batch {bs}, run {r + 1}: {stats['examples_per_s']:.3f} examples/s, "
                  f"{stats['new_tokens'] / stats['seconds']:.1f} new tokens/s ({stats['seconds']:.1f}s; {load()})",
                  flush=True)
        out["batch_sizes"][str(bs)] = {
            "examples_per_s_median": round(statistics.median(r["examples_per_s"] for r in runs), 4),
            "new_tokens_per_s_median": round(statistics.median(r["new_tokens"] / r["seconds"] for r in runs), 2),
            "seconds_median": round(statistics.median(r["seconds"] for r in runs), 2),
            "prompt_tokens_per_example": round(runs[0]["prompt_tokens"] / len(conversations), 1),
            "new_tokens_per_example": round(runs[0]["new_tokens"] / len(conversations), 1),
            "identical_outputs_across_repeats": len(outputs) == 1, "runs": runs,
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=16, help="eval examples for the throughput runs")
    ap.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes to measure")
    ap.add_argument("--repeats", type=int, default=3, help="runs per batch size (median reported, >= 1)")
    ap.add_argument("--max-new-tokens", type=int, default=0, help="token budget (0: the spec's)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--skip-full-eval", action="store_true", help="only the throughput runs")
    ap.add_argument("--use-stack", action="store_true", help="use the configured stack (make up)")
    ap.add_argument("--out", type=Path, default=RESULTS / "eval.json")
    args = ap.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `finally` stops the ephemeral stack

    from tandem.behavior import eval_run
    from tandem.behavior.evalset import load_examples
    from tandem.behavior.report import scorecard
    from tandem.behavior.spec import load_spec
    from tandem.demo import data
    from tandem.knowledge import reindex

    tmp = stack = None
    if args.use_stack:
        from tandem.config import load as load_settings

        settings = load_settings()
    else:
        tmp = Path(tempfile.mkdtemp(prefix="tandem-bench-", dir="/tmp"))
        os.chmod(tmp, 0o755)  # the embedded Postgres runs as its own system user
        stack = EphemeralStack(tmp)
    result: dict = {"started_under": load()}
    try:
        if stack is not None:
            settings = stack.__enter__()
        settings = settings.replace(torch_threads=args.threads)
        if not args.use_stack:
            kb = settings.home / "bench_kb" / data.SOURCE_NAME
            data.materialise_release1(kb, force=True)
            settings = settings.replace(sources=(data.source_spec(kb),))
            t0 = time.monotonic()
            reindex.run(settings, progress=False)
            print(f"indexed demo release 1 in {time.monotonic() - t0:.1f}s", flush=True)
        spec = load_spec(settings.spec_path)
        examples = load_examples(settings.eval_set_path)
        max_new = args.max_new_tokens or spec.max_new_tokens

        print(f"throughput: {args.examples} demo eval examples, batch sizes {batch_sizes}, {args.repeats} runs each, "
              f"max_new_tokens {max_new}, {args.threads} threads", flush=True)
        result["throughput"] = throughput(settings, spec, examples[:args.examples], batch_sizes,
                                          max(1, args.repeats), max_new)

        if not args.skip_full_eval:
            print(f"full demo eval: {len(examples)} examples, base model ({load()})", flush=True)
            t0 = time.monotonic()
            summary = eval_run.run_eval(settings, adapter="base", source="bench")
            decision = eval_run.decide_and_record(settings, summary)
            wall = time.monotonic() - t0
            result["full_eval"] = {"wall_s": round(wall, 1), "target_wall_s": TARGET_WALL_S,
                                   "within_target": wall <= TARGET_WALL_S, "summary": summary,
                                   "decision": decision.as_dict(), "ended_under": load()}
            result["scorecard"] = scorecard(summary, decision)
    finally:
        if stack is not None:
            stack.__exit__(None, None, None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    tp = result["throughput"]
    print()
    print(f"batched greedy generation on {tp['device']}, {args.threads} threads, {tp['examples']} demo prompts, "
          f"max_new_tokens {tp['max_new_tokens']} (median of {args.repeats}):")
    print("| batch | examples/s | new tokens/s | s per run | prompt tok/ex | new tok/ex | identical |")
    print("|---|---|---|---|---|---|---|")
    for bs, r in tp["batch_sizes"].items():
        print(f"| {bs} | {r['examples_per_s_median']:.3f} | {r['new_tokens_per_s_median']:.1f} | "
              f"{r['seconds_median']:.1f} | {r['prompt_tokens_per_example']} | {r['new_tokens_per_example']} | "
              f"{r['identical_outputs_across_repeats']} |")
    if "full_eval" in result:
        fe = result["full_eval"]
        print()
        print(result["scorecard"])
        print()
        print(f"demo eval wall time: {fe['wall_s']:.1f}s for {fe['summary']['n']} examples "
              f"(target <= {TARGET_WALL_S}s: {'met' if fe['within_target'] else 'NOT met'}); "
              f"started under {result['started_under']}, ended under {fe['ended_under']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
