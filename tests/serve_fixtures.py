"""Fixtures for the serve tests (imported by tests/test_serve_*.py).

Everything is real: a tiny knowledge index built by the knowledge cadence's own reindex into the session's
Postgres, the real SmolLM2 base model, real LoRA adapters registered in the real MLflow server, and
Airflow's real api-server app (``airflow.api_fastapi.app.create_app``) with the Tandem plugin loaded from
plugins/, its real SimpleAuthManager and JWT tokens, on the session's migrated Airflow metadata DB.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

DOCS = {
    "pricing/plans.md": "# Plans and pricing\n\nAcme Beacon has three plans. The Starter plan costs $15 per month and "
                        "includes 10 monitors. The Pro plan costs $49 per month and includes 50 monitors with "
                        "1-minute checks. The Enterprise plan is priced per contract.\n",
    "setup/api-keys.md": "# API keys\n\nCreate an API key in Settings > API keys. Each key has a scope (read or write). "
                         "Rotate a key by creating a new one and deleting the old key; deleted keys stop working "
                         "within 60 seconds.\n",
    "support/sla.md": "# Service level agreement\n\nAcme Beacon guarantees 99.9% monthly uptime on the Pro and "
                      "Enterprise plans. If uptime falls below the guarantee, customers receive a 10% service "
                      "credit per 0.1% below target.\n",
    "integrations/slack.md": "# Slack integration\n\nConnect Slack from Integrations > Slack. Alerts post to one "
                             "channel per alert policy. The Slack app needs the chat:write permission.\n",
}
GOLDEN = [
    {"query": "How much does the Pro plan cost?", "expected_doc_ids": ["acme/pricing/plans.md"]},
    {"query": "How do I rotate an API key?", "expected_doc_ids": ["acme/setup/api-keys.md"]},
    {"query": "What uptime is guaranteed?", "expected_doc_ids": ["acme/support/sla.md"]},
]
ANSWERABLE = "How much does the Pro plan cost per month?"


def was_champion(flips: list[tuple[float, float, str]], label: str, t0: float, t1: float) -> bool:
    """Whether ``label`` ("v3") names a version that was champion at some moment of [t0, t1]. ``flips``: one
    (before, after, version) per alias move, the first the starting champion (a move's window counts for
    both sides)."""
    for i, (start, _after, version) in enumerate(flips):
        end = flips[i + 1][1] if i + 1 < len(flips) else float("inf")
        if label == f"v{version}" and start <= t1 and t0 <= end:
            return True
    return False


def flip_champion(settings, flips: list, versions: tuple[str, str], times: int, wait_for_answers) -> None:
    """Move the champion between ``versions`` ``times`` times, each after two more answers (paced by answers,
    not by the clock: a loaded machine answers slowly), recording each move in ``flips``."""
    import time

    from tandem import registry

    for i in range(times):
        wait_for_answers(2)
        target = versions[(i + 1) % 2]
        before = time.monotonic()
        registry.promote(settings, target, reason="flip")
        flips.append((before, time.monotonic(), target))


SERVE_LOGS: list[Path] = []  # the logs of the serve processes started this session (a failure shows their tails)


def start_serve(settings):
    """A real `tandem serve` process on a free port with ``settings``; returns (Popen, url) once healthy. Its
    output goes to a log file under the home (a pipe nobody reads would block it once full); a failing test
    shows that log's tail (``pytest_runtest_makereport`` in conftest.py)."""
    import subprocess
    import sys
    import time

    import httpx

    from tandem.stack import process

    port = process.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env.update(settings.replace(serve_port=port).as_env())
    log_path = settings.logs_dir / f"test-serve-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "tandem"), "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    SERVE_LOGS.append(log_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=30)
    pytest.fail("tandem serve did not become healthy: " + log_tail(log_path))


