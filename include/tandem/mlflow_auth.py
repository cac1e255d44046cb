"""Signing in to the stack's MLflow server, which runs MLflow's own ``basic-auth`` app.

With ``TANDEM_MLFLOW_AUTH`` on (the default), ``make up`` starts ``mlflow server --app-name basic-auth``:
every request needs a user and password. Tandem's components sign in as ``TANDEM_MLFLOW_USERNAME``
(``tandem``), the server's admin, whose password is ``TANDEM_MLFLOW_PASSWORD`` or one generated once (0600)
in ``TANDEM_HOME/airflow/secrets/mlflow_password``. They pass it the way every MLflow client does, as
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``. Against a server of your own, set
``TANDEM_MLFLOW_USERNAME`` / ``TANDEM_MLFLOW_PASSWORD`` to your account, or ``TANDEM_MLFLOW_AUTH=false`` to
leave the MLFLOW_TRACKING_* variables you set alone.

Other users (reviewers) get the server's default permission, READ: they can open every run, trace and
model version, but moving an alias or deleting anything needs EDIT or MANAGE, which only ``tandem`` has.
``tandem mlflow add-reviewer NAME`` creates one.
"""

from __future__ import annotations

import configparser
import io
import os
import secrets
from pathlib import Path

from tandem import secret_files
from tandem.config import Settings
from tandem.errors import ServiceUnavailable, UserError

USERNAME_VAR, PASSWORD_VAR = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
# A credential check is a PBKDF2 hash (tens of ms); the one server process caches a good one for a minute.
AUTH_CACHE_SECONDS = 60


def secrets_dir(settings: Settings) -> Path:
    return settings.airflow_home / "secrets"


def password_file(settings: Settings) -> Path:
    return secrets_dir(settings) / "mlflow_password"


def password(settings: Settings, *, create: bool = False) -> str:
    """Tandem's MLflow password: TANDEM_MLFLOW_PASSWORD, else the generated one ('' when none and not ``create``)."""
    if settings.mlflow_password:
        return settings.mlflow_password
    if create:
        return secret_files.read_or_create(password_file(settings), lambda: secrets.token_urlsafe(24))
    path = password_file(settings)
    return path.read_text().strip() if path.exists() else ""


def client_env(settings: Settings, *, create: bool = False) -> dict[str, str]:
    """The MLFLOW_TRACKING_* variables that sign a client in as Tandem ({} with authentication off)."""
    if not settings.mlflow_auth:
        return {}
    secret = password(settings, create=create)
    return {USERNAME_VAR: settings.mlflow_username, PASSWORD_VAR: secret} if secret else {}


def sign_in(settings: Settings) -> None:
    """Sign this process's MLflow clients in as Tandem (nothing changes when no password is known)."""
    os.environ.update(client_env(settings))


def server_env(settings: Settings, backend_uri: str) -> dict[str, str]:
    """Environment of ``mlflow server --app-name basic-auth``: its config file and first admin password."""
    return {"MLFLOW_AUTH_CONFIG_PATH": str(write_server_config(settings, backend_uri)),
            "MLFLOW_AUTH_ADMIN_USERNAME": settings.mlflow_username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password(settings, create=True),
            # signs the UI's CSRF tokens: one key, kept, so a restart does not void open forms
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_files.read_or_create(secrets_dir(settings) / "mlflow_flask_key",
                                                                          lambda: secrets.token_urlsafe(32))}


def server_config(username: str, database_uri: str) -> str:
    """The basic-auth app's ini: users kept in ``database_uri`` (MLflow's own database), everyone else READ."""
    config = configparser.ConfigParser(interpolation=None)
    # MLflow reads the file with interpolation: a percent-encoded URL's '%' is written as '%%'.
    config["mlflow"] = {key: value.replace("%", "%%") for key, value in {
        "default_permission": "READ",
        "database_uri": database_uri,
        "admin_username": username,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "auth_cache_ttl_seconds": str(AUTH_CACHE_SECONDS),
    }.items()}
    out = io.StringIO()
    config.write(out)
    return out.getvalue()


def write_server_config(settings: Settings, backend_uri: str) -> Path:
    """The ini, written 0600 (its database URL may hold the Postgres password)."""
    return secret_files.write(secrets_dir(settings) / "mlflow_basic_auth.ini",
                              server_config(settings.mlflow_username, backend_uri))


def reviewer_file(settings: Settings, name: str) -> Path:
    return secrets_dir(settings) / f"mlflow_reviewer_{name}"


def add_reviewer(settings: Settings, name: str) -> Path:
    """Create MLflow user ``name`` with read access; its password goes to a 0600 file, whose path is returned."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"reviewer name {name!r} is not a plain name",
                        fix="use letters, digits, '.', '-' or '_', for example `tandem mlflow add-reviewer alice`")
    if not settings.mlflow_auth:
        raise UserError("MLflow runs without authentication (TANDEM_MLFLOW_AUTH=false): anyone can read it",
                        fix="set TANDEM_MLFLOW_AUTH=true and restart the stack (`make down && make up`)")
    sign_in(settings)
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    secret = secrets.token_urlsafe(18)
    try:
        AuthServiceClient(settings.mlflow_uri).create_user(name, secret)
    except MlflowException as exc:
        if "already exists" in str(exc) or "RESOURCE_ALREADY_EXISTS" in str(exc):
            raise UserError(f"MLflow user {name!r} exists already",
                            fix="pick another name, or change its password in the MLflow UI") from None
        raise ServiceUnavailable(f"MLflow at {settings.mlflow_uri} did not create user {name!r}: {exc}",
                                 fix="check that the stack is up (`make up`) and Tandem's password is current") from exc
    return secret_files.write(reviewer_file(settings, name), f"{name}:{secret}\n")
