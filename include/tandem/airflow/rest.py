"""A small client for Airflow 3's REST API (``/api/v2``): log in, trigger a DAG run, wait for it.

Used by ``make demo`` to drive real DAG runs the way a user (or their CI) would.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

from tandem.errors import JobFailed, ServiceUnavailable, UserError

TERMINAL = {"success", "failed"}


@dataclass
class DagRun:
    dag_id: str
    run_id: str
    state: str
    conf: dict
    run_after: str | None = None
    start_date: str | None = None
    end_date: str | None = None

    @classmethod
    def from_api(cls, data: dict) -> "DagRun":
        return cls(data["dag_id"], data["dag_run_id"], data["state"], data.get("conf") or {},
                   data.get("run_after"), data.get("start_date"), data.get("end_date"))


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._token = self._login(username, password)

    def _login(self, username: str, password: str) -> str:
        try:
            data = self._raw("POST", "/auth/token", {"username": username, "password": password}, token=None)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise UserError(f"Airflow refused the login of {username!r}",
                                fix="use the password printed by `make up` (.tandem/airflow/passwords.json)") from None
            raise
        return data["access_token"]

    def _raw(self, method: str, path: str, body: Any = None, token: str | None = "use") -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token == "use":
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.base_url + path, method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.URLError as exc:
            if isinstance(exc, urllib.error.HTTPError):
                raise
            raise ServiceUnavailable(f"Airflow is not answering at {self.base_url}: {exc.reason}",
                                     fix="start the stack with `make up`") from None
        return json.loads(payload) if payload else None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return self._raw(method, path, body)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:1000]
            if exc.code in (400, 404, 409, 422):
                raise UserError(f"Airflow answered {exc.code} to {method} {path}: {detail}") from None
            raise ServiceUnavailable(f"Airflow answered {exc.code} to {method} {path}: {detail}") from None

    # --- DAGs and runs
    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict:
        """Wait until the dag-processor has parsed the DAG (a fresh stack needs a few seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                dag = self.request("GET", f"/api/v2/dags/{quote(dag_id)}")
                if dag.get("is_paused"):
                    self.request("PATCH", f"/api/v2/dags/{quote(dag_id)}", {"is_paused": False})
                return dag
            except UserError:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"Airflow has not loaded the DAG {dag_id} after {timeout:.0f}s",
                                             fix="check `make logs` (airflow-dag-processor) for import errors")
                time.sleep(2)

    def trigger(self, dag_id: str, conf: dict | None = None) -> DagRun:
        data = self.request("POST", f"/api/v2/dags/{quote(dag_id)}/dagRuns",
                            {"logical_date": None, "conf": conf or {}})
        return DagRun.from_api(data)

    def get_run(self, dag_id: str, run_id: str) -> DagRun:
        return DagRun.from_api(self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}"))

    def runs(self, dag_id: str, limit: int = 20) -> list[DagRun]:
        data = self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns?order_by=-run_after&limit={limit}")
        return [DagRun.from_api(r) for r in data.get("dag_runs", [])]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        data = self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/taskInstances")
        return data.get("task_instances", [])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = (f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                f"{quote(task_id)}/xcomEntries/{quote(key)}?deserialize=true")
        try:
            return self.request("GET", path).get("value")
        except UserError:
            return None

    def wait(self, run: DagRun, timeout: float = 3600, on_progress: Callable[[DagRun, list], None] | None = None,
             poll: float = 3) -> DagRun:
        """Wait for a run to finish; raises JobFailed if it fails (naming the failed tasks)."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.get_run(run.dag_id, run.run_id)
            if on_progress is not None:
                on_progress(current, self.task_instances(run.dag_id, run.run_id))
            if current.state in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise JobFailed(f"{run.dag_id} run {run.run_id} still {current.state} after {timeout:.0f}s")
            time.sleep(poll)
        if current.state != "success":
            failed = [t["task_id"] for t in self.task_instances(run.dag_id, run.run_id)
                      if t.get("state") in ("failed", "upstream_failed")]
            raise JobFailed(f"{run.dag_id} run {run.run_id} failed (tasks: {', '.join(failed) or 'none recorded'})",
                            fix="open the run in the Airflow grid and read the failed task's log")
        return current

    def wait_for_new_run(self, dag_id: str, after: set[str], timeout: float = 600) -> DagRun:
        """Wait for a run of ``dag_id`` that is not in ``after`` (one triggered by another DAG or an asset)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.runs(dag_id, limit=5):
                if run.run_id not in after:
                    return run
            time.sleep(3)
        raise JobFailed(f"no new {dag_id} run appeared within {timeout:.0f}s")