def log_tail(path: Path, chars: int = 6000) -> str:
    """The last ``chars`` characters of a log file ("" when it is gone)."""
    try:
        return path.read_bytes()[-chars:].decode("utf-8", "replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def serve_process(serve_settings, serve_index):
    """A `tandem serve` process for one test module, with a token of its own: (settings, url)."""
    settings = serve_settings.replace(serve_token="test-token-" + os.urandom(4).hex())
    proc, url = start_serve(settings)
    yield settings.replace(serve_port=int(url.rsplit(":", 1)[1])), url
    proc.terminate()
    proc.wait(timeout=30)


OFF_TOPIC = "Which medieval king signed the Magna Carta in 1215?"


@pytest.fixture(scope="session")
def serve_settings(settings, tmp_path_factory):
    """Settings for the serve tests: their own index (``serve``), corpus, golden set and a spec with a short
    token budget (the demo spec's rules, 32 new tokens) so that CPU generation stays quick."""
    import yaml

    root = tmp_path_factory.mktemp("serve")
    corpus = root / "acme"
    for rel, text in DOCS.items():
        path = corpus / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    golden = root / "golden.jsonl"
    golden.write_text("".join(json.dumps(g) + "\n" for g in GOLDEN))
    spec = yaml.safe_load((REPO / "include/tandem/data/demo/behavior_spec.yaml").read_text())
    spec["generation"]["max_new_tokens"] = 32
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return settings.replace(index_name="serve", sources=(f"acme={corpus}",), canary_path=str(golden),
                            spec_path=str(spec_path), torch_threads=1, champion_check_seconds=30)


@pytest.fixture(scope="session")
def serve_index(serve_settings) -> dict:
    """The tiny corpus indexed by the knowledge cadence's own reindex (once per session); its summary."""
    from tandem.knowledge import reindex

    return reindex.run(serve_settings, progress=False)


@pytest.fixture(scope="session")
def serve_cache(serve_settings):
    """One adapter cache for the session, so the base model loads once across the serve tests."""
    from tandem.serve.adapter_cache import AdapterCache

    return AdapterCache(serve_settings)


def clean_registry(settings) -> None:
    """Delete the ``tandem-adapter`` registered model (tests share one MLflow server)."""
    from mlflow.exceptions import MlflowException

    from tandem import registry

    try:
        registry.client(settings).delete_registered_model(registry.MODEL)
    except MlflowException:
        pass


# --- Airflow's real api-server app, in this process


_AIRFLOW_ENV = ("AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__PLUGINS_FOLDER",
                "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__LOAD_EXAMPLES", "AIRFLOW__CORE__AUTH_MANAGER",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "AIRFLOW__API_AUTH__JWT_SECRET",
                "AIRFLOW__API__BASE_URL")


class AirflowApp:
    """Airflow's api-server app (all of it: auth manager, middlewares, plugins) behind FastAPI's TestClient."""

    def __init__(self, client, password: str):
        self.client = client
        self.password = password

    def token(self, username: str = "admin") -> str:
        resp = self.client.post("/auth/token", json={"username": username, "password": self.password})
        assert resp.status_code == 201, resp.text
        return resp.json()["access_token"]

    def headers(self, username: str = "admin") -> dict:
        return {"Authorization": f"Bearer {self.token(username)}"}


def tandem_subapp(app):
    """The FastAPI app the plugin mounted at /tandem."""
    from starlette.routing import Mount

    for route in app.routes:
        if isinstance(route, Mount) and route.path == "/tandem":
            return route.app
    raise AssertionError("the Tandem plugin's app is not mounted at /tandem")


@pytest.fixture(scope="session")
def airflow_app(airflow, serve_settings, serve_cache):
    """Airflow's real api-server app with the Tandem plugin, on the session's migrated metadata DB.

    Airflow reads its configuration from the environment, so the AIRFLOW__* variables are set for the
    duration of the fixture and restored (and the ORM re-pointed) afterwards.
    """
    from fastapi.testclient import TestClient

    saved = {k: os.environ.get(k) for k in _AIRFLOW_ENV}
    password = secrets.token_urlsafe(12)
    pwfile = airflow.home / "serve-passwords.json"
    pwfile.write_text(json.dumps({user: password for user in ("admin", "user", "viewer")}))
    os.environ.update({
        "AIRFLOW_HOME": str(airflow.home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow.db}",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(airflow.home / "no-dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,user:user,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pwfile),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__BASE_URL": "http://testserver",
    })
    from airflow import plugins_manager, settings as af_settings
    from airflow.api_fastapi import app as af_app

    def repoint():
        af_settings.configure_vars()
        af_settings.reconfigure_orm()
        for name in dir(plugins_manager):  # plugin discovery is cached per process
            fn = getattr(plugins_manager, name)
            if callable(getattr(fn, "cache_clear", None)):
                fn.cache_clear()
        af_app.purge_cached_app()

    repoint()
    try:
        app = af_app.create_app("core")
        from tandem.serve.api import configure

        configure(tandem_subapp(app), settings=serve_settings, cache=serve_cache)
        with TestClient(app) as client:
            yield AirflowApp(client, password)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        repoint()
