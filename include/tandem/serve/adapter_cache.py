"""Which generator serves a request: base + the adapter an alias names, resolved through MLflow and cached.

- An alias (``champion``, ``challenger``, ``previous``) is re-resolved at most every
  ``settings.champion_check_seconds``; between checks the cached answer is used, so a request costs no
  MLflow call. When the alias has moved, the next request after the check loads the new adapter and
  swaps it in: no restart, requests already running finish on the generator they started with.
- A version number is immutable: it is resolved and loaded once.
- Loads run outside the cache's lock, one in flight per version: requests for a version that is loaded
  (the current champion, say) never wait behind the load of another version, and concurrent requests for
  a version being loaded share that one load.
- Memory bound: at most ``max_loaded + 1`` merged models are alive at once, counting the ones being loaded
  and the ones evicted but still finishing a request (``max_loaded`` defaults to 2: champion and previous
  stay warm while the alias flips). A load that would pass the bound first evicts idle models, least
  recently used first, and waits for a busy one to finish only when every model is in use.
- If MLflow is unreachable at a re-check, the last known champion keeps serving (the state says
  ``stale``); if it was never reachable, the error (ServiceUnavailable: HTTP 503) reaches the caller.
- With no champion yet, ``serve_base_without_champion`` decides: the base model serves, or a
  ServiceUnavailable says what to run.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Iterator

from tandem.config import Settings
from tandem.errors import ServiceUnavailable
from tandem.registry.versions import label
from tandem.serve.batcher import Batcher

log = logging.getLogger(__name__)

ALIASES = ("champion", "challenger", "previous")
BASE = "base"


@dataclasses.dataclass(eq=False)
class Loaded:
    """A generator ready to serve, and what it is."""

    key: str  # "base" or the version number
    generator: Any
    resolved: Any  # tandem.registry.ResolvedAdapter
    load_seconds: float
    loaded_at: float  # time.time()
    users: int = 0  # requests using it now

    @property
    def version(self) -> str | None:
        return None if self.key == BASE else self.key

    @property
    def label(self) -> str:
        return label(self.key) if self.key == BASE or self.key.isdigit() else self.key


class _Flight:
    """One load in progress; the requests that need the same version wait on it."""

    def __init__(self):
        self.done = threading.Event()
        self.error: BaseException | None = None


def default_loader(settings: Settings, resolved) -> Any:
    """Base model + the resolved adapter, through the behavior cadence's Generator (one code path)."""
    from tandem.behavior.generate import Generator
    from tandem.model_store import ensure_base_model

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    adapter = str(resolved.path) if getattr(resolved, "path", None) else None
    return Generator(ensure_base_model(settings), adapter, packed=settings.serve_packed_weights)


def default_resolver(settings: Settings, ref: str, download: bool):
    from tandem import registry

    return registry.resolve(settings, ref, download=download)


