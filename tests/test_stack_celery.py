"""Losing a worker on the multi-worker stack (TANDEM_EXECUTOR=celery): kill -9 in the middle of a task.

A real stack in a temporary TANDEM_HOME: Redis, CeleryExecutor, 2 CPU workers and 1 `training` worker, each
with a scratch home of its own. A worker's whole process group (the Celery worker, its pool and the task
it runs) gets SIGKILL, as when a machine is lost. Airflow must notice the task's missing heartbeats
(`task_instance_heartbeat_timeout`, 60 s on this stack), fail the attempt and retry it on a live worker. The
run must then end exactly as if nothing had happened: an exact index, or one registered adapter. The killed
attempt never touches `champion`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tandem.config import Settings
from tandem.stack import process

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _stack(env: dict, action: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tandem.stack", action], env=env, capture_output=True, text=True,
                          timeout=600, cwd=str(REPO))


@pytest.fixture(scope="module")
def celery_stack(base_model_path):
    from conftest import short_tmp

    from tandem.demo import fast

    home = short_tmp("celery")
    (home / "models").symlink_to(base_model_path.parent)  # the prepared model, published to MLflow by `up`
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_", "AIRFLOW"))}
    env.update({"TANDEM_HOME": str(home), "TANDEM_EXECUTOR": "celery", "TANDEM_WORKERS": "2",
                "TANDEM_AIRFLOW_PORT": str(process.free_port()), "TANDEM_MLFLOW_PORT": str(process.free_port()),
                "TANDEM_SERVE_PORT": str(process.free_port()), "TANDEM_REDIS_PORT": str(process.free_port()),
                "TANDEM_REINDEX_BATCH_DOCS": "6", "TANDEM_RETRY_DELAY_SECONDS": "5",
                **fast.prepare(home / "fast"), "TANDEM_RETRAIN_MAX_STEPS": "6"})
    up = _stack(env, "up")
    try:
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        yield home, env, Settings.load(env=env)
    finally:
        down = _stack(env, "down")
        assert down.returncode == 0, down.stderr
        assert "airflow-worker-cpu-1: stopped" in down.stdout and "redis: stopped" in down.stdout
    shutil.rmtree(home, ignore_errors=True)


def _client(settings: Settings):
    from tandem.airflow.rest import AirflowClient
    from tandem.stack.services import airflow_password

    return AirflowClient(settings.airflow_url, "admin", airflow_password(settings))


def _failure_report(client, run, home: Path) -> str:
    """Each task's state, and the last lines of the failed tasks' logs: why a run ended early."""
    lines = [f"  {ti['task_id']}[{ti.get('map_index')}]: {ti['state']}" for ti in client.task_instances(run.dag_id, run.run_id)]
    run_dir = f"run_id={run.run_id}"
    for log in sorted((home / "airflow" / "logs").glob(f"dag_id={run.dag_id}/**/*.log")):
        if run_dir in str(log) and any(w in log.read_text(errors="replace") for w in ("ERROR", "Traceback")):
            lines += [f"--- {log.relative_to(home)}", *log.read_text(errors="replace").splitlines()[-40:]]
    return "\n".join(lines)


def _wait_for_running(client, run, task_id: str, *, home: Path, min_seconds: float, timeout: float = 600) -> dict:
    """The first task instance of ``task_id`` that has been running for ``min_seconds``."""
    deadline = time.monotonic() + timeout
    seen: dict[tuple, float] = {}
    while time.monotonic() < deadline:
        for ti in client.task_instances(run.dag_id, run.run_id):
            if ti["task_id"] == task_id and ti["state"] == "running" and ti.get("hostname"):
                key = (ti["task_id"], ti.get("map_index"))
                seen.setdefault(key, time.monotonic())
                if time.monotonic() - seen[key] >= min_seconds:
                    return ti
        state = client.get_run(run.dag_id, run.run_id).state
        assert state not in ("success", "failed"), (
            f"{run.dag_id} ended ({state}) before {task_id} could be killed:\n{_failure_report(client, run, home)}")
        time.sleep(1)
    raise AssertionError(f"{task_id} never ran for {min_seconds}s")


def _kill_worker(home: Path, ti: dict) -> str:
    """SIGKILL the process group of the worker that runs ``ti``; returns the worker's name."""
    from tandem.stack.process import read_pid

    worker = ti["hostname"].split(".", 1)[0]
    record = read_pid(home / "run" / f"airflow-worker-{worker}.pid")
    assert record is not None, f"no pid file for worker {worker}"
    os.killpg(os.getpgid(record.pid), signal.SIGKILL)
    return worker


