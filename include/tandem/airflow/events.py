"""Asset events from outside Airflow: ``behavior_adapter`` (``tandem adapters promote|rollback``) and
``knowledge_index`` (``tandem index rollback``).

Inside Airflow the task declares the asset as an outlet and Airflow records the event. The CLI posts the
event through Airflow's REST API (``apache-airflow-client``, ``tandem.airflow.rest``) so that the DAGs
scheduled on the asset see CLI changes too. Importing this module does not import Airflow. Credentials: ``TANDEM_AIRFLOW_USER`` / ``TANDEM_AIRFLOW_PASSWORD`` when set,
else the local stack's admin password file ($TANDEM_HOME/airflow/passwords.json).
"""

from __future__ import annotations

import json
import logging
import os

from tandem.config import Settings
from tandem.errors import TandemError

log = logging.getLogger(__name__)

ASSET_URI = "tandem://behavior/adapter"  # = tandem.airflow.assets.BEHAVIOR_ADAPTER.uri (docs/architecture.md)
KNOWLEDGE_URI = "tandem://knowledge/index"  # = tandem.airflow.assets.KNOWLEDGE_INDEX.uri


def _credentials(settings: Settings) -> tuple[str, str] | None:
    user = os.environ.get("TANDEM_AIRFLOW_USER", "admin")
    password = os.environ.get("TANDEM_AIRFLOW_PASSWORD")
    if password:
        return user, password
    pwfile = settings.airflow_home / "passwords.json"
    try:
        return user, json.loads(pwfile.read_text())[user]
    except (OSError, ValueError, KeyError):
        return None


def emit_adapter_event(settings: Settings, extra: dict) -> str | None:
    """Record an asset event for ``behavior_adapter``. Returns None on success, else why it was not recorded."""
    return emit(settings, ASSET_URI, extra)


def emit_knowledge_event(settings: Settings, extra: dict) -> str | None:
    """Record an asset event for ``knowledge_index``. Returns None on success, else why it was not recorded."""
    return emit(settings, KNOWLEDGE_URI, extra)


def emit(settings: Settings, uri: str, extra: dict) -> str | None:
    """Record an asset event for the asset ``uri``. Returns None on success, else why it was not recorded."""
    from tandem.airflow.rest import AirflowClient

    creds = _credentials(settings)
    if creds is None:
        return (f"no Airflow credentials (set TANDEM_AIRFLOW_PASSWORD, or run `make up` to create "
                f"{settings.airflow_home / 'passwords.json'})")
    try:
        client = AirflowClient(settings.airflow_url, creds[0], creds[1], timeout=10)
        asset_id = client.asset_id(uri)
        if asset_id is None:
            return f"Airflow does not know the asset {uri} yet (no DAG declaring it has been parsed)"
        client.emit_asset_event(asset_id, extra)
    except TandemError as exc:
        return str(exc).splitlines()[0]
    except Exception as exc:  # noqa: BLE001 - the alias move already happened; report, do not crash
        return f"{type(exc).__name__}: {exc}"
    log.info("asset event %s recorded: %s", uri, extra)
    return None
