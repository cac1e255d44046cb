"""``make up`` / ``make down`` / ``make status`` / ``make logs``: the local stack without Docker.

    python -m tandem.stack up|down|status|logs|pools-json|passwords-file|mlflow-auth-config

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

from tandem import mlflow_auth, models
from tandem.config import Settings
from tandem.pg_urls import redact
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
    if services.is_celery(settings):
        services.redis_binary()  # a clear error, before anything starts, when Redis is not installed
        services.write_redis_conf(settings)
    _refuse_other_executor(settings)
    _remember(settings)
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
    if services.is_celery(settings):  # the workers fetch the base model from MLflow: publish it first
        first = [svc for svc in all_services if svc.name in ("redis", "mlflow")]
        _start(settings, first, running)
        all_services = services.all_services(settings, store=_publish_base_model(settings))
    _start(settings, all_services, running)
    _ensure_pools(settings)
    _wait_components(settings)
    if services.is_celery(settings):
        _wait_workers(settings)
    _say(f"Tandem is up in {time.monotonic() - started:.1f}s.")
    _print_urls(settings)
    return 0


def _refuse_other_executor(settings: Settings) -> None:
    """A stack started with another executor or worker count is stopped first, not mixed with this one."""
    saved = _saved(settings)
    if saved is None or (saved.executor == settings.executor
                         and (settings.executor == "local" or saved.workers == settings.workers)):
        return
    if any(process.running_pid(svc, settings.run_dir) for svc in services.all_services(saved)):
        raise UserError(f"the running stack was started with TANDEM_EXECUTOR={saved.executor} "
                        f"TANDEM_WORKERS={saved.workers}; this `make up` asks for "
                        f"TANDEM_EXECUTOR={settings.executor} TANDEM_WORKERS={settings.workers}",
                        fix="`make down` first, then `make up` with the executor you want")


def _start(settings: Settings, todo: list, running: dict) -> None:
    """Start the services not running yet, then wait until each is healthy."""
    for svc in todo:
        if not running.get(svc.name):
            running[svc.name] = process.start(svc, settings.run_dir, settings.logs_dir)
            _say(f"  {svc.name}: started (pid {running[svc.name]})")
    for svc in todo:
        waited = process.wait_healthy(svc, settings.run_dir, settings.logs_dir, timeout=180)
        if svc.health:
            _say(f"  {svc.name}: healthy after {waited:.1f}s")


def _publish_base_model(settings: Settings) -> dict | None:
    """Log the base model to MLflow (once per sha256) so that every worker can fetch it; None for a hub id."""
    from tandem import model_store

    if not models.is_local(settings.base_model):
        return None
    started = time.monotonic()
    store = model_store.publish(settings)
    _say(f"  base model: {'published to' if store['new'] else 'already in'} MLflow as {store['uri']} "
         f"(sha256 {store['sha256'][:12]}, {time.monotonic() - started:.1f}s); workers fetch it from there")
    return store


def _wait_workers(settings: Settings, timeout: float = 120) -> None:
    """Wait until every Celery worker answers a ping through the broker."""
    from tandem.stack import celery_status

    expected = {name for name, _ in services.worker_names(settings)}
    deadline = time.monotonic() + timeout
    answered: dict = {}
    while time.monotonic() < deadline:
        answered = celery_status.ping(settings)
        if expected <= set(answered):
            _say(f"  celery workers: {', '.join(sorted(answered))} answer "
                 f"(queues: {celery_status.queues_text(settings)})")
            return
        time.sleep(2)
    _say(f"  warning: Celery workers not all answering yet: {sorted(answered)} of {sorted(expected)}")


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
    """Where everything is. Secrets are never printed: the lines name the files that hold them."""
    services.airflow_password(settings)  # a first start creates the file the line below names
    pwfile = services.airflow_password_file(settings)
    token = ("TANDEM_SERVE_TOKEN" if settings.serve_token else
             f"`cat {services.serve_token_file(settings)}`")
    mlflow_login = "(no sign-in: TANDEM_MLFLOW_AUTH=false)"
    if settings.mlflow_auth:
        where = ("TANDEM_MLFLOW_PASSWORD" if settings.mlflow_password else
                 f"`cat {mlflow_auth.password_file(settings)}`")
        mlflow_login = (f"(user {settings.mlflow_username}, password: {where}; "
                        "read-only users: `tandem mlflow add-reviewer NAME`)")
    _say(f"""
  Airflow UI   http://{settings.bind_host}:{settings.airflow_port}   (user admin, password: the "admin" value in {pwfile})
  MLflow UI    http://{settings.bind_host}:{settings.mlflow_port}   {mlflow_login}
  Postgres     {redact(settings.db_url)}
  Tandem page  http://{settings.bind_host}:{settings.airflow_port}/tandem/  (once logged in to Airflow)
  Answer API   http://{settings.bind_host}:{settings.serve_port}/api/ask   (tandem serve; header
               Authorization: Bearer <token>, the token: {token})
  State        {settings.home}   (logs: `make logs`)""")


def down(settings: Settings) -> int:
    stopped_any = False
    saved = _saved(settings)  # also what the last `make up` started, whatever TANDEM_EXECUTOR says now
    todo = {svc.name: svc for svc in services.all_services(saved or settings)}  # start order
    for svc in services.all_services(settings):
        todo.setdefault(svc.name, svc)
    for svc in reversed(list(todo.values())):
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
        elif svc.name in component:
            state = health.get(component[svc.name], {}).get("status") or "running (no heartbeat yet)"
        else:
            state = "healthy"  # a Celery worker: _worker_rows asks it through the broker
        rows.append((svc.name, pid, state))
    workers_ok = True
    if services.is_celery(settings):
        rows, workers_ok = _worker_rows(settings, rows)
    for name, pid, state in rows:
        _say(f"  {name:<24} {('pid ' + str(pid)) if pid else '-':<12} {state}")
    if services.is_celery(settings):
        from tandem.stack import celery_status

        _say(f"  {'celery queues':<24} {'':<12} {celery_status.queues_text(settings)}")
    return 0 if workers_ok and all(state.startswith("healthy") for _, _, state in rows) else 1


def _worker_rows(settings: Settings, rows: list) -> tuple[list, bool]:
    """Each Celery worker's row says whether it answers the broker, its queue, and what it runs now."""
    from tandem.stack import celery_status

    answered = celery_status.ping(settings)
    busy = celery_status.active(settings) if answered else {}
    queue_of = {f"airflow-worker-{name}": (name, queue) for name, queue in services.worker_names(settings)}
    out, ok = [], True
    for name, pid, state in rows:
        if name in queue_of and pid:
            worker, queue = queue_of[name]
            if worker in answered:
                state = f"healthy (queue {queue}, {busy.get(worker, 0)} running)"
            else:
                state, ok = f"running, not answering the broker (queue {queue})", False
        out.append((name, pid, state))
    return out, ok


