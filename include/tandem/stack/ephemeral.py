"""An ephemeral Postgres + pgvector and MLflow server under a given TANDEM_HOME, for benchmarks and scripts.

    with EphemeralStack(Path(tmp)) as settings:
        ...  # settings point at the temporary stack; the base model stays the configured one

The same recipe as the test fixtures: embedded Postgres (its databases created) and an MLflow server on a
free loopback port; both are stopped on exit.
"""

from __future__ import annotations

from pathlib import Path

from tandem.config import Settings


class EphemeralStack:
    def __init__(self, home: Path):
        from tandem.stack import process

        configured = Settings.load()  # the converted base model stays where `make setup` put it
        self.settings = Settings.load(home=home, mlflow_port=process.free_port(), base_model=configured.base_model)
        self.service = None

    def __enter__(self) -> Settings:
        from tandem.stack import postgres, process, services

        postgres.start(self.settings.pg_data)
        postgres.ensure_databases(self.settings.pg_data)
        self.service = services.mlflow_service(self.settings)
        process.start(self.service, self.settings.run_dir, self.settings.logs_dir)
        process.wait_healthy(self.service, self.settings.run_dir, self.settings.logs_dir, timeout=180)
        return self.settings

    def __exit__(self, *exc) -> None:
        from tandem.stack import postgres, process

        if self.service is not None:
            process.stop(self.service, self.settings.run_dir)
        postgres.stop(self.settings.pg_data)
