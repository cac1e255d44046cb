"""Tandem's Airflow 3 plugin: the Tandem app under the api-server at ``/tandem``, linked from the navigation.

- ``GET /tandem/``: the status page of both cadences (index freshness, last night's changes, the live
  adapter and its scores, the anti-flap state, links to MLflow and Airflow runs).
- ``POST /tandem/api/ask``, ``GET /tandem/api/status``, ``GET /tandem/openapi.json``.

Every route uses Airflow's own authentication (the UI's cookie or a JWT bearer token). This module is
thin wiring and cheap to import (every Airflow component imports plugins): the app is built from
``tandem.serve.api`` (FastAPI only); settings, database and models are touched on the first request.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tandem.serve.api import create_app

app = create_app()


class TandemPlugin(AirflowPlugin):
    name = "tandem"
    fastapi_apps = [{"app": app, "url_prefix": "/tandem", "name": "Tandem"}]
    external_views = [{
        "name": "Tandem",
        "href": "tandem/",
        "destination": "nav",
        "url_route": "tandem",
        "nav_top_level": True,
    }]
