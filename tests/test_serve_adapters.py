"""The adapter cache: the champion alias is re-checked at most every N seconds, and a moved alias is picked
up without a restart (real peft adapters registered in the real MLflow server, real Generator loads)."""

from __future__ import annotations

import pytest

from adapters_fixtures import make_adapter, register_adapter
from serve_fixtures import OFF_TOPIC, clean_registry
from tandem.errors import UserError

pytestmark = pytest.mark.slow


def _logits(loaded, text: str = "The Pro plan costs"):
    import torch

    gen = loaded.generator
    enc = gen.tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        return gen.model(**enc).logits[0, -1]


def test_champion_hot_swap_without_restart(serve_settings, serve_index, base_model_path, tmp_path):
    import torch

    from tandem import registry
    from tandem.serve.adapter_cache import AdapterCache
    from tandem.serve.answer import answer

    clean_registry(serve_settings)
    v1 = register_adapter(serve_settings, make_adapter(base_model_path, tmp_path / "a1", seed=11))
    v2 = register_adapter(serve_settings, make_adapter(base_model_path, tmp_path / "a2", seed=12))
    registry.promote(serve_settings, v1, reason="serve test")

    now = [0.0]
    cache = AdapterCache(serve_settings, check_seconds=30, clock=lambda: now[0])
    first = cache.get("champion")
    assert first.version == v1 and first.resolved.path is not None
    assert cache.state()["aliases"]["champion"]["adapter"] == f"v{v1}"

    registry.promote(serve_settings, v2, reason="serve test: the alias moves while serving")
    now[0] = 29.0  # inside the interval: the cached champion serves, MLflow is not asked
    assert cache.get("champion") is first and cache.swaps == 0
    now[0] = 30.5  # the interval is over: the alias is re-checked and the new adapter loaded, no restart
    second = cache.get("champion")
    assert second.version == v2 and second is not first and cache.swaps == 1
    assert not torch.allclose(_logits(first), _logits(second))  # really other weights
    # the answer path reports the swapped adapter (the question is refused: nothing is generated)
    assert answer(serve_settings, OFF_TOPIC, cache=cache).adapter == f"v{v2}"

    # a rollback moves the alias back; the next check follows it (v1 is still in memory: no reload)
    registry.rollback(serve_settings, reason="serve test")
    now[0] = 61.0
    back = cache.get("champion")
    assert back is first and cache.swaps == 2
    assert [item["adapter"] for item in cache.state()["loaded"]] == [f"v{v2}", f"v{v1}"]

    # explicit versions are immutable: resolved once; unknown versions are the user's error
    assert cache.get(v2) is second
    with pytest.raises(UserError, match="999"):
        cache.get("999")


def test_mlflow_down_at_a_recheck_keeps_serving_the_last_champion(serve_settings, serve_index, base_model_path,
                                                                  tmp_path):
    from tandem import registry
    from tandem.errors import ServiceUnavailable
    from tandem.serve.adapter_cache import AdapterCache

    clean_registry(serve_settings)
    v1 = register_adapter(serve_settings, make_adapter(base_model_path, tmp_path / "b1", seed=21))
    registry.promote(serve_settings, v1, reason="serve test")
    now = [0.0]
    cache = AdapterCache(serve_settings, check_seconds=5, clock=lambda: now[0])
    live = cache.get("champion")
    # MLflow goes away (a port where nothing listens): the champion keeps serving, marked stale
    cache.settings = serve_settings.replace(mlflow_uri="http://127.0.0.1:9")
    now[0] = 10.0
    assert cache.get("champion") is live
    state = cache.state()["aliases"]["champion"]
    assert state["stale"] and "not reachable" in state["error"]
    # a cache that never reached MLflow has nothing to serve: 503
    cold = AdapterCache(serve_settings.replace(mlflow_uri="http://127.0.0.1:9"))
    with pytest.raises(ServiceUnavailable):
        cold.get("champion")
    # when MLflow is back, the next check clears the stale flag
    cache.settings = serve_settings
    now[0] = 20.0
    assert cache.get("champion") is live and not cache.state()["aliases"]["champion"]["stale"]


def test_serve_packed_weights_false_loads_plain_weights_only(base_model_path, tmp_path, monkeypatch):
    # TANDEM_SERVE_PACKED_WEIGHTS=false reaches the model serve loads: no copies, several rows by the plain weight
    import torch

    from tandem.config import Settings
    from tandem.serve.adapter_cache import default_loader

    monkeypatch.setenv("TANDEM_SERVE_PACKED_WEIGHTS", "false")
    settings = Settings.load(home=tmp_path, base_model=str(base_model_path))
    assert settings.serve_packed_weights is False
    plain = default_loader(settings, None)
    assert plain.packed_layers == 0
    layer = plain.model.model.layers[0].mlp.down_proj
    x = torch.randn(2, 5, 1536)
    with torch.inference_mode():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))
    monkeypatch.setenv("TANDEM_SERVE_PACKED_WEIGHTS", "true")
    assert default_loader(Settings.load(home=tmp_path, base_model=str(base_model_path)), None).packed_layers > 100
