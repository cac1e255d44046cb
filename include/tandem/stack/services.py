"""The local stack's services as data: what to run, with which environment, and how to tell it is healthy.

Topology (the same as docker-compose.yaml): PostgreSQL (embedded) holds the ``airflow``, ``mlflow`` and
``tandem`` databases; the MLflow tracking server; Airflow's api-server, scheduler, dag-processor and
triggerer. The executor is LocalExecutor by default; with TANDEM_EXECUTOR=celery it is CeleryExecutor, with
a Redis broker (Debian's ``redis-server``), Celery's result backend in the ``airflow`` database,
TANDEM_WORKERS workers on the ``default`` queue and one worker on the ``training`` queue.

Each Celery worker has a scratch TANDEM_HOME and AIRFLOW_HOME of its own under ``$TANDEM_HOME/workers/``:
it shares nothing with the scheduler or the other workers but the read-only checkout, the source URIs and
the task log folder (what remote logging is on a real cluster). Its base model comes from the model store
(``tandem.model_store``), published to MLflow by ``make up``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from pathlib import Path

from tandem import mlflow_auth, secret_files
from tandem.airflow.settings import connection_env
from tandem.config import Settings, _CHECKOUT
from tandem.pg_urls import local_pg_url, sqlalchemy_url
from tandem.stack.process import Service

# Pools Tandem's DAGs use (name -> (slots, description)). `training` is fixed in docs/architecture.md.
POOLS = {
    "training": (1, "LoRA training: one job at a time"),
    "knowledge": (2, "knowledge_reindex embedding batches"),
}


CPU_QUEUE = "default"
TRAINING_QUEUE = "training"  # the DAGs' queue of the same name (tandem.airflow.defaults)
HEARTBEAT_TIMEOUT_S = 60  # a task whose worker died (kill -9) is retried after this (Airflow's default: 300)


def is_celery(settings: Settings) -> bool:
    return settings.executor == "celery"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def checkout() -> Path:
    return _CHECKOUT or Path.cwd()


def _secret(path: Path, make) -> str:
    """A secret generated once and kept under TANDEM_HOME (never in the repo): 0600 from creation, one winner."""
    return secret_files.read_or_create(path, make)


def airflow_password_file(settings: Settings) -> Path:
    return settings.airflow_home / "passwords.json"


def serve_token_file(settings: Settings) -> Path:
    from tandem.serve.contract import token_path

    return token_path(settings)


def airflow_password(settings: Settings) -> str:
    """The local admin password, stored in the SimpleAuthManager passwords file."""
    pwfile = airflow_password_file(settings)
    if pwfile.exists():
        return json.loads(pwfile.read_text())["admin"]
    password = secrets.token_urlsafe(12)
    write_airflow_password(settings, password)
    return password


def write_airflow_password(settings: Settings, password: str) -> Path:
    """The SimpleAuthManager passwords file: $TANDEM_HOME/airflow/passwords.json, locally and in compose."""
    return secret_files.write(airflow_password_file(settings), json.dumps({"admin": password}))


def airflow_env(settings: Settings) -> dict[str, str]:
    home = settings.airflow_home
    secrets_dir = home / "secrets"
    base_url = f"http://{settings.bind_host}:{settings.airflow_port}"
    airflow_password(settings)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(checkout() / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(checkout() / "plugins"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if is_celery(settings) else "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow_parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__FERNET_KEY": _secret(secrets_dir / "fernet_key", _fernet_key),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(local_pg_url(settings.values, "airflow"), "psycopg2"),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__API__HOST": settings.bind_host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": _secret(secrets_dir / "api_secret_key", lambda: secrets.token_urlsafe(32)),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(secrets_dir / "jwt_secret", lambda: secrets.token_urlsafe(32)),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "NO_PROXY": "*",
    }
    env.update(connection_env(settings))
    env.update(settings.as_env())
    env.update(serve_env(settings))  # the plugin forwards /tandem/api/ask to `tandem serve`
    env.update(mlflow_auth.client_env(settings, create=True))  # tasks and the plugin sign in to MLflow as Tandem
    if is_celery(settings):
        env.update(celery_env(settings))
    return env


def celery_env(settings: Settings) -> dict[str, str]:
    """CeleryExecutor's settings: the Redis broker, the result backend in the airflow database."""
    airflow_db = sqlalchemy_url(local_pg_url(settings.values, "airflow"), "psycopg2")
    return {
        "AIRFLOW__CELERY__BROKER_URL": broker_url(settings),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_db,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": CPU_QUEUE,
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
    }


