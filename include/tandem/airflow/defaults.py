"""Defaults every Tandem DAG shares: owner, retries, start date, tags."""

from datetime import timedelta

import pendulum

from tandem.config import Settings

OWNER = "tandem"
START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")
DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 1,
    # a task whose worker died (kill -9, a lost node) fails on its heartbeat timeout and runs again elsewhere
    "retry_delay": timedelta(seconds=Settings.load().retry_delay_seconds),
}
TAG = "tandem"
# Queue and pool for training tasks (names fixed in docs/architecture.md): a GPU Celery worker can serve the queue.
TRAINING_POOL = "training"
TRAINING_QUEUE = "training"
KNOWLEDGE_POOL = "knowledge"


# ``run_immediately`` of the cron timetables. ``False`` is not "never": Airflow 3.3 then still runs the most
# recent past slot on first unpause when it is less than a tenth of the interval old (2.4 h for a daily cron),
# so a `make up` at 03:00 would reindex at once. A zero buffer means a fresh stack waits for the next slot.
WAIT_FOR_NEXT_SLOT = timedelta(0)
