"""The base model's model store against the real MLflow server: publish once, fetch on an empty worker, verify.

A small stand-in model folder (a config and a weights file) keeps the round trips fast: the store handles
any folder the same way, and the real 0.5 GB base model goes through it in the Celery tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tandem import model_store, models
from tandem.errors import JobFailed, UserError


def _model(folder: Path, weights: bytes = b"weights-v1" * 1000) -> str:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(weights)
    sha = models.weights_sha256(folder)
    (folder / models.MANIFEST).write_text(json.dumps({"weights_sha256": sha}))
    return sha


@pytest.fixture
def published(settings, tmp_path):
    local = tmp_path / "origin" / "TinyModel"
    sha = _model(local, weights=tmp_path.name.encode() * 500)  # one sha per test: its own version
    store = model_store.publish(settings.replace(base_model=str(local)))
    return store, sha


def _worker(settings, tmp_path: Path, store: dict, pin: str = "") -> object:
    home = tmp_path / "worker"
    return settings.replace(home=home, base_model=str(home / "models" / "TinyModel"), base_model_uri=store["uri"],
                            base_model_sha256=pin)


def test_publish_once_per_sha_under_a_stable_uri(settings, published, tmp_path):
    store, sha = published
    assert store["uri"] == "models:/tandem-base-model@current" and store["sha256"] == sha and store["new"]
    again = model_store.publish(settings.replace(base_model=str(tmp_path / "origin" / "TinyModel")))
    assert (again["new"], again["version"], again["sha256"]) == (False, store["version"], sha)


def test_an_empty_worker_fetches_and_verifies_the_base_model(settings, published, tmp_path):
    """`tandem models fetch` in a fresh process, as a new worker would (nothing set up by an earlier call)."""
    store, sha = published
    worker = _worker(settings, tmp_path, store, pin=sha)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    proc = subprocess.run([str(Path(sys.executable).parent / "tandem"), "models", "fetch", "--json"],
                          env={**env, **worker.as_env()}, capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = json.loads(proc.stdout)["path"]
    assert path == str(tmp_path / "worker" / "models" / "TinyModel")
    assert not list(tmp_path.glob("*.db"))  # nothing fell back to a local MLflow store
    assert models.weights_sha256(Path(path)) == sha == models.base_model_sha256(path)
    assert not [p for p in Path(path).parent.iterdir() if p.name.startswith(".TinyModel.") and p.is_dir()]
    assert model_store.check_same_base(worker, sha, "train") == path
    with pytest.raises(JobFailed, match="not the one the run started with"):
        model_store.check_same_base(worker, "f" * 64, "train")


def test_concurrent_fetches_on_one_host_never_collide(settings, published, tmp_path):
    store, sha = published
    worker = _worker(settings, tmp_path, store)
    start = threading.Barrier(4)

    def fetch(_):
        start.wait()
        return models.base_model_sha256(model_store.ensure_base_model(worker))

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(fetch, range(4))) == {sha}
    folder = Path(worker.base_model).parent
    assert sorted(p.name for p in folder.iterdir()) == [".TinyModel.lock", "TinyModel"]


def test_a_pin_that_differs_is_refused_and_nothing_is_kept(settings, published, tmp_path):
    store, _ = published
    worker = _worker(settings, tmp_path, store, pin="0" * 64)
    with pytest.raises(UserError, match="TANDEM_BASE_MODEL_SHA256 pins 000000000000") as err:
        model_store.ensure_base_model(worker)
    assert "update the pin" in err.value.fix
    assert not Path(worker.base_model).exists()


def test_a_cached_model_that_differs_from_the_pin_is_refused(settings, published, tmp_path):
    store, sha = published
    worker = _worker(settings, tmp_path, store)
    model_store.ensure_base_model(worker)
    manifest = Path(worker.base_model) / models.MANIFEST
    manifest.write_text(json.dumps({"weights_sha256": "e" * 64}))  # another model left in the cache
    with pytest.raises(UserError, match="refuses to run on another model") as err:
        model_store.ensure_base_model(worker.replace(base_model_sha256=sha))
    assert "delete" in err.value.fix


def test_a_corrupt_store_is_refused(settings, tmp_path):
    corrupt = tmp_path / "store" / "TinyModel"
    _model(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"flipped bits")  # the manifest no longer matches
    worker = settings.replace(home=tmp_path / "w", base_model=str(tmp_path / "w" / "models" / "TinyModel"),
                              base_model_uri=corrupt.as_uri(), base_model_sha256="")
    with pytest.raises(JobFailed, match="is corrupt"):
        model_store.ensure_base_model(worker)
    assert not Path(worker.base_model).exists()


def test_an_unreachable_store_names_the_uri(settings, tmp_path):
    worker = settings.replace(home=tmp_path / "w", base_model=str(tmp_path / "w" / "models" / "TinyModel"),
                              base_model_uri="models:/no-such-model@current")
    with pytest.raises(UserError, match="TANDEM_BASE_MODEL_URI=models:/no-such-model@current"):
        model_store.ensure_base_model(worker)
