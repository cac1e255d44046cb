"""`make bench-stack`: LocalExecutor against the Celery stack. Prints figures; asserts nothing.

1. idle    Time from `make up` to healthy (every service, Airflow's components and, with Celery, every worker
           answering the broker), then the whole stack's resident memory (RSS of every process, Postgres
           included) after ``--settle`` seconds idle. Each executor in a fresh TANDEM_HOME.
2. reindex A cold reindex of ``--docs`` (2,000) generated documents through the `knowledge_reindex` DAG (Airflow
           REST API, as a user triggers it) on the Celery stack with 1 CPU worker and with 2: wall time of the
           DAG run, and the embed_batch tasks' summed time and their spread over workers.
3. demo    The fast demo (``python -m tandem.demo.run --fast``) on LocalExecutor and on the Celery stack
           (2 CPU workers + 1 training worker): wall time per step.

    python benchmarks/bench_stack.py [--phases idle,reindex,demo] [--runs N] [--docs 2000]

Each measurement runs ``--runs`` times (default 1: a demo takes 10+ minutes on 2 cores); with more, the medians
are printed. On a 2-core machine, expect no speed-up from more workers: they share the same two cores.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def _say(msg: str) -> None:
    print(msg, flush=True)


def _env(home: Path, executor: str, workers: int = 2, extra: dict | None = None) -> dict:
    from tandem.stack import process

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_", "AIRFLOW"))}
    env.update({"TANDEM_HOME": str(home), "TANDEM_EXECUTOR": executor, "TANDEM_WORKERS": str(workers),
                "TANDEM_AIRFLOW_PORT": str(process.free_port()), "TANDEM_MLFLOW_PORT": str(process.free_port()),
                "TANDEM_SERVE_PORT": str(process.free_port()), "TANDEM_REDIS_PORT": str(process.free_port()),
                **(extra or {})})
    return env


def _home(prefix: str) -> Path:
    from tandem.config import Settings

    home = Path(tempfile.mkdtemp(prefix=f"tandem-bench-{prefix}-", dir="/tmp"))
    (home / "models").symlink_to(Path(Settings.load().base_model).parent)  # the prepared model
    return home


def _stack(env: dict, action: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tandem.stack", action], env=env, capture_output=True, text=True,
                          timeout=900, cwd=str(REPO))
    if proc.returncode != 0 and action == "up":
        raise SystemExit(f"`make up` failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.monotonic() - started, proc


def _tree(pid: int) -> set[int]:
    """A process and all its descendants (empty when it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return {root.pid, *(c.pid for c in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def _stack_rss(home: Path) -> tuple[float, int]:
    """(MiB, processes) of every process of the stack: the services' process groups and Postgres."""
    import psutil

    from tandem.stack.process import read_pid

    pids: set[int] = set()
    for pidfile in (home / "run").glob("*.pid"):
        record = read_pid(pidfile)
        if record is not None:
            pids |= _tree(record.pid)
    postmaster = home / "postgres" / "data" / "postmaster.pid"
    first_line = postmaster.read_text().split()[:1] if postmaster.exists() else []
    if first_line and first_line[0].isdigit():
        pids |= _tree(int(first_line[0]))
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue  # exited while we counted
    return total / 2**20, len(pids)


def idle(args) -> dict:
    out = {}
    for executor in ("local", "celery"):
        ups, rss, procs = [], [], []
        for _ in range(args.runs):
            home = _home(f"idle-{executor}")
            env = _env(home, executor)
            try:
                seconds, _ = _stack(env, "up")
                time.sleep(args.settle)
                mib, n = _stack_rss(home)
                ups.append(seconds)
                rss.append(mib)
                procs.append(n)
            finally:
                _stack(env, "down")
                shutil.rmtree(home, ignore_errors=True)
        out[executor] = {"up_s": statistics.median(ups), "rss_mib": statistics.median(rss),
                         "processes": statistics.median(procs), "runs": len(ups)}
        _say(f"  idle {executor:<6}: healthy after {out[executor]['up_s']:.1f} s (`make up`, fresh home), "
             f"idle RSS {out[executor]['rss_mib']:.0f} MiB in {out[executor]['processes']:.0f} processes")
    return out


def _client(env: dict):
    from tandem.airflow.rest import AirflowClient
    from tandem.config import Settings
    from tandem.stack.services import airflow_password

    settings = Settings.load(env=env)
    return AirflowClient(settings.airflow_url, "admin", airflow_password(settings))


def reindex(args) -> dict:
    import knowledge_corpus

    corpus = Path(tempfile.mkdtemp(prefix="tandem-bench-corpus-", dir="/tmp"))
    knowledge_corpus.write(corpus, args.docs)
    out = {}
    try:
        for workers in (1, 2):
            walls, embeds = [], []
            for _ in range(args.runs):
                home = _home(f"reindex-w{workers}")
                env = _env(home, "celery", workers, {"TANDEM_REINDEX_BATCH_DOCS": str(args.batch_docs),
                                                     "TANDEM_CANARY_PATH": str(home / "no-golden.jsonl")})
                try:
                    _stack(env, "up")
                    client = _client(env)
                    client.wait_for_dag("knowledge_reindex")
                    started = time.monotonic()
                    run = client.trigger("knowledge_reindex", {"sources": [f"bench={corpus}"]})
                    client.wait(run, timeout=7200)
                    wall = time.monotonic() - started
                    tis = [t for t in client.task_instances(run.dag_id, run.run_id) if t["task_id"] == "embed_batch"]
                    spread: dict[str, int] = {}
                    for t in tis:
                        worker = (t.get("hostname") or "?").split(".", 1)[0]
                        spread[worker] = spread.get(worker, 0) + 1
                    task_s = sum(t.get("duration") or 0.0 for t in tis)
                    summary = client.xcom("knowledge_reindex", run.run_id, "finalize") or {}
                    walls.append(wall)
                    embeds.append(task_s)
                    _say(f"    {workers} worker(s): DAG run {wall:.1f} s, {len(tis)} embed_batch tasks "
                         f"({task_s:.1f} s summed, by worker {json.dumps(spread)}), "
                         f"{summary.get('new')} new docs, {summary.get('chunks_embedded')} chunks")
                finally:
                    _stack(env, "down")
                    shutil.rmtree(home, ignore_errors=True)
            out[workers] = {"wall_s": statistics.median(walls), "embed_task_s": statistics.median(embeds)}
        ratio = out[1]["wall_s"] / out[2]["wall_s"]
        _say(f"  reindex {args.docs} docs on Celery: 1 worker {out[1]['wall_s']:.1f} s, 2 workers "
             f"{out[2]['wall_s']:.1f} s ({ratio:.2f}x)")
    finally:
        shutil.rmtree(corpus, ignore_errors=True)
    return out


def demo(args) -> dict:
    out = {}
    for executor in ("local", "celery"):
        reports = []
        for _ in range(args.runs):
            home = _home(f"demo-{executor}")
            env = _env(home, executor)
            report = home / "report.json"
            try:
                started = time.monotonic()
                proc = subprocess.run([sys.executable, "-m", "tandem.demo.run", "--fast", "--report", str(report)],
                                      env=env, capture_output=True, text=True, timeout=3600, cwd=str(REPO))
                if proc.returncode != 0:
                    _say(f"  demo on {executor} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
                    continue
                data = json.loads(report.read_text())
                data["wall_s"] = time.monotonic() - started
                reports.append(data)
            finally:
                _stack(env, "down")
                shutil.rmtree(home, ignore_errors=True)
        if not reports:
            continue
        steps = list(reports[0]["timings_s"])
        out[executor] = {s: statistics.median(r["timings_s"][s] for r in reports) for s in steps}
        out[executor]["total"] = statistics.median(r["wall_s"] for r in reports)
    if out:
        names = list(next(iter(out.values())))
        _say(f"  {'fast demo step':<20} " + " ".join(f"{e:>10}" for e in out) + "   celery/local")
        for step in names:
            row = [out[e].get(step) for e in out]
            ratio = (row[1] / row[0]) if len(row) == 2 and row[0] else None
            _say(f"  {step:<20} " + " ".join(f"{v:>9.1f}s" for v in row) + (f"   {ratio:.2f}" if ratio else ""))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="idle,reindex,demo")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--batch-docs", type=int, default=200, help="TANDEM_REINDEX_BATCH_DOCS (2,000 docs: 10 batches)")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds idle before the RSS is read")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    phases = {"idle": idle, "reindex": reindex, "demo": demo}
    results = {}
    for name in args.phases.split(","):
        _say(f"== {name}")
        results[name] = phases[name](args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
