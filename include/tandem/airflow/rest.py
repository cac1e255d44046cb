"""Airflow 3's REST API (``/api/v2``) through the official ``apache-airflow-client``.

Tandem speaks HTTP to Airflow only here. ``make demo`` drives real DAG runs with it, the CLI records asset
events, and ``make up`` creates pools and reads health. A thin layer over the generated client: it logs in
for a JWT, turns the client's exceptions into Tandem's errors (a refused input is a ``UserError``, an
unreachable server a ``ServiceUnavailable``), and waits for runs.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import airflow_client.client as af
from airflow_client.client.exceptions import ApiException, NotFoundException
from urllib3.exceptions import HTTPError as TransportError

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
    def from_api(cls, data: Any) -> "DagRun":
        def text(value):
            return value.isoformat() if hasattr(value, "isoformat") else value

        state = data.state.value if hasattr(data.state, "value") else str(data.state)
        return cls(data.dag_id, data.dag_run_id, state, data.conf or {}, text(data.run_after),
                   text(data.start_date), text(data.end_date))


def _client(base_url: str, token: str | None = None, retries: int = 2) -> af.ApiClient:
    config = af.Configuration(host=base_url.rstrip("/"), access_token=token)
    config.retries = retries
    return af.ApiClient(config)


def _detail(exc: ApiException) -> str:
    body = exc.body if isinstance(exc.body, str) else (exc.body or b"").decode(errors="replace")
    try:
        body = json.dumps(json.loads(body).get("detail", body))
    except (ValueError, AttributeError):
        pass  # not a JSON error body: the text as it came
    return body[:1000]


@contextmanager
def _translated(base_url: str, what: str) -> Iterator[None]:
    """Airflow's refusals of our input become UserError; a server that is down or failing, ServiceUnavailable."""
    try:
        yield
    except ApiException as exc:
        if exc.status in (400, 404, 409, 422):
            raise UserError(f"Airflow answered {exc.status} to {what}: {_detail(exc)}") from None
        raise ServiceUnavailable(f"Airflow answered {exc.status} to {what}: {_detail(exc)}") from None
    except TransportError as exc:
        raise ServiceUnavailable(f"Airflow is not answering at {base_url}: {exc}",
                                 fix="start the stack with `make up`") from None


def login(base_url: str, username: str, password: str, timeout: float = 30) -> str:
    """A JWT for the REST API from the auth manager's ``/auth/token`` (not part of the generated API)."""
    with _client(base_url) as api, _translated(base_url, "the login"):
        method, url, headers, body, _ = api.param_serialize(
            "POST", "/auth/token", header_params={"Content-Type": "application/json", "Accept": "application/json"},
            body={"username": username, "password": password})
        response = api.call_api(method, url, headers, body, _request_timeout=timeout)
        response.read()
    if response.status in (401, 403):
        raise UserError(f"Airflow refused the login of {username!r}",
                        fix="use the password printed by `make up` (.tandem/airflow/passwords.json)")
    if response.status >= 400:
        raise ServiceUnavailable(f"Airflow answered {response.status} to the login: {response.data[:500]!r}")
    return json.loads(response.data)["access_token"]


def health(base_url: str, timeout: float = 3) -> dict:
    """``/api/v2/monitor/health`` as a dict; empty when Airflow does not answer (not answering is not healthy)."""
    try:
        with _client(base_url, retries=0) as api:
            return af.MonitorApi(api).get_health(_request_timeout=timeout).to_dict()
    except (ApiException, TransportError, ValueError):
        return {}


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.api = _client(self.base_url, login(self.base_url, username, password, timeout))
        self.dags = af.DAGApi(self.api)
        self.dag_runs = af.DagRunApi(self.api)
        self.task_instances_api = af.TaskInstanceApi(self.api)
        self.xcoms = af.XComApi(self.api)
        self.assets = af.AssetApi(self.api)
        self.pools = af.PoolApi(self.api)

    def _call(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        with _translated(self.base_url, what):
            return fn(*args, _request_timeout=self.timeout, **kwargs)

    # --- DAGs and runs
    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> Any:
        """Wait until the dag-processor has parsed the DAG (a fresh stack needs a few seconds); unpause it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                dag = self._call(f"GET dag {dag_id}", self.dags.get_dag, dag_id)
                if dag.is_paused:
                    self._call(f"PATCH dag {dag_id}", self.dags.patch_dag, dag_id, af.DAGPatchBody(is_paused=False))
                return dag
            except UserError:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"Airflow has not loaded the DAG {dag_id} after {timeout:.0f}s",
                                             fix="check `make logs` (airflow-dag-processor) for import errors")
                time.sleep(2)

    def trigger(self, dag_id: str, conf: dict | None = None) -> DagRun:
        body = af.TriggerDAGRunPostBody(logical_date=None, conf=conf or {})
        return DagRun.from_api(self._call(f"trigger {dag_id}", self.dag_runs.trigger_dag_run, dag_id, body))

    def get_run(self, dag_id: str, run_id: str) -> DagRun:
        return DagRun.from_api(self._call(f"GET run {run_id}", self.dag_runs.get_dag_run, dag_id, run_id))

    def runs(self, dag_id: str, limit: int = 20) -> list[DagRun]:
        data = self._call(f"GET runs of {dag_id}", self.dag_runs.get_dag_runs, dag_id, limit=limit,
                          order_by=["-run_after"])
        return [DagRun.from_api(r) for r in data.dag_runs]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """The run's task instances as plain dicts (task_id, map_index, state, hostname, queue, ...)."""
        data = self._call(f"GET task instances of {run_id}", self.task_instances_api.get_task_instances,
                          dag_id, run_id)
        rows = []
        for ti in data.task_instances:
            row = ti.to_dict()
            state = row.get("state")
            row["state"] = getattr(state, "value", state)
            rows.append(row)
        return rows

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """A task's XCom value (deserialized), or None when there is none."""
        with _translated(self.base_url, f"GET xcom {task_id}.{key}"):
            try:
                entry = self.xcoms.get_xcom_entry(dag_id, task_id, run_id, key, deserialize=True,
                                                  _request_timeout=self.timeout)
            except NotFoundException:
                return None
        return getattr(entry.actual_instance, "value", None)

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

    # --- assets and pools
    def asset_id(self, uri: str) -> int | None:
        """The id of the asset with exactly this URI, or None when no parsed DAG declares it."""
        found = self._call(f"GET assets {uri}", self.assets.get_assets, uri_pattern=uri, limit=10)
        ids = [a.id for a in found.assets if a.uri == uri]
        return ids[0] if ids else None

    def emit_asset_event(self, asset_id: int, extra: dict) -> None:
        body = af.CreateAssetEventsBody(asset_id=asset_id, extra=extra)
        self._call("POST asset event", self.assets.create_asset_event, body)

    def ensure_pools(self, pools: dict[str, tuple[int, str]]) -> dict[str, str]:
        """Create the pools that are missing; keep existing ones as users set them. Returns name -> what happened."""
        existing = {p.name for p in self._call("GET pools", self.pools.get_pools, limit=1000).pools}
        done = {}
        for name, (slots, description) in sorted(pools.items()):
            if name in existing:
                done[name] = "kept"
                continue
            body = af.PoolBody(name=name, slots=slots, description=description, include_deferred=False)
            self._call(f"POST pool {name}", self.pools.post_pool, body)
            done[name] = f"created ({slots} slots)"
        return done