def redis_password(settings: Settings) -> str:
    return _secret(settings.airflow_home / "secrets" / "redis_password", lambda: secrets.token_hex(24))


def broker_url(settings: Settings) -> str:
    return f"redis://:{redis_password(settings)}@{settings.bind_host}:{settings.redis_port}/0"


REDIS_PATHS = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")  # when PATH is a minimal one


def _redis_path() -> str | None:
    return shutil.which("redis-server") or next((p for p in REDIS_PATHS if Path(p).exists()), None)


def redis_binary() -> str:
    """Debian's redis-server, or a clear error naming the install command."""
    from tandem.errors import UserError

    found = _redis_path()
    if not found:
        raise UserError("TANDEM_EXECUTOR=celery needs Redis, and redis-server is not installed",
                        fix="install it: `sudo apt-get install -y redis-server` (Debian/Ubuntu), "
                            "or run with the default TANDEM_EXECUTOR=local")
    return found


def redis_service(settings: Settings) -> Service:
    """Redis as the Celery broker: loopback only, a password, nothing persisted (a restart loses only queued
    messages, which Airflow's scheduler re-queues)."""
    conf = settings.airflow_home / "secrets" / "redis.conf"
    argv = [_redis_path() or "redis-server", str(conf)]  # `make up` checks redis_binary() before starting

    def health(timeout: float) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(broker_url(settings), socket_timeout=timeout).ping())
        except redis.RedisError:
            return False

    health.target = f"redis://{settings.bind_host}:{settings.redis_port}"
    return Service("redis", argv, {}, health=health, port=settings.redis_port, host=settings.bind_host)


def write_redis_conf(settings: Settings) -> Path:
    conf = settings.airflow_home / "secrets" / "redis.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("\n".join([
        f"bind {settings.bind_host}", f"port {settings.redis_port}", "protected-mode yes",
        f"requirepass {redis_password(settings)}", 'save ""', "appendonly no", f"dir {settings.run_dir}",
        "daemonize no", "loglevel notice", ""]))
    conf.chmod(0o600)
    return conf


def worker_names(settings: Settings) -> list[tuple[str, str]]:
    """(name, queue) of each Celery worker: TANDEM_WORKERS on ``default``, one on ``training``."""
    if not is_celery(settings):
        return []
    return [(f"cpu-{i}", CPU_QUEUE) for i in range(1, settings.workers + 1)] + [("training-1", TRAINING_QUEUE)]


def worker_settings(settings: Settings, name: str, store: dict | None) -> Settings:
    """A worker's settings: the stack's, with a scratch home of its own and the base model from the store."""
    home = settings.home / "workers" / name
    changes: dict = {"home": home}
    if store:  # a local base model (the default or yours): each worker fetches its own copy from the store
        changes.update(base_model=str(home / "models" / Path(str(settings.base_model)).name),
                       base_model_uri=store["uri"], base_model_sha256=store["sha256"])
    return settings.replace(**changes)