class AdapterCache:
    """Thread-safe cache of generators keyed by adapter version (see the module docstring)."""

    def __init__(self, settings: Settings, *, check_seconds: float | None = None,
                 loader: Callable[[Settings, Any], Any] = default_loader,
                 resolver: Callable[[Settings, str, bool], Any] = default_resolver,
                 clock: Callable[[], float] = time.monotonic, max_loaded: int = 2):
        self.settings = settings
        self.check_seconds = settings.champion_check_seconds if check_seconds is None else check_seconds
        self._loader = loader
        self._resolver = resolver
        self._clock = clock
        self.max_loaded = max(1, max_loaded)
        self._cond = threading.Condition()  # guards the dicts below; never held across MLflow or a load
        self._loaded: "collections.OrderedDict[str, Loaded]" = collections.OrderedDict()
        self._flights: dict[str, _Flight] = {}
        self._retired: list[Loaded] = []  # evicted, still finishing a request
        self._known: dict[str, str] = {}  # explicit version refs already checked
        self._alias: dict[str, dict[str, Any]] = {}  # alias -> {"key", "checked", "checked_at_wall", "stale", "error"}
        self._alias_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self.swaps = 0  # how many times an alias moved to another version while serving
        self.last_load_seconds: float | None = None
        self.peak_alive = 0  # the most merged models alive at once (loaded + loading + retired)
        # the process's generation queue: concurrent questions to one version decode in one batch
        self.batcher = Batcher(window_ms=settings.serve_batch_window_ms, max_batch=settings.serve_batch_max,
                               max_queue=settings.serve_queue_max, prefix_cache_mb=settings.serve_prefix_cache_mb,
                               mix=settings.serve_mix_adapters)

    @property
    def max_alive(self) -> int:
        """The documented bound on merged models in memory at once."""
        return self.max_loaded + 1

    # --- public

    def get(self, ref: str) -> Loaded:
        """The loaded generator for ``ref`` ("champion", "base", an alias, or a version number)."""
        return self.load(self.key_for(ref))

    @contextlib.contextmanager
    def use(self, key: str) -> Iterator[Loaded]:
        """The generator of ``key`` (loading it if needed), kept alive for the duration of a request."""
        item = self._acquire(key)
        try:
            yield item
        finally:
            with self._cond:
                item.users -= 1
                if item.users == 0 and item in self._retired:
                    self._retired.remove(item)
                self._cond.notify_all()

    def key_for(self, ref: str) -> str:
        """Which version ``ref`` names now ("base" or a number), without loading anything.

        Unknown versions raise UserError; a missing champion or an unreachable MLflow ServiceUnavailable.
        """
        if ref == BASE:
            return BASE
        if ref in ALIASES:
            return self._alias_key(ref)
        with self._cond:
            known = self._known.get(ref)
        if known is None:
            resolved = self._resolver(self.settings, ref, False)
            known = BASE if resolved.version is None else str(resolved.version)
            with self._cond:
                self._known[ref] = known
        return known

    def load(self, key: str) -> Loaded:
        """The generator of version ``key`` (from ``key_for``), loading it if needed."""
        with self.use(key) as item:
            return item

    def is_loaded(self, key: str) -> bool:
        with self._cond:
            return key in self._loaded

    def refresh(self) -> None:
        """Forget when aliases were checked: the next request re-resolves them."""
        with self._cond:
            for entry in self._alias.values():
                entry["checked"] = None

    def state(self) -> dict[str, Any]:
        """What is loaded and what the aliases pointed at when last checked (for the status page)."""
        with self._cond:
            return {
                "check_seconds": self.check_seconds,
                "loaded": [{"adapter": item.label, "load_seconds": round(item.load_seconds, 3),
                            "loaded_at": _iso(item.loaded_at)} for item in self._loaded.values()],
                "loading": sorted(label(k) for k in self._flights),
                "aliases": {alias: {"adapter": None if e["key"] is None else label(e["key"]),
                                    "checked_at": _iso(e["checked_at_wall"]) if e["checked_at_wall"] else None,
                                    "stale": e["stale"], "error": e["error"]}
                            for alias, e in sorted(self._alias.items())},
                "swaps": self.swaps,
                "last_load_seconds": self.last_load_seconds,
                "max_alive": self.max_alive,
                "peak_alive": self.peak_alive,
            }

    # --- internals

    def _alias_key(self, alias: str) -> str:
        with self._cond:
            entry = self._alias.setdefault(alias, {"key": None, "checked": None, "checked_at_wall": None,
                                                   "stale": False, "error": None})
            now = self._clock()
            if entry["key"] is not None and entry["checked"] is not None and now - entry["checked"] < self.check_seconds:
                return entry["key"]
        with self._alias_locks[alias]:  # one MLflow check per alias at a time; the others then see its answer
            with self._cond:
                now = self._clock()
                if entry["key"] is not None and entry["checked"] is not None and now - entry["checked"] < self.check_seconds:
                    return entry["key"]
            try:
                resolved = self._resolver(self.settings, alias, False)
            except ServiceUnavailable as exc:
                with self._cond:
                    if entry["key"] is None:
                        raise
                    # MLflow is down: keep serving what we know, say so, and try again after the next interval.
                    log.warning("could not re-check the %s alias (%s); still serving %s", alias, exc.message,
                                entry["key"])
                    entry.update(checked=now, checked_at_wall=time.time(), stale=True, error=exc.message)
                    return entry["key"]
            key = self._key_of_alias(alias, resolved)
            with self._cond:
                if entry["key"] is not None and entry["key"] != key:
                    self.swaps += 1
                    log.info("%s alias moved: %s -> %s; loading it now (no restart)", alias, entry["key"], key)
                entry.update(key=key, checked=now, checked_at_wall=time.time(), stale=False, error=None)
                return key

    def _key_of_alias(self, alias: str, resolved) -> str:
        if resolved.version is not None:
            return str(resolved.version)
        if alias == "champion" and (getattr(resolved, "base_by_choice", False)
                                    or self.settings.serve_base_without_champion):
            return BASE  # the base model is the champion: chosen by a rollback or promotion, or allowed
        raise ServiceUnavailable(
            "no champion adapter is registered yet, so there is no live model to answer with",
            fix="train and promote one (trigger the lora_retrain DAG, or `tandem adapters promote VERSION`), "
                "ask with `--adapter base` (API: \"adapter\": \"base\"), "
                "or set TANDEM_SERVE_BASE_WITHOUT_CHAMPION=true to serve the base model meanwhile")

    def _alive(self) -> int:
        return len(self._loaded) + len(self._flights) + len(self._retired)

    def _acquire(self, key: str) -> Loaded:
        """Count a user of ``key``'s generator, loading it first (outside the lock, one load per version)."""
        while True:
            with self._cond:
                while True:
                    item = self._loaded.get(key)
                    if item is not None:
                        self._loaded.move_to_end(key)
                        item.users += 1
                        return item
                    flight, owner = self._flights.get(key), False
                    if flight is not None:
                        break
                    if self._make_room():
                        flight, owner = _Flight(), True
                        self._flights[key] = flight
                        self.peak_alive = max(self.peak_alive, self._alive())
                        break
                    self._cond.wait(timeout=1.0)  # every model is busy: wait for a request to finish
            if owner:
                return self._fly(key, flight)
            flight.done.wait()  # another request loads it: share that load
            if flight.error is not None:
                raise flight.error

    def _fly(self, key: str, flight: _Flight) -> Loaded:
        try:
            item = self._load_now(key)
        except BaseException as exc:
            flight.error = exc
            with self._cond:
                self._flights.pop(key, None)
                self._cond.notify_all()
            flight.done.set()
            raise
        with self._cond:
            self._flights.pop(key, None)
            item.users += 1
            self._loaded[key] = item
            self._trim(keep=key)
            self._cond.notify_all()
        flight.done.set()
        return item

    def _make_room(self) -> bool:
        """Unload idle models until one more fits under ``max_alive``; False when every model is busy."""
        while self._alive() + 1 > self.max_alive:
            idle = [k for k, v in self._loaded.items() if v.users == 0]  # least recently used first
            if not idle:
                return False
            pinned = {e["key"] for e in self._alias.values() if e["key"] is not None}
            victim = next((k for k in idle if k not in pinned), idle[0])
            log.info("unloading %s", self._loaded.pop(victim).label)
        return True

    def _trim(self, keep: str) -> None:
        """Keep at most ``max_loaded`` models ready; a busy one leaves the cache but lives until its requests end."""
        pinned = {e["key"] for e in self._alias.values() if e["key"] is not None} | {keep}
        while len(self._loaded) > self.max_loaded:
            order = [k for k in self._loaded if k != keep]
            victim = next((k for k in order if k not in pinned and self._loaded[k].users == 0),
                          next((k for k in order if k not in pinned), order[0]))
            item = self._loaded.pop(victim)
            if item.users:
                self._retired.append(item)
            log.info("unloading %s%s", item.label, f" once its {item.users} request(s) finish" if item.users else "")

    def _load_now(self, key: str) -> Loaded:
        resolved = self._resolver(self.settings, key, key != BASE)
        started = time.perf_counter()
        generator = self._loader(self.settings, resolved)
        seconds = time.perf_counter() - started
        self.last_load_seconds = round(seconds, 3)
        log.info("loaded %s in %.2fs", label(key), seconds)
        return Loaded(key=key, generator=generator, resolved=resolved, load_seconds=seconds, loaded_at=time.time())


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
