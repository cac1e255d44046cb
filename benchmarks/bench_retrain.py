"""Benchmark of the behavior cadence's retrain on the demo dataset (``make bench-behavior``).

Prints (and writes to benchmarks/results/retrain.json):
- the RAFT dataset build time and counts;
- LoRA training wall time and s/step (median of ``--repeats`` runs, same seed, so the same adapter);
- the held-out efficacy table, base against the new adapter, with the issue's targets:
  schema-valid JSON rate >= 95%, citation validity >= 90%, refusal correctness (reported);
- the gate's decision under the demo spec.

By default it starts its own stack in a temporary TANDEM_HOME (embedded Postgres + pgvector, MLflow server),
indexes release 1 of the demo KB and trains with the retrain defaults (``tandem.adapters.params``);
``--use-stack`` uses the configured one (``make up``) instead. Runs on CUDA when present.

    python benchmarks/bench_retrain.py [--steps N] [--repeats 3] [--set NAME=VALUE ...] [--holdout-limit N]
                                       [--variant NAME=VALUE[,NAME=VALUE] ...]

``--variant`` trains the same dataset build once more per variant (``threads=N`` sets the torch threads, any
other name a retrain parameter) and prints its s/step and tokens/row beside the main run's: for example
``--variant distractor_chars=0 --variant threads=1`` measures what the short distractors and the second
thread buy, on one stack and one index.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from tandem.stack.ephemeral import EphemeralStack  # noqa: E402 - after the environment defaults

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGETS = {"schema_valid": 0.95, "citations_valid": 0.90}
SHOWN = ("json_valid", "schema_valid", "citations_valid", "refusal_correct", "no_false_refusal", "grounded",
         "answer_correct", "style_max_words", "pass_rate")


def reindex_demo(settings) -> tuple[object, float]:
    from tandem.demo import data

    kb = settings.home / "bench_kb" / data.SOURCE_NAME
    data.materialise_release1(kb, force=True)
    s = settings.replace(sources=(data.source_spec(kb),))
    started = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "tandem"), "reindex", "--json"],
                          env={**os.environ, **s.as_env()}, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"reindex failed:\n{proc.stderr[-3000:]}")
    return s, time.monotonic() - started


def _items(settings, run_id: str) -> dict:
    """The per-item outputs of the three-way evaluation (MLflow table artifact)."""
    import mlflow.artifacts

    from tandem.adapters.retrain import EVAL_ITEMS

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=EVAL_ITEMS, dst_path=tmp,
                                                   tracking_uri=settings.mlflow_uri)
        table = json.loads(Path(path).read_text())
    return {"columns": table.get("columns"), "data": table.get("data")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="max_steps (default: the retrain default)")
    ap.add_argument("--repeats", type=int, default=3, help="training runs for the median wall time (>= 1)")
    ap.add_argument("--set", dest="assignments", action="append", default=[], metavar="NAME=VALUE",
                    help="another retrain parameter")
    ap.add_argument("--holdout-limit", type=int, default=0, help="score only the first N holdout rows (0: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--use-stack", action="store_true", help="use the configured stack (make up)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                    help="also time training with these changes (threads=N or retrain parameters)")
    ap.add_argument("--out", type=Path, default=RESULTS / "retrain.json")
    args = ap.parse_args(argv)

    import torch

    from tandem.adapters import params, promotion, retrain

    values = dict(params.parse_assignment(a) for a in args.assignments)
    if args.steps is not None:
        values["max_steps"] = args.steps
    values.setdefault("reason", "benchmark")
    p = params.validate(values)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    tmp = None
    if args.use_stack:
        from tandem.config import load

        stack, settings = None, load()
    else:
        tmp = Path(tempfile.mkdtemp(prefix="tandem-bench-", dir="/tmp"))
        os.chmod(tmp, 0o755)  # the embedded Postgres runs as its own system user
        stack = EphemeralStack(tmp)
    try:
        if stack is not None:
            settings = stack.__enter__()
        settings = settings.replace(torch_threads=args.threads)
        settings, reindex_s = reindex_demo(settings)
        print(f"indexed demo release 1 in {reindex_s:.1f}s", flush=True)

        started = time.monotonic()
        state = retrain.prepare(settings, p.as_dict())
        prepare_s = time.monotonic() - started
        print(f"RAFT dataset: {state['counts']} in {prepare_s:.1f}s (digest {state['dataset_digest'][:12]})", flush=True)

        variants = []
        for text in args.variant:
            changes = dict(params.parse_assignment(a) for a in text.split(",") if a.strip())
            threads = int(changes.pop("threads", args.threads))
            torch.set_num_threads(threads)
            v_state = retrain.prepare(settings.replace(torch_threads=threads), {**p.as_dict(), **changes})
            timed = []
            for _ in range(max(1, args.repeats)):
                done = retrain.train(settings.replace(torch_threads=threads), v_state)["training"]
                timed.append(done)
            variants.append({"variant": text, "threads": threads, "counts": v_state["counts"],
                             "s_per_step_median": statistics.median(t["s_per_step"] for t in timed),
                             "tokens_per_row": timed[-1]["tokens_per_row"], "runs": timed})
            print(f"variant {text}: {variants[-1]['s_per_step_median']:.2f} s/step (median of {len(timed)}), "
                  f"{variants[-1]['tokens_per_row']} tokens/row", flush=True)
        torch.set_num_threads(args.threads)

        runs = []
        for i in range(max(1, args.repeats)):
            t0 = time.monotonic()
            trained = retrain.train(settings, state,
                                    on_step=lambda s, n, loss: print(f"  step {s}/{n} loss {loss:.3f}", flush=True)
                                    if s == 1 or s % 10 == 0 or s == n else None)
            wall = time.monotonic() - t0
            runs.append({"wall_s": round(wall, 1), **trained["training"]})
            print(f"training run {i + 1}: {wall:.1f}s wall, {trained['training']['s_per_step']} s/step, "
                  f"loss {trained['training']['first_loss']} -> {trained['training']['final_loss']}", flush=True)
        state = trained

        t0 = time.monotonic()
        state = retrain.evaluate(settings, state, limit=args.holdout_limit or None)
        eval_s = time.monotonic() - t0
        items = _items(settings, state["run_id"])
        from tandem.serve.pyfunc import log_adapter_model

        state = promotion.register(settings, state, log_model=log_adapter_model)
        state = promotion.gate(settings, state)
        # the benchmark never moves the champion of a shared stack
        models = state["evaluation"]["models"]
        base, cand = models["base"], models["candidate"]
        result = {
            "device": device, "threads": args.threads, "params": p.as_dict(), "counts": state["counts"],
            "reindex_s": round(reindex_s, 1), "prepare_s": round(prepare_s, 1),
            "train_wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "s_per_step_median": statistics.median(r["s_per_step"] for r in runs),
            "train_runs": runs, "eval_s": round(eval_s, 1), "holdout_rows": state["evaluation"]["n"],
            "eval_seconds": state["evaluation"].get("eval_seconds"),
            "efficacy": {"base": base, "adapter": cand}, "targets": TARGETS,
            "targets_met": {m: cand.get(m, 0.0) >= t for m, t in TARGETS.items()},
            "gate": {"action": state["action"], "reason": state["reason"]}, "version": state["version"],
            "identical_adapters_across_repeats": len({r["probe_logits_sha256"] for r in runs}) == 1,
            "items": items, "variants": variants,
        }
    finally:
        if stack is not None:
            stack.__exit__(None, None, None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"device {device}, {args.threads} threads; {p.max_steps} steps x batch {p.batch_size}, "
          f"max_seq_len {p.max_seq_len}, LoRA r={p.lora_r} on {','.join(p.target_modules)}")
    print(f"training wall time (median of {len(runs)}): {result['train_wall_s_median']:.1f}s; "
          f"s/step (median): {result['s_per_step_median']:.2f}; tokens/row {runs[-1]['tokens_per_row']}")
    print(f"three-way evaluation of {result['holdout_rows']} holdout rows: {result['eval_s']:.1f}s "
          f"({result['eval_seconds']})")
    print(f"adapters identical across repeats (same seed): {result['identical_adapters_across_repeats']}")
    for v in variants:
        ratio = v["s_per_step_median"] / result["s_per_step_median"] if result["s_per_step_median"] else float("nan")
        print(f"variant {v['variant']} ({v['threads']} threads): {v['s_per_step_median']:.2f} s/step, "
              f"{v['tokens_per_row']} tokens/row: {ratio:.2f}x the main run's s/step")
    print()
    print(f"| metric | base | adapter | target |")
    print(f"|---|---|---|---|")
    for m in SHOWN:
        target = f">= {TARGETS[m]:.0%}" if m in TARGETS else ""
        print(f"| {m} | {base.get(m, float('nan')):.3f} | {cand.get(m, float('nan')):.3f} | {target} |")
    print()
    print(f"gate under the demo spec: {result['gate']['action']} ({result['gate']['reason']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
