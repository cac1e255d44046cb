"""MLflow roles: the tracking server runs MLflow's basic-auth app (the session's server, as `make up` starts it).

Nobody reads it anonymously; Tandem signs in as the admin; a reviewer made by `tandem mlflow add-reviewer`
reads runs and versions but cannot move an alias.
"""

from __future__ import annotations

import stat

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tandem import mlflow_auth
from tandem.cli import main
from tandem.errors import UserError

SEARCH = "/api/2.0/mlflow/experiments/search"


def _reviewer(settings, name):
    path = mlflow_auth.add_reviewer(settings, name)
    user, password = path.read_text().strip().split(":", 1)
    return path, user, password


def test_anonymous_requests_are_refused(settings):
    reply = httpx.get(settings.mlflow_uri + SEARCH, params={"max_results": 1})
    assert reply.status_code == 401
    wrong = httpx.get(settings.mlflow_uri + SEARCH, params={"max_results": 1}, auth=("tandem", "not-the-password"))
    assert wrong.status_code == 401


def test_tandem_signs_in_with_its_generated_password(settings):
    secret = mlflow_auth.password(settings)
    assert secret and stat.S_IMODE(mlflow_auth.password_file(settings).stat().st_mode) == 0o600
    reply = httpx.get(settings.mlflow_uri + SEARCH, params={"max_results": 1}, auth=("tandem", secret))
    assert reply.status_code == 200


def test_a_reviewer_reads_but_cannot_move_an_alias(settings, monkeypatch):
    tandem = MlflowClient(settings.mlflow_uri)
    name = "tandem-auth-probe"
    try:
        tandem.get_registered_model(name)
    except MlflowException:
        tandem.create_registered_model(name)
    experiment = tandem.get_experiment_by_name(name) or tandem.get_experiment(tandem.create_experiment(name))
    run = tandem.create_run(experiment.experiment_id)
    version = tandem.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    tandem.set_registered_model_alias(name, "champion", version.version)

    path, user, password = _reviewer(settings, "alice")
    assert user == "alice" and stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv(mlflow_auth.USERNAME_VAR, user)
    monkeypatch.setenv(mlflow_auth.PASSWORD_VAR, password)
    alice = MlflowClient(settings.mlflow_uri)
    assert alice.get_model_version_by_alias(name, "champion").version == version.version
    assert alice.search_experiments(max_results=5) is not None
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        alice.set_registered_model_alias(name, "champion", "1")
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        alice.delete_registered_model_alias(name, "champion")


def test_a_second_reviewer_of_the_same_name_is_refused(settings):
    _reviewer(settings, "bob")
    with pytest.raises(UserError, match="exists already"):
        mlflow_auth.add_reviewer(settings, "bob")


def test_the_cli_names_the_password_file_and_rejects_a_bad_name(settings, monkeypatch, capsys):
    for key, value in settings.as_env().items():
        monkeypatch.setenv(key, value)
    assert main(["mlflow", "add-reviewer", "carol"]) == 0
    out = capsys.readouterr().out
    assert str(mlflow_auth.reviewer_file(settings, "carol")) in out
    assert mlflow_auth.reviewer_file(settings, "carol").read_text().split(":", 1)[1].strip() not in out
    assert main(["mlflow", "add-reviewer", "carol; drop"]) == 2
    err = capsys.readouterr().err
    assert "not a plain name" in err and "Traceback" not in err


def test_the_server_config_keeps_users_in_mlflows_database_and_defaults_to_read():
    text = mlflow_auth.server_config("tandem", "postgresql+psycopg://u:p%40ss@/mlflow?host=/tmp/pg")
    assert "default_permission = READ" in text and "admin_username = tandem" in text
    assert "database_uri = postgresql+psycopg://u:p%%40ss@/mlflow?host=/tmp/pg" in text
    import configparser

    parsed = configparser.ConfigParser()  # as MLflow reads it: with interpolation
    parsed.read_string(text)
    assert parsed["mlflow"]["database_uri"] == "postgresql+psycopg://u:p%40ss@/mlflow?host=/tmp/pg"
