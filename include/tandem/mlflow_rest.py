"""A small MLflow run logger over the tracking server's REST API, for runs that must stay cheap.

``import mlflow`` costs about 1.9 s on the 2-core reference machine (it pulls in pandas, FastAPI and the GenAI
modules). That is most of a no-change reindex. When the tracking URI is an ``http(s)://`` server, a reindex
logs its run here instead: httpx against MLflow's documented, versioned REST API (``/api/2.0/mlflow``), and
``summary.json`` goes through the server's artifact proxy (``mlflow-artifacts:``). docs/decisions.md records
the measurement.

Anything else (a file or database store) is not ``supported``, and an artifact store the server does not
proxy fails ``can_upload``: the caller then uses the ``mlflow`` library. Authentication follows MLflow's own variables:
``MLFLOW_TRACKING_TOKEN`` (bearer) or ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (basic).
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import quote, urlsplit

import httpx

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
_MAX_PARAM = 6000  # MLflow's param value limit


class MlflowRestError(RuntimeError):
    """The tracking server refused a call (the message carries the method, path, status and its reason)."""


def supported(tracking_uri: str) -> bool:
    return urlsplit(tracking_uri).scheme in ("http", "https")


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _auth():
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return httpx.BasicAuth(user, password or "") if user else None


class RunLogger:
    """One run: ``start`` -> ``log_batch`` / ``log_json`` -> ``finish``. Each call is one HTTP request."""

    def __init__(self, tracking_uri: str, timeout: float = 10.0):
        self.base = tracking_uri.rstrip("/")
        auth = _auth()
        self.http = httpx.Client(timeout=timeout, headers=_auth_headers(), **({"auth": auth} if auth else {}))
        self.experiment_id = self.run_id = self.artifact_uri = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> dict:
        response = self.http.request(method, self.base + path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("message") or response.text
            except ValueError:
                detail = response.text
            raise MlflowRestError(f"{method} {path}: HTTP {response.status_code}: {detail[:300]}")
        return response.json() if response.content else {}

    def experiment(self, name: str) -> str:
        """The id of experiment ``name``, created when missing (a concurrent creator wins harmlessly)."""
        response = self.http.get(self.base + API + "/experiments/get-by-name", params={"experiment_name": name})
        if response.status_code == 200:
            self.experiment_id = response.json()["experiment"]["experiment_id"]
            return self.experiment_id
        try:
            self.experiment_id = self._call("POST", API + "/experiments/create", json={"name": name})["experiment_id"]
        except MlflowRestError:  # created meanwhile by another process
            self.experiment_id = self._call("GET", API + "/experiments/get-by-name",
                                            params={"experiment_name": name})["experiment"]["experiment_id"]
        return self.experiment_id

    def start(self, experiment_name: str, run_name: str, tags: dict[str, str]) -> str:
        exp = self.experiment(experiment_name)
        all_tags = {"mlflow.runName": run_name, "mlflow.source.type": "LOCAL",
                    "mlflow.user": os.environ.get("USER", "tandem"), **tags}
        run = self._call("POST", API + "/runs/create", json={
            "experiment_id": exp, "run_name": run_name, "start_time": _now_ms(),
            "tags": [{"key": k, "value": str(v)} for k, v in all_tags.items()]})["run"]
        self.run_id, self.artifact_uri = run["info"]["run_id"], run["info"].get("artifact_uri", "")
        return self.run_id

    def log_batch(self, params: dict | None = None, metrics: dict | None = None, tags: dict | None = None) -> None:
        now = _now_ms()
        self._call("POST", API + "/runs/log-batch", json={
            "run_id": self.run_id,
            "params": [{"key": k, "value": str(v)[:_MAX_PARAM]} for k, v in (params or {}).items() if v is not None],
            "metrics": [{"key": k, "value": float(v), "timestamp": now, "step": 0} for k, v in (metrics or {}).items()],
            "tags": [{"key": k, "value": str(v)} for k, v in (tags or {}).items()]})

    def can_upload(self) -> bool:
        return (self.artifact_uri or "").startswith("mlflow-artifacts:")

    def log_json(self, obj, name: str) -> None:
        """``obj`` as the artifact ``name`` (like ``mlflow.log_dict``), through the server's artifact proxy."""
        if not self.can_upload():
            raise MlflowRestError(f"the run's artifact store {self.artifact_uri!r} is not proxied by the server")
        where = urlsplit(self.artifact_uri).path.lstrip("/")
        self._call("PUT", f"{ARTIFACTS}/{quote(where)}/{quote(name)}",
                   content=json.dumps(obj, indent=2, default=str).encode(),
                   headers={"Content-Type": "application/json"})

    def finish(self, status: str = "FINISHED") -> None:
        self._call("POST", API + "/runs/update", json={"run_id": self.run_id, "status": status,
                                                       "end_time": _now_ms()})


def _now_ms() -> int:
    return int(time.time() * 1000)
