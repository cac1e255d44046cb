"""The host name a task instance records: the Celery worker's own name where the local stack set one.

Airflow records ``[core] hostname_callable()`` on every task instance. On one machine, all of the local
stack's Celery workers share the machine's name; ``make up`` with TANDEM_EXECUTOR=celery gives each worker
``TANDEM_WORKER_NAME`` (``cpu-1``, ``training-1``...) and points ``hostname_callable`` here, so that the grid
and the REST API say which worker ran a task. Elsewhere it is Airflow's own default, the FQDN.
"""

from __future__ import annotations

import os
import socket


def worker_hostname() -> str:
    name = os.environ.get("TANDEM_WORKER_NAME", "").strip()
    return f"{name}.{socket.gethostname()}" if name else socket.getfqdn()
