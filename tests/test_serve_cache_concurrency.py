"""The adapter cache under concurrency: loads outside the lock, one in flight per version, a memory bound.

The loader here is a stand-in that sleeps and counts live generators: it controls how long a load takes, which
is what these properties are about. Loading real adapters through the same cache is tested in
test_serve_adapters.py, and threaded answers during real alias swaps in test_serve_alias_swap.py.
"""

from __future__ import annotations

import threading
import time
import weakref
from types import SimpleNamespace

from tandem.config import Settings
from tandem.serve.adapter_cache import AdapterCache


class FakeGenerator:
    def __init__(self, version):
        self.version = version


class SlowLoader:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.calls: list[str] = []
        self.alive = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, _settings, resolved):
        with self._lock:
            self.calls.append(resolved.version)
            self.alive += 1
            self.peak = max(self.peak, self.alive)
        time.sleep(self.seconds)
        generator = FakeGenerator(resolved.version)
        weakref.finalize(generator, self._gone)
        return generator

    def _gone(self):
        with self._lock:
            self.alive -= 1


def resolver(champion: list[str]):
    def resolve(_settings, ref, _download):
        version = champion[0] if ref == "champion" else ref
        return SimpleNamespace(version=version, base_by_choice=False)
    return resolve


def test_the_champion_is_never_blocked_by_the_load_of_another_version(tmp_path):
    loader = SlowLoader(0.0)
    cache = AdapterCache(Settings.load(home=tmp_path), check_seconds=60, loader=loader, resolver=resolver(["1"]))
    assert cache.get("champion").version == "1"
    loader.seconds = 3.0
    other = threading.Thread(target=cache.get, args=("7",))
    other.start()
    time.sleep(0.3)  # the load of v7 is in flight
    started = time.monotonic()
    with cache.use(cache.key_for("champion")) as item:
        waited = time.monotonic() - started
    assert item.label == "v1" and waited < 0.5, waited
    other.join()
    assert cache.is_loaded("7")


def test_concurrent_requests_share_one_load(tmp_path):
    loader = SlowLoader(1.0)
    cache = AdapterCache(Settings.load(home=tmp_path), check_seconds=60, loader=loader, resolver=resolver(["1"]))
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("5").label)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == ["v5"] * 6 and loader.calls == ["5"]


def test_merged_models_in_memory_stay_within_the_bound(tmp_path):
    """Requests for five versions at once, each holding its model a while: never more than max_loaded + 1 alive."""
    loader = SlowLoader(0.2)
    cache = AdapterCache(Settings.load(home=tmp_path), check_seconds=60, loader=loader, resolver=resolver(["1"]),
                         max_loaded=2)
    errors: list[BaseException] = []

    def request(version: str) -> None:
        try:
            for _ in range(3):
                with cache.use(version) as item:
                    assert item.version == version
                    time.sleep(0.1)  # generating
                del item  # a request keeps no reference once it is answered
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(str(v),)) for v in (1, 2, 3, 4, 5, 1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    import gc

    gc.collect()
    assert loader.peak <= cache.max_alive == 3, loader.peak
    assert cache.peak_alive <= 3
    assert len(cache.state()["loaded"]) <= 2 and loader.alive <= 2