def worker_services(settings: Settings, store: dict | None = None) -> list[Service]:
    out = []
    for name, queue in worker_names(settings):
        own = worker_settings(settings, name, store)
        env = {**airflow_env(settings), **own.as_env(), "AIRFLOW_HOME": str(own.home / "airflow"),
               "TANDEM_WORKER_NAME": name,
               "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tandem.airflow.hostname.worker_hostname"}
        argv = [_bin("airflow"), "celery", "worker", "--queues", queue, "--concurrency", "1",
                "--celery-hostname", f"{name}@%h", "--skip-serve-logs", "--without-gossip", "--without-mingle"]
        out.append(Service(f"airflow-worker-{name}", argv, env))
    return out


def serve_env(settings: Settings) -> dict[str, str]:
    """Where `tandem serve` listens and its token, for the serve process and the api-server that forwards to it."""
    from tandem.serve.contract import serve_token

    return {"TANDEM_SERVE_URL": settings.serve_url or f"http://{settings.bind_host}:{settings.serve_port}",
            "TANDEM_SERVE_TOKEN": serve_token(settings)}


def serve_service(settings: Settings) -> Service:
    env = {**settings.as_env(), **serve_env(settings), **mlflow_auth.client_env(settings, create=True),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return Service(
        name="tandem-serve",
        argv=[_bin("tandem"), "serve"],
        env=env,
        health=http_health(f"http://{settings.bind_host}:{settings.serve_port}/health"),
        port=settings.serve_port,
        host=settings.bind_host,
    )


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def mlflow_backend_uri(settings: Settings) -> str:
    return sqlalchemy_url(local_pg_url(settings.values, "mlflow"), "psycopg")


def mlflow_service(settings: Settings) -> Service:
    """The tracking server; with TANDEM_MLFLOW_AUTH, MLflow's basic-auth app (users kept in the same database)."""
    backend = mlflow_backend_uri(settings)
    auth = ["--app-name", "basic-auth"] if settings.mlflow_auth else []
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           **(mlflow_auth.server_env(settings, backend) if settings.mlflow_auth else {})}
    return Service(
        name="mlflow",
        argv=[_bin("mlflow"), "server", *auth,
              "--backend-store-uri", backend,
              "--artifacts-destination", str(settings.mlflow_artifacts),
              "--host", settings.bind_host, "--port", str(settings.mlflow_port), "--workers", "1"],
        env=env,
        health=http_health(f"http://{settings.bind_host}:{settings.mlflow_port}/health"),
        port=settings.mlflow_port,
        host=settings.bind_host,
    )


def airflow_services(settings: Settings) -> list[Service]:
    env = airflow_env(settings)
    airflow = _bin("airflow")
    return [
        Service("airflow-api-server", [airflow, "api-server"], env, health=airflow_health(settings),
                port=settings.airflow_port, host=settings.bind_host),
        # --skip-serve-logs: with LocalExecutor the api-server reads task logs from local files, so no
        # log server is needed (it would bind every interface on 8793/8794).
        Service("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"], env),
        Service("airflow-dag-processor", [airflow, "dag-processor"], env),
        Service("airflow-triggerer", [airflow, "triggerer", "--skip-serve-logs"], env),
    ]


def http_health(url: str):
    """A health check: ``url`` answers 200."""

    def check(timeout: float) -> bool:
        import httpx

        try:
            return httpx.get(url, timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    check.target = url
    return check


def airflow_health(settings: Settings):
    """A health check: the api-server answers its health endpoint (through apache-airflow-client)."""

    base = f"http://{settings.bind_host}:{settings.airflow_port}"

    def check(timeout: float) -> bool:
        from tandem.airflow import rest

        return bool(rest.health(base, timeout=timeout))

    check.target = f"{base}/api/v2/monitor/health"
    return check


def all_services(settings: Settings, store: dict | None = None) -> list[Service]:
    """Every service in start order (``store``: the published base model the Celery workers fetch)."""
    broker = [redis_service(settings)] if is_celery(settings) else []
    return [*broker, mlflow_service(settings), *airflow_services(settings), *worker_services(settings, store),
            serve_service(settings)]
