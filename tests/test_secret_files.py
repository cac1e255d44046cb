"""Secrets: created 0600 in one step, one secret after concurrent first starts, never printed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tandem import secret_files
from tandem.config import Settings, shown_values


def _first_start(path: str) -> str:
    return secret_files.read_or_create(Path(path), lambda: os.urandom(16).hex())


def test_a_new_secret_file_is_0600_and_kept(tmp_path):
    path = tmp_path / "secrets" / "token"
    first = secret_files.read_or_create(path, lambda: "one")
    assert first == "one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_files.read_or_create(path, lambda: "two") == "one"
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temporary file left behind


def test_concurrent_first_starts_end_with_one_secret(tmp_path):
    path = tmp_path / "token"
    with ProcessPoolExecutor(max_workers=8) as pool:
        tokens = list(pool.map(_first_start, [str(path)] * 32))
    assert len(set(tokens)) == 1, tokens
    assert path.read_text().strip() == tokens[0]


def test_replacing_a_secret_keeps_it_0600(tmp_path):
    path = secret_files.write(tmp_path / "passwords.json", json.dumps({"admin": "x"}))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and json.loads(path.read_text()) == {"admin": "x"}


def test_shown_settings_hide_every_secret():
    settings = Settings.load(env={}, serve_token="tok-123-secret", pg_password="pw-456-secret",
                             mlflow_uri="http://tandem:mlflow-789-secret@127.0.0.1:5000",
                             mlflow_password="mlflow-pw-012-secret")
    text = json.dumps(shown_values(settings))
    for secret in ("tok-123-secret", "pw-456-secret", "mlflow-789-secret", "mlflow-pw-012-secret"):
        assert secret not in text
    shown = shown_values(settings)
    assert shown["TANDEM_SERVE_TOKEN"] == "***"
    assert shown["TANDEM_MLFLOW_URI"] == "http://tandem:***@127.0.0.1:5000"


def test_tandem_config_prints_no_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env.update(TANDEM_HOME=str(tmp_path), TANDEM_SERVE_TOKEN="tok-from-env-secret", TANDEM_PG_PASSWORD="pg-secret")
    out = subprocess.run([str(Path(sys.executable).parent / "tandem"), "config"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "TANDEM_SERVE_TOKEN=***" in out
    assert "tok-from-env-secret" not in out and "pg-secret" not in out
