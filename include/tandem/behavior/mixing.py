"""One step for the rows of several adapter versions: the base model with their LoRA adapters unmerged.

A serve process answers with merged models, one per adapter version (the fastest decode step for one
version). While the champion flips, two versions have questions in flight, and their two batches took
turns: each decode step reads all the weights of its model, so two half-full batches cost nearly twice one
full one (decoding is bound by reading the weights). A ``Mixer`` holds the base model once more, as a peft
model with the adapters of the versions in flight attached unmerged, and its ``Decoder`` passes every row's
adapter in the step (peft's ``adapter_names``: the base weights are read once, each row adds its own LoRA
product). The batcher moves rows into it while several versions of one base model decode, and back to their
merged model when one is left (``tandem.serve.batcher``).

A row's keys/values move with it: the merged and the unmerged model compute the same ones (up to float
rounding), so the answer stays the one its version gives alone (tested).

Loading the base model and attaching an adapter happen in the mixer's own thread, so decoding never waits
for them; the batcher mixes a version's rows only once its adapter is attached. At most ``max_adapters``
stay attached (least recently used out; a few MB each).
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in adapter_names


def can_mix(generator) -> bool:
    """Whether rows of ``generator`` (a ``tandem.behavior.generate.Generator``) can decode in a mixed step:
    its adapter is a PEFT folder on disk, or it has none."""
    return isinstance(getattr(generator, "base_model", None), str) and hasattr(generator, "adapter_path")


class Mixer:
    """The base model ``base_model`` with the adapters of the versions in flight (see the module docstring)."""

    def __init__(self, base_model: str, *, max_adapters: int = 8):
        self.base_model = base_model
        self.max_adapters = max(2, int(max_adapters))
        self.lock = threading.Lock()  # a mixed step, or attaching/detaching an adapter
        self._meta = threading.Lock()  # the dicts below (the worker and the mixer's thread use them)
        self._names: "collections.OrderedDict[str, str]" = collections.OrderedDict()  # adapter path -> name
        self._busy: set[str] = set()  # adapter names with rows in the mixed batch (never detached)
        self._pending: dict[str, Future] = {}
        self._count = 0
        self._generator = None
        self._decoder = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-mixer")
        self.failed: str | None = None  # why mixing is off for this base model, after an error

    def name(self, generator) -> str | None:
        """The adapter name of ``generator``'s rows in the mixed step, or None while it is not attached yet
        (attaching starts then, in the mixer's thread)."""
        if self.failed is not None:
            return None
        if generator.adapter_path is None:
            return BASE if self._decoder is not None else None
        path = str(generator.adapter_path)
        with self._meta:
            name = self._names.get(path)
            if name is not None:
                self._names.move_to_end(path)
                return name if self._decoder is not None else None
            if path not in self._pending:
                self._pending[path] = self._pool.submit(self._attach, path)
        return None

    def decoder(self):
        """The mixed ``Decoder`` (once the first adapter is attached)."""
        return self._decoder

    def hold(self, names: set[str]) -> None:
        """The adapter names that have rows in the mixed batch now: they stay attached."""
        self._busy = set(names)

    # --- the mixer's thread

    def _attach(self, path: str) -> None:
        try:
            self._attach_now(path)
        except BaseException as exc:  # noqa: BLE001 - mixing stops; each version keeps decoding on its own
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("mixed batches are off for %s: attaching the adapter %s failed (%s); each version "
                        "decodes in its own batch", self.base_model, path, self.failed)
        finally:
            with self._meta:
                self._pending.pop(path, None)

    def _attach_now(self, path: str) -> None:
        self._count += 1
        name = f"a{self._count}"  # peft names become module names: no dots, whatever the path
        if self._generator is None:
            from peft import PeftModel

            from tandem.behavior.decoding import Decoder
            from tandem.behavior.generate import Generator

            generator = Generator(self.base_model)  # its model becomes the peft model holding the adapters
            generator.model = PeftModel.from_pretrained(generator.model, path, adapter_name=name).eval()
            self._generator = generator
            self._decoder = Decoder(generator, mixed=True, lock=self.lock)
            with self._meta:
                self._names[path] = name
        else:
            with self.lock:
                self._generator.model.load_adapter(path, adapter_name=name)
                self._generator.model.eval()
                with self._meta:
                    self._names[path] = name
                    self._detach_old()
        log.info("attached adapter %s as %s for mixed batches of %s", path, name, self.base_model)

    def _detach_old(self) -> None:
        """Past ``max_adapters``, detach the least recently used ones without rows (the caller holds both
        locks)."""
        for path in list(self._names):
            if len(self._names) <= self.max_adapters:
                return
            name = self._names[path]
            if name not in self._busy:
                self._generator.model.delete_adapter(name)
                del self._names[path]

    def state(self) -> dict[str, Any]:
        with self._meta:
            return {"attached": len(self._names), "failed": self.failed}
