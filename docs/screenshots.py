"""Screenshots of the running stack for the README, taken with headless Chromium (``make screenshots``).

Needs the Debian packages ``chromium`` and ``chromium-driver`` and a stack that ran the demo (``make demo``).
Selenium drives the Debian chromedriver as it is (no driver download), logs in to Airflow with the admin
password from ``$TANDEM_HOME`` (a JWT from ``/auth/token`` set as the UI's ``_token`` cookie), waits for each
page to render, and writes PNGs to ``docs/images/``:

- ``airflow-grid.png``: the grid of ``lora_retrain`` (or ``--dag``);
- ``mlflow-registry.png``: the registered model ``tandem-adapter`` with its aliases;
- ``mlflow-run.png``: the newest ``tandem-lora-training`` run;
- ``mlflow-trace.png``: the trace of one answer (the newest of ``tandem serve`` given by an adapter, in
  ``tandem-serving``) with its spans;
- ``status-page.png``: the Tandem status page at ``/tandem/``.

    python docs/screenshots.py [--out docs/images] [--dag lora_retrain] [--timeout 30] [--only mlflow-trace.png]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# What each page shows once the client-side app has rendered (CSS selectors or page text).
RENDERED = {
    "airflow-grid.png": "lora_retrain",
    "mlflow-registry.png": "tandem-adapter",
    "mlflow-run.png": "Metrics",
    "mlflow-trace.png": "generation",
    "status-page.png": "Knowledge",
}


class Browser:
    """Headless Chromium through Selenium and the system chromedriver."""

    def __init__(self, width: int = 1400, height: int = 900, timeout: float = 30):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}"):
            options.add_argument(arg)
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        self.timeout = timeout

    def basic_auth(self, user: str | None, password: str | None) -> None:
        """Send HTTP basic auth with every request from now on (None: stop sending it)."""
        import base64

        self.driver.execute_cdp_cmd("Network.enable", {})
        headers = {}
        if user:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})

    def cookie(self, name: str, value: str) -> None:
        self.driver.add_cookie({"name": name, "value": value, "path": "/"})

    def shot(self, url: str, dest: Path, text: str, height: int = 900) -> Path:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver.set_window_size(1400, height)
        self.driver.get(url)
        try:  # the Airflow and MLflow UIs render client-side after the load event
            WebDriverWait(self.driver, self.timeout).until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), text))
        except TimeoutException:
            print(f"  warning: {url} did not show {text!r} within {self.timeout:.0f}s; shot as it is", file=sys.stderr)
        self.driver.save_screenshot(str(dest))
        print(f"  {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}  <-  {url}")
        return dest

    def close(self) -> None:
        self.driver.quit()


def airflow_token(settings) -> str:
    from tandem.airflow.rest import login
    from tandem.stack.services import airflow_password

    return login(settings.airflow_url, "admin", airflow_password(settings))


def newest_training_run_url(settings) -> str:
    from tandem import tracking

    client = tracking.client(settings)  # signed in: the local server asks for basic auth
    exp = client.get_experiment_by_name(tracking.EXPERIMENT_TRAINING)
    if exp is None:
        return f"{settings.mlflow_ui_url}/#/experiments"
    runs = client.search_runs([exp.experiment_id], filter_string="tags.mlflow.parentRunId IS NULL",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return f"{settings.mlflow_ui_url}/#/experiments/{exp.experiment_id}"
    return f"{settings.mlflow_ui_url}/#/experiments/{exp.experiment_id}/runs/{runs[0].info.run_id}"


def newest_trace_url(settings) -> str:
    """One answer's trace: the newest given by an adapter version (else the newest at all)."""
    from tandem import tracking

    client = tracking.client(settings)
    exp = client.get_experiment_by_name(settings.trace_experiment)
    if exp is None:
        return f"{settings.mlflow_ui_url}/#/experiments"
    for where in ("tags.`tandem.adapter` != 'base'", None):
        found = client.search_traces(locations=[exp.experiment_id], filter_string=where, max_results=1,
                                     order_by=["timestamp_ms DESC"], include_spans=False)
        if found:
            return tracking.trace_url(settings, exp.experiment_id, found[0].info.trace_id)
    return f"{settings.mlflow_ui_url}/#/experiments/{exp.experiment_id}/traces"


def main(argv: list[str] | None = None) -> int:
    from tandem.config import Settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    ap.add_argument("--dag", default="lora_retrain", help="the DAG whose grid is shot")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each page to render")
    ap.add_argument("--only", default="", help="comma-separated file names to take (default: all)")
    args = ap.parse_args(argv)
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            print(f"screenshots: {path} is missing; install the Debian package {package}", file=sys.stderr)
            return 2
    settings = Settings.load()
    from tandem.errors import TandemError

    try:
        token = airflow_token(settings)
    except TandemError as exc:
        print(f"screenshots: {exc}; run `make up` and `make demo` first", file=sys.stderr)
        return 2
    from tandem import mlflow_auth

    mlflow_env = mlflow_auth.client_env(settings)
    args.out.mkdir(parents=True, exist_ok=True)
    browser = Browser(timeout=args.timeout)
    try:
        browser.driver.get(f"{settings.airflow_url}/api/v2/monitor/health")  # the Airflow origin, for the cookie
        browser.cookie("_token", token)
        pages = [(f"{settings.airflow_url}/dags/{args.dag}", "airflow-grid.png", 900),
                 (f"{settings.mlflow_ui_url}/#/models/tandem-adapter", "mlflow-registry.png", 900),
                 (newest_training_run_url(settings), "mlflow-run.png", 900),
                 (newest_trace_url(settings), "mlflow-trace.png", 1000),
                 (f"{settings.airflow_url}/tandem/", "status-page.png", 1700)]
        wanted = {n.strip() for n in args.only.split(",") if n.strip()}
        for url, name, height in pages:
            if wanted and name not in wanted:
                continue
            text = args.dag if name == "airflow-grid.png" else RENDERED[name]
            if url.startswith(settings.mlflow_ui_url):  # the local MLflow server asks for basic auth
                browser.basic_auth(mlflow_env.get(mlflow_auth.USERNAME_VAR), mlflow_env.get(mlflow_auth.PASSWORD_VAR))
            else:
                browser.basic_auth(None, None)
            browser.shot(url, args.out / name, text, height=height)
    finally:
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
