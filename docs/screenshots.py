"""Screenshots of the running stack for the README, taken with headless Chromium (``make screenshots``).

Needs the Debian packages ``chromium`` and ``chromium-driver`` and a stack that ran the demo (``make demo``).
It drives chromedriver over the W3C WebDriver protocol with the standard library (no Selenium), logs in to
Airflow with the admin password from ``$TANDEM_HOME`` (a JWT from ``/auth/token`` set as the UI's ``_token``
cookie), and writes PNGs to ``docs/images/``:

- ``airflow-grid.png``: the grid of ``lora_retrain`` (or ``--dag``);
- ``mlflow-registry.png``: the registered model ``tandem-adapter`` with its aliases;
- ``mlflow-run.png``: the newest ``tandem-lora-training`` run;
- ``status-page.png``: the Tandem status page at ``/tandem/``.

    python docs/screenshots.py [--out docs/images] [--dag lora_retrain] [--wait 6]
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _http(method: str, url: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


class Browser:
    """A headless Chromium session through chromedriver (W3C WebDriver over HTTP)."""

    def __init__(self, width: int = 1400, height: int = 900):
        from tandem.stack.process import free_port

        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="tandem-shots-")
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(50):
            try:
                _http("GET", f"{self.base}/status", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}",
                     f"--user-data-dir={self.profile}"]}}}}
        self.session = _http("POST", f"{self.base}/session", caps)["value"]["sessionId"]

    def _cmd(self, method: str, path: str, body: dict | None = None) -> dict:
        return _http(method, f"{self.base}/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self._cmd("POST", "/url", {"url": url})

    def cookie(self, name: str, value: str) -> None:
        self._cmd("POST", "/cookie", {"cookie": {"name": name, "value": value, "path": "/"}})

    def shot(self, url: str, dest: Path, wait: float, height: int = 900) -> Path:
        self._cmd("POST", "/window/rect", {"width": 1400, "height": height})
        self.get(url)
        time.sleep(wait)  # the Airflow and MLflow UIs render client-side after the load event
        dest.write_bytes(base64.b64decode(self._cmd("GET", "/screenshot")["value"]))
        print(f"  {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}  <-  {url}")
        return dest

    def close(self) -> None:
        try:
            self._cmd("DELETE", "")
        finally:
            self.driver.terminate()
            shutil.rmtree(self.profile, ignore_errors=True)


def airflow_token(settings) -> str:
    from tandem.stack.services import airflow_password

    body = _http("POST", f"{settings.airflow_url}/auth/token",
                 {"username": "admin", "password": airflow_password(settings)})
    return body["access_token"]


def newest_training_run_url(settings) -> str:
    from mlflow.tracking import MlflowClient

    from tandem import tracking

    client = MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT_TRAINING)
    if exp is None:
        return f"{settings.mlflow_ui_url}/#/experiments"
    runs = client.search_runs([exp.experiment_id], filter_string="tags.mlflow.parentRunId IS NULL",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return f"{settings.mlflow_ui_url}/#/experiments/{exp.experiment_id}"
    return f"{settings.mlflow_ui_url}/#/experiments/{exp.experiment_id}/runs/{runs[0].info.run_id}"


def main(argv: list[str] | None = None) -> int:
    from tandem.config import Settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    ap.add_argument("--dag", default="lora_retrain", help="the DAG whose grid is shot")
    ap.add_argument("--wait", type=float, default=6.0, help="seconds to let each page render")
    args = ap.parse_args(argv)
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            print(f"screenshots: {path} is missing; install the Debian package {package}", file=sys.stderr)
            return 2
    settings = Settings.load()
    try:
        token = airflow_token(settings)
    except OSError as exc:
        print(f"screenshots: Airflow at {settings.airflow_url} did not answer ({exc}); run `make up` and "
              "`make demo` first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    browser = Browser()
    try:
        browser.get(f"{settings.airflow_url}/api/v2/monitor/health")  # a page on the Airflow origin for the cookie
        browser.cookie("_token", token)
        browser.shot(f"{settings.airflow_url}/dags/{args.dag}", args.out / "airflow-grid.png", args.wait)
        browser.shot(f"{settings.mlflow_ui_url}/#/models/tandem-adapter", args.out / "mlflow-registry.png", args.wait)
        browser.shot(newest_training_run_url(settings), args.out / "mlflow-run.png", args.wait)
        browser.shot(f"{settings.airflow_url}/tandem/", args.out / "status-page.png", args.wait / 2, height=1700)
    finally:
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
