"""``make up`` / ``make down`` / ``make status`` / ``make logs``: the local stack without Docker.

    python -m tandem.stack up|down|status|logs|pools-json

``up`` starts PostgreSQL (embedded), MLflow and Airflow (api-server, scheduler, dag-processor,
triggerer), waits until each is healthy, then prints the URLs and how to log in. A second ``up``
while everything runs is a no-op that says so. ``down`` stops each service's whole process group.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from tandem import models
from tandem.config import Settings
from tandem.db import redact
from tandem.errors import TandemError, UserError
from tandem.stack import postgres, process, services


def _say(msg: str) -> None:
    print(msg, flush=True)


def check_models(settings: Settings) -> None:
    """A missing model is a clear error before anything starts."""
    models.embedding_model_path(settings.embed_model)
    if models.is_local(settings.base_model):
        models.resolve_base_model(settings.base_model)


def _airflow(settings: Settings, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **services.airflow_env(settings)}
    return subprocess.run([services._bin("airflow"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(settings.airflow_home))


def _init_airflow(settings: Settings) -> None:
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = _airflow(settings, "db", "migrate")
    if result.returncode != 0:
        raise TandemError(f"airflow db migrate failed:\n{result.stderr[-3000:]}",
                          fix="read the error above; `make down`, then `make up` again")
    _say(f"  airflow db migrate: ok ({time.monotonic() - started:.1f}s)")


def _ensure_pools(settings: Settings) -> None:
    """Create the pools Tandem's DAGs use through the REST API; pools a user changed are kept as they are."""
    from tandem.airflow.rest import AirflowClient

    client = AirflowClient(f"http://{settings.bind_host}:{settings.airflow_port}", "admin",
                           services.airflow_password(settings))
    for name, what in client.ensure_pools(services.POOLS).items():
        _say(f"  pool {name}: {what}")


def up(settings: Settings) -> int:
    started = time.monotonic()
    all_services = services.all_services(settings)
    running = {svc.name: process.running_pid(svc, settings.run_dir) for svc in all_services}
    if all(running.values()) and postgres.is_running(settings.pg_data):
        _say("Tandem is already running; nothing to do (`make status` for health, `make down` to stop).")
        _print_urls(settings)
        return 0
    check_models(settings)
    for svc in all_services:  # partly running: say what, and only start the missing ones
        if running[svc.name]:
            _say(f"  {svc.name}: already running (pid {running[svc.name]})")
    for svc in all_services:
        if not running[svc.name] and svc.port is not None and process.port_in_use(svc.host, svc.port):
            raise UserError(f"{svc.name}: port {svc.host}:{svc.port} is already in use by another program",
                            fix=f"stop that program, or pick another port: "
                                f"{svc.port_env}=<port> make up")

    pg_started = postgres.start(settings.pg_data)
    postgres.ensure_databases(settings.pg_data)
    postgres.ensure_login(settings.pg_data, settings.pg_user, settings.pg_password)
    _say(f"  postgres: {'started' if pg_started else 'already running'} "
         f"(PostgreSQL {postgres.MAJOR} + pgvector, socket in {settings.pg_data})")
    if not running["airflow-api-server"]:
        _init_airflow(settings)
    for svc in all_services:
        if not running[svc.name]:
            pid = process.start(svc, settings.run_dir, settings.logs_dir)
            _say(f"  {svc.name}: started (pid {pid})")
    for svc in all_services:
        waited = process.wait_healthy(svc, settings.run_dir, settings.logs_dir, timeout=180)
        _say(f"  {svc.name}: healthy" + (f" after {waited:.1f}s" if svc.health else ""))
    _ensure_pools(settings)
    _wait_components(settings)
    _say(f"Tandem is up in {time.monotonic() - started:.1f}s.")
    _print_urls(settings)
    return 0


