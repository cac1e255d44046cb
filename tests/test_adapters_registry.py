"""The adapter registry against the real MLflow server: resolve, download, list, promote, rollback."""

from __future__ import annotations

import pytest

from adapters_fixtures import adapter_dirs, register_adapter  # noqa: F401 - fixture
from tandem.errors import UserError


@pytest.fixture
def clean_registry(settings):
    """Start from an empty ``tandem-adapter`` registered model (tests share one MLflow server)."""
    from mlflow.exceptions import MlflowException

    from tandem import registry

    cl = registry.client(settings)
    try:
        cl.delete_registered_model(registry.MODEL)
    except MlflowException:
        pass
    return settings


def test_resolve_base_and_missing_champion(clean_registry):
    from tandem import registry

    settings = clean_registry
    for ref in ("base", "champion"):
        got = registry.resolve(settings, ref)
        assert got.version is None and got.path is None and got.is_base
        assert len(got.base_sha256) == 64
    assert registry.list_versions(settings) == []
    with pytest.raises(UserError) as err:
        registry.resolve(settings, "7")
    assert "7" in str(err.value) and "tandem adapters list" in str(err.value)
    with pytest.raises(UserError):
        registry.resolve(settings, "latest-and-greatest")
    with pytest.raises(UserError) as err:
        registry.rollback(settings)
    assert "previous" in str(err.value)


def test_register_resolve_promote_rollback(clean_registry, adapter_dirs):
    from tandem import registry
    from tandem.models import weights_sha256

    settings = clean_registry
    v1 = register_adapter(settings, adapter_dirs[0], {"schema_valid_rate": 0.5})
    v2 = register_adapter(settings, adapter_dirs[1], {"schema_valid_rate": 0.9})
    v3 = register_adapter(settings, adapter_dirs[2])
    assert [int(v) for v in (v1, v2, v3)] == sorted(int(v) for v in (v1, v2, v3))

    got = registry.resolve(settings, v2)
    assert got.version == v2 and got.path == settings.home / "adapters" / v2
    assert weights_sha256(got.path) == weights_sha256(adapter_dirs[1])
    assert (got.path / "adapter_config.json").exists() and (got.path / "tandem-adapter.json").exists()
    assert got.base_sha256 == registry.base_ref(settings)[1]
    # a cached copy with tampered weights is replaced by a fresh download
    weights = next(got.path.glob("*.safetensors"))
    weights.write_bytes(b"corrupt")
    again = registry.resolve(settings, v2)
    assert weights_sha256(again.path) == weights_sha256(adapter_dirs[1])

    # a fresh process with no MLflow URI set globally (an Airflow task) downloads from the configured server,
    # not from MLflow's default local registry (which once answered "Registered Model ... not found")
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    fresh = settings.home / "fresh-download"
    fresh.mkdir(exist_ok=True)
    code = ("import json; from tandem.config import Settings; from tandem import registry; "
            f"r = registry.resolve(Settings.load(), {v3!r}); print(json.dumps([r.version, str(r.path)]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_", "MLFLOW_"))}
    proc = subprocess.run([sys.executable, "-c", code], env={**env, **settings.as_env()}, cwd=fresh,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version, path = json.loads(proc.stdout.strip().splitlines()[-1])
    assert version == v3 and weights_sha256(Path(path)) == weights_sha256(adapter_dirs[2])
    assert not (fresh / "mlflow.db").exists() and not (fresh / "mlruns").exists()

    assert registry.promote(settings, v1, reason="first")["changed"]
    assert registry.resolve(settings, "champion", download=False).version == v1
    out = registry.promote(settings, v2, reason="better")
    assert out == {"champion": v2, "previous": v1, "changed": True}
    assert registry.promote(settings, v2, reason="again")["changed"] is False
    registry.promote(settings, v3, reason="manual")
    rows = {r["version"]: r for r in registry.list_versions(settings)}
    assert rows[v3]["aliases"] == ["champion"] and rows[v2]["aliases"] == ["previous"]
    assert rows[v2]["metrics"] == {"schema_valid_rate": 0.9} and rows[v1]["status"] == "ok"

    # rollback walks back the history one step at a time, down to the base model
    assert registry.rollback(settings)["champion"] == v2
    assert registry.resolve(settings, "previous", download=False).version == v1
    assert registry.rollback(settings)["champion"] == v1
    with pytest.raises(UserError):
        registry.resolve(settings, "previous", download=False)
    assert registry.rollback(settings)["champion"] is None
    assert registry.resolve(settings, "champion").is_base
    with pytest.raises(UserError):
        registry.rollback(settings)
    tags = registry.client(settings).get_model_version(registry.MODEL, v3).tags
    assert "tandem.rolled_back_at" in tags


def test_failed_version_is_never_served(clean_registry, adapter_dirs):
    from tandem import registry

    settings = clean_registry
    v = register_adapter(settings, adapter_dirs[0])
    registry.mark_failed(settings, v, "injected")
    with pytest.raises(UserError) as err:
        registry.resolve(settings, v)
    assert "failed" in str(err.value)
    with pytest.raises(UserError):
        registry.promote(settings, v, reason="should refuse")
    assert registry.resolve(settings, "champion").is_base


def test_adapter_on_another_base_is_refused(clean_registry, adapter_dirs):
    from tandem import tracking
    from tandem import registry

    settings = clean_registry
    v = register_adapter(settings, adapter_dirs[0])
    registry.set_version_tags(settings, v, {tracking.tag("base_model_sha256"): "0" * 64})
    with pytest.raises(UserError) as err:
        registry.resolve(settings, v)
    assert "TANDEM_BASE_MODEL" in str(err.value)


def test_concurrent_downloads_of_one_version_never_collide(clean_registry, adapter_dirs):
    """Eight threads fetch the same version into an empty cache: every one gets a complete, verified folder."""
    import shutil
    import threading

    from tandem import registry
    from tandem.models import weights_sha256

    settings = clean_registry
    v = register_adapter(settings, adapter_dirs[0])
    shutil.rmtree(settings.home / "adapters" / v, ignore_errors=True)
    paths, errors = [], []

    def fetch() -> None:
        try:
            paths.append(registry.resolve(settings, v).path)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert set(paths) == {settings.home / "adapters" / v}
    assert weights_sha256(paths[0]) == weights_sha256(adapter_dirs[0])
    leftovers = [p.name for p in (settings.home / "adapters").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no partial or stale folders left behind
