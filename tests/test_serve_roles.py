"""Roles: the plugin asks Airflow's auth manager. Asking needs the right to trigger behavior_eval (User, Op,
Admin); a Viewer may read the status but gets 403 on ask. Real api-server app, real SimpleAuthManager roles."""

from __future__ import annotations

from serve_fixtures import OFF_TOPIC


def test_a_viewer_cannot_ask(airflow_app, serve_index):
    resp = airflow_app.client.post("/tandem/api/ask", json={"question": OFF_TOPIC, "k": 2, "adapter": "base"},
                                   headers=airflow_app.headers("viewer"))
    assert resp.status_code == 403, resp.text
    assert "behavior_eval" in resp.json()["error"] and "User" in resp.json()["fix"]


def test_a_viewer_reads_the_status(airflow_app, serve_index):
    resp = airflow_app.client.get("/tandem/api/status", headers=airflow_app.headers("viewer"))
    assert resp.status_code == 200, resp.text
    assert "knowledge" in resp.json()


def test_a_user_asks(airflow_app, serve_index):
    # an off-topic question is refused by the similarity gate without generating: quick, and a real answer
    resp = airflow_app.client.post("/tandem/api/ask", json={"question": OFF_TOPIC, "k": 2, "adapter": "base"},
                                   headers=airflow_app.headers("user"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["refused"] is True