def _attempts(client, run, task_id: str, map_index: int = -1) -> dict:
    ti = next(t for t in client.task_instances(run.dag_id, run.run_id)
              if t["task_id"] == task_id and t.get("map_index", -1) == map_index)
    return {"try_number": ti["try_number"], "worker": ti["hostname"].split(".", 1)[0], "state": ti["state"]}


def test_a_worker_killed_during_embed_batch_loses_no_run(celery_stack):
    from knowledge_fixtures import assert_consistent, expected_hashes, index_state

    from tandem.demo import data

    home, env, settings = celery_stack
    kb = home / "kb"
    data.materialise_release1(kb, force=True)
    client = _client(settings)
    client.wait_for_dag("knowledge_reindex")
    run = client.trigger("knowledge_reindex", {"sources": [f"{data.SOURCE_NAME}={kb}"]})
    victim = _wait_for_running(client, run, "embed_batch", home=home, min_seconds=3)
    killed = _kill_worker(home, victim)
    status = _stack(env, "status")
    assert status.returncode == 1 and f"airflow-worker-{killed}" in status.stdout
    assert any(line.split()[0] == f"airflow-worker-{killed}" and "down" in line for line in status.stdout.splitlines())

    done = client.wait(run, timeout=900)
    assert done.state == "success"
    retried = _attempts(client, run, "embed_batch", victim["map_index"])
    assert retried["try_number"] == 2 and retried["state"] == "success", retried
    assert retried["worker"] != killed and retried["worker"].startswith("cpu-"), retried
    state = index_state(settings)
    assert_consistent(state)
    assert {d: r["hash"] for d, r in state["manifest"].items()} == expected_hashes(kb, data.SOURCE_NAME)
    summary = client.xcom("knowledge_reindex", run.run_id, "finalize")
    assert summary["new"] == len(state["manifest"]) and summary["failed"] == 0

    up = _stack(env, "up")  # as a cluster would: the lost worker comes back (only the missing service starts)
    assert up.returncode == 0 and f"airflow-worker-{killed}: started" in up.stdout, up.stdout[-3000:]


def test_the_training_worker_killed_during_train_adapter_loses_no_run(celery_stack):
    from tandem import registry

    home, env, settings = celery_stack
    client = _client(settings)
    client.wait_for_dag("lora_retrain")
    assert registry.resolve(settings, "champion", download=False).version is None
    run = client.trigger("lora_retrain", {"reason": "worker-loss test"})
    victim = _wait_for_running(client, run, "train_adapter", home=home, min_seconds=15, timeout=900)
    killed = _kill_worker(home, victim)
    assert killed == "training-1"
    time.sleep(2)
    up = _stack(env, "up")  # the training worker comes back; the retry runs there
    assert up.returncode == 0 and "airflow-worker-training-1: started" in up.stdout, up.stdout[-3000:]

    done = client.wait(run, timeout=1500)
    assert done.state == "success"
    trained = _attempts(client, run, "train_adapter")
    assert trained["try_number"] == 2 and trained["worker"] == "training-1", trained
    versions = registry.list_versions(settings)
    assert len(versions) == 1, versions  # the killed attempt registered nothing
    gate = client.xcom("lora_retrain", run.run_id, "gate")
    champion = registry.resolve(settings, "champion", download=False).version
    # champion moves only through promote, after the gate: the registered version, or still none
    assert champion == (str(versions[0]["version"]) if gate["action"] == "promote" else None), (gate, champion)
