"""Which generator serves a request: base + the adapter an alias names, resolved through MLflow and cached.

- An alias (``champion``, ``challenger``, ``previous``) is re-resolved at most every
  ``settings.champion_check_seconds``; between checks the cached answer is used, so a request costs no
  MLflow call. When the alias has moved, the next request after the check loads the new adapter and
  swaps it in: no restart, requests already running finish on the generator they started with.
- A version number is immutable: it is resolved and loaded once.
- At most ``max_loaded`` generators stay in memory (least recently used go first; the ones aliases point
  at are kept).
- If MLflow is unreachable at a re-check, the last known champion keeps serving (the state says
  ``stale``); if it was never reachable, the error (ServiceUnavailable: HTTP 503) reaches the caller.
- With no champion yet, ``serve_base_without_champion`` decides: the base model serves, or a
  ServiceUnavailable says what to run.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from tandem.config import Settings
from tandem.errors import ServiceUnavailable

log = logging.getLogger(__name__)

ALIASES = ("champion", "challenger", "previous")
BASE = "base"


@dataclasses.dataclass
class Loaded:
    """A generator ready to serve, and what it is."""

    key: str  # "base" or the version number
    generator: Any
    resolved: Any  # tandem.adapters.registry.ResolvedAdapter
    load_seconds: float
    loaded_at: float  # time.time()

    @property
    def version(self) -> str | None:
        return None if self.key == BASE else self.key

    @property
    def label(self) -> str:
        return "base" if self.key == BASE else f"v{self.key}"


def default_loader(settings: Settings, resolved) -> Any:
    """Base model + the resolved adapter, through the behavior cadence's Generator (one code path)."""
    from tandem.behavior.generate import Generator
    from tandem.models import resolve_base_model

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    adapter = str(resolved.path) if getattr(resolved, "path", None) else None
    return Generator(resolve_base_model(settings.base_model), adapter)


def default_resolver(settings: Settings, ref: str, download: bool):
    from tandem.adapters import registry

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
        self._lock = threading.RLock()
        self._loaded: "collections.OrderedDict[str, Loaded]" = collections.OrderedDict()
        self._known: dict[str, str] = {}  # explicit version refs already checked
        self._alias: dict[str, dict[str, Any]] = {}  # alias -> {"key", "checked", "checked_at_wall", "stale", "error"}
        self.swaps = 0  # how many times an alias moved to another version while serving
        self.last_load_seconds: float | None = None

    # --- public

    def get(self, ref: str) -> Loaded:
        """The loaded generator for ``ref`` ("champion", "base", an alias, or a version number)."""
        with self._lock:
            return self.load(self.key_for(ref))

    def key_for(self, ref: str) -> str:
        """Which version ``ref`` names now ("base" or a number), without loading anything.

        Unknown versions raise UserError; a missing champion or an unreachable MLflow ServiceUnavailable.
        """
        with self._lock:
            if ref == BASE:
                return BASE
            if ref in ALIASES:
                return self._alias_key(ref)
            if ref not in self._known:
                resolved = self._resolver(self.settings, ref, False)
                self._known[ref] = BASE if resolved.version is None else str(resolved.version)
            return self._known[ref]

    def load(self, key: str) -> Loaded:
        """The generator of version ``key`` (from ``key_for``), loading it if needed."""
        with self._lock:
            return self._load(key, lambda: self._resolver(self.settings, key, key != BASE))

    def is_loaded(self, key: str) -> bool:
        with self._lock:
            return key in self._loaded

    def refresh(self) -> None:
        """Forget when aliases were checked: the next request re-resolves them."""
        with self._lock:
            for entry in self._alias.values():
                entry["checked"] = None

    def state(self) -> dict[str, Any]:
        """What is loaded and what the aliases pointed at when last checked (for the status page)."""
        with self._lock:
            return {
                "check_seconds": self.check_seconds,
                "loaded": [{"adapter": item.label, "load_seconds": round(item.load_seconds, 3),
                            "loaded_at": _iso(item.loaded_at)} for item in self._loaded.values()],
                "aliases": {alias: {"adapter": None if e["key"] is None else ("base" if e["key"] == BASE else f"v{e['key']}"),
                                    "checked_at": _iso(e["checked_at_wall"]) if e["checked_at_wall"] else None,
                                    "stale": e["stale"], "error": e["error"]}
                            for alias, e in sorted(self._alias.items())},
                "swaps": self.swaps,
                "last_load_seconds": self.last_load_seconds,
            }

    # --- internals

    def _alias_key(self, alias: str) -> str:
        entry = self._alias.setdefault(alias, {"key": None, "checked": None, "checked_at_wall": None,
                                               "stale": False, "error": None})
        now = self._clock()
        if entry["key"] is not None and entry["checked"] is not None and now - entry["checked"] < self.check_seconds:
            return entry["key"]
        try:
            resolved = self._resolver(self.settings, alias, False)
        except ServiceUnavailable as exc:
            if entry["key"] is None:
                raise
            # MLflow is down: keep serving what we know, say so, and try again after the next interval.
            log.warning("could not re-check the %s alias (%s); still serving %s", alias, exc.message, entry["key"])
            entry.update(checked=now, checked_at_wall=time.time(), stale=True, error=exc.message)
            return entry["key"]
        if resolved.version is None:
            if alias != "champion" or not self.settings.serve_base_without_champion:
                raise ServiceUnavailable(
                    "no champion adapter is registered yet, so there is no live model to answer with",
                    fix="train and promote one (trigger the lora_retrain DAG, or `tandem adapters promote VERSION`), "
                        "ask with `--adapter base` (API: \"adapter\": \"base\"), "
                        "or set TANDEM_SERVE_BASE_WITHOUT_CHAMPION=true to serve the base model meanwhile")
            key = BASE
        else:
            key = str(resolved.version)
        if entry["key"] is not None and entry["key"] != key:
            self.swaps += 1
            log.info("%s alias moved: %s -> %s; loading it now (no restart)", alias, entry["key"], key)
        entry.update(key=key, checked=now, checked_at_wall=time.time(), stale=False, error=None)
        return key

    def _load(self, key: str, resolve: Callable[[], Any]) -> Loaded:
        item = self._loaded.get(key)
        if item is not None:
            self._loaded.move_to_end(key)
            return item
        resolved = resolve()
        started = time.perf_counter()
        generator = self._loader(self.settings, resolved)
        seconds = time.perf_counter() - started
        item = Loaded(key=key, generator=generator, resolved=resolved, load_seconds=seconds, loaded_at=time.time())
        self._loaded[key] = item
        self.last_load_seconds = round(seconds, 3)
        log.info("loaded %s in %.2fs", item.label, seconds)
        self._evict(keep=key)
        return item

    def _evict(self, keep: str) -> None:
        """Drop least recently used generators beyond ``max_loaded``; alias targets go last, ``keep`` never."""
        pinned = {e["key"] for e in self._alias.values() if e["key"] is not None} | {keep}
        while len(self._loaded) > self.max_loaded:
            victim = next((k for k in self._loaded if k not in pinned), None)
            if victim is None:
                victim = next(k for k in self._loaded if k != keep)
            log.info("unloading %s", self._loaded[victim].label)
            del self._loaded[victim]


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