def logs(settings: Settings) -> int:
    _say("Service logs (tail -f one of them):")
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


STACK_FILE = "stack.json"  # under run_dir: the executor and worker count `make up` started with


def _remember(settings: Settings) -> None:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / STACK_FILE).write_text(json.dumps({"executor": settings.executor,
                                                          "workers": settings.workers}) + "\n")


def _saved(settings: Settings) -> Settings | None:
    """The settings with the executor and worker count the last `make up` recorded (None: no record)."""
    try:
        saved = json.loads((settings.run_dir / STACK_FILE).read_text())
        return settings.replace(executor=str(saved["executor"]), workers=int(saved["workers"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def started_as(settings: Settings) -> Settings:
    """The settings of the running stack: `make status`/`down` without TANDEM_EXECUTOR see the workers that
    `TANDEM_EXECUTOR=celery make up` started."""
    if os.environ.get("TANDEM_EXECUTOR") or os.environ.get("TANDEM_WORKERS"):
        return settings
    return _saved(settings) or settings


def passwords_file(settings: Settings) -> int:
    """Compose's api-server: write the admin password (TANDEM_AIRFLOW_PASSWORD, from .env) to the one password
    file path, $TANDEM_HOME/airflow/passwords.json, inside its own container (no shared volume)."""
    password = os.environ.get("TANDEM_AIRFLOW_PASSWORD", "")
    if not password:
        raise UserError("TANDEM_AIRFLOW_PASSWORD is not set", fix="set AIRFLOW_ADMIN_PASSWORD in .env")
    path = services.write_airflow_password(settings, password)
    _say(f"  admin password written to {path}")
    return 0


def mlflow_auth_config(settings: Settings) -> int:
    """Compose's MLflow: write the basic-auth app's config (users in MLflow's database) and print its path."""
    print(mlflow_auth.write_server_config(settings, services.mlflow_backend_uri(settings)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.stack", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status", "logs", "pools-json", "passwords-file",
                                           "mlflow-auth-config"])
    args = parser.parse_args(argv)
    try:
        settings = Settings.load()
        if args.action in ("down", "status", "logs"):
            settings = started_as(settings)
        actions = {"up": up, "down": down, "status": status, "logs": logs, "pools-json": pools_json,
                   "passwords-file": passwords_file, "mlflow-auth-config": mlflow_auth_config}
        return actions[args.action](settings)
    except TandemError as exc:
        print(f"tandem {args.action}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
