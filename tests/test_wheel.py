"""The built wheel is complete: templates and data inside, every runtime pin declared, and the status page
renders from the installed wheel (not from the checkout)."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _runtime_pins() -> list[str]:
    lines = (REPO / "requirements-runtime.txt").read_text().splitlines()
    return sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, text=True)
    (path,) = out.glob("tandem-*.whl")
    return path


def test_the_wheel_holds_templates_data_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "tandem/serve/templates/status.html" in names
    for data in ("behavior_spec.yaml", "eval_set.jsonl"):
        assert f"tandem/data/demo/{data}" in names, data
    modules = {str(p.relative_to(REPO / "include")) for p in (REPO / "include/tandem").rglob("*.py")}
    assert modules <= names, sorted(modules - names)


def test_the_wheel_declares_the_runtime_pins(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(meta_name))
    declared = sorted(req.replace(" ", "") for req in meta.get_all("Requires-Dist"))
    assert declared == sorted(pin.replace(" ", "") for pin in _runtime_pins())
    assert len(declared) >= 20
    # every top-level import of the package comes from a declared distribution or the standard library
    names = {pin.split("==")[0].split("[")[0].lower() for pin in _runtime_pins()}
    for needed in ("apache-airflow", "mlflow", "torch", "llama-index-core", "psycopg", "httpx", "wcmatch"):
        assert needed in names, needed


def test_the_status_page_renders_from_the_installed_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    code = (
        "import sys\n"
        # the checkout's editable install is a meta-path finder: drop it, so only the wheel's files count
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        f"sys.path.insert(0, {str(target)!r})\n"
        "import tandem.serve.page as page\n"
        f"assert page.__file__.startswith({str(target)!r}), page.__file__\n"
        "html = page.render({'generated_at': '2026-12-03T00:00:00Z', 'airflow': {}, 'serving': {},\n"
        "    'links': {'airflow': 'http://127.0.0.1:8080', 'mlflow': 'http://127.0.0.1:5000', 'mlflow_model': ''}})\n"
        "assert '<html' in html.lower(), html[:200]\n"
        "print('rendered', len(html))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("rendered")
