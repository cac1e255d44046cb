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