def _wait_components(settings: Settings, timeout: float = 90) -> dict:
    """Wait until the api-server reports the scheduler, dag-processor and triggerer healthy."""
    deadline = time.monotonic() + timeout
    health: dict = {}
    while time.monotonic() < deadline:
        health = airflow_health(settings)
        if health and all(health.get(c, {}).get("status") == "healthy"
                          for c in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
            return health
        time.sleep(1)
    _say(f"  warning: Airflow components not all healthy yet: {json.dumps(health)}")
    return health


def airflow_health(settings: Settings, timeout: float = 3) -> dict:
    from tandem.airflow import rest

    return rest.health(f"http://{settings.bind_host}:{settings.airflow_port}", timeout=timeout)


def _print_urls(settings: Settings) -> None:
    password = services.airflow_password(settings)
    _say(f"""
  Airflow UI   http://{settings.bind_host}:{settings.airflow_port}   (user admin, password {password})
  MLflow UI    http://{settings.bind_host}:{settings.mlflow_port}
  Postgres     {redact(settings.db_url)}
  Tandem page  http://{settings.bind_host}:{settings.airflow_port}/tandem/  (once logged in to Airflow)
  Answer API   http://{settings.bind_host}:{settings.serve_port}/api/ask   (tandem serve; header
               Authorization: Bearer {services.serve_env(settings)["TANDEM_SERVE_TOKEN"]})
  State        {settings.home}   (logs: `make logs`)""")


def down(settings: Settings) -> int:
    stopped_any = False
    for svc in reversed(services.all_services(settings)):
        if process.stop(svc, settings.run_dir):
            _say(f"  {svc.name}: stopped")
            stopped_any = True
    if postgres.stop(settings.pg_data):
        _say("  postgres: stopped")
        stopped_any = True
    _say("Tandem is down." if stopped_any else "Tandem was not running; nothing to stop.")
    return 0


STATUS_TIMEOUT = 15.0  # seconds per health request of `make status`


def status(settings: Settings) -> int:
    rows = []
    pg_up = postgres.is_running(settings.pg_data)
    rows.append(("postgres", postgres.pid(settings.pg_data) if pg_up else None, "healthy" if pg_up else "down"))
    # generous timeouts: a busy machine (a training run on 2 cores) answers slowly but is not down
    health = airflow_health(settings, timeout=STATUS_TIMEOUT)
    component = {"airflow-scheduler": "scheduler", "airflow-dag-processor": "dag_processor",
                 "airflow-triggerer": "triggerer"}
    for svc in services.all_services(settings):
        pid = process.running_pid(svc, settings.run_dir)
        if pid is None:
            state = "down"
        elif svc.health:
            state = "healthy" if svc.health(STATUS_TIMEOUT) else "starting/unhealthy"
        else:
            state = health.get(component[svc.name], {}).get("status") or "running (no heartbeat yet)"
        rows.append((svc.name, pid, state))
    for name, pid, state in rows:
        _say(f"  {name:<24} {('pid ' + str(pid)) if pid else '-':<12} {state}")
    return 0 if all(state == "healthy" for _, _, state in rows) else 1


def logs(settings: Settings) -> int:
    _say(f"Service logs (tail -f one of them):")
    for svc in services.all_services(settings):
        _say(f"  {svc.name:<24} {svc.logfile(settings.logs_dir)}")
    _say(f"  {'postgres':<24} {settings.pg_data / 'postgres.log'}")
    _say(f"  {'airflow task logs':<24} {settings.airflow_home / 'logs'}")
    return 0


def pools_json(settings: Settings) -> int:
    """The pools Tandem's DAGs use, in the format of `airflow pools import` (compose's init job)."""
    print(json.dumps({name: {"slots": slots, "description": description, "include_deferred": False}
                      for name, (slots, description) in sorted(services.POOLS.items())}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.stack", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status", "logs", "pools-json"])
    args = parser.parse_args(argv)
    try:
        settings = Settings.load()
        actions = {"up": up, "down": down, "status": status, "logs": logs, "pools-json": pools_json}
        return actions[args.action](settings)
    except TandemError as exc:
        print(f"tandem {args.action}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
