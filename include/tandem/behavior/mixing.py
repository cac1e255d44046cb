"""One step for the rows of several adapter versions: the base model with their LoRA adapters unmerged.

A serve process answers with merged models, one per adapter version (the fastest decode step for one
version). While the champion flips, two versions have questions in flight, and their two batches took
turns: each decode step reads all the weights of its model, so two half-full batches cost nearly twice one
full one (decoding is bound by reading the weights). A ``Mixer`` holds the base model once more, as a peft
model with the adapters of the versions in flight attached unmerged, and its ``Decoder`` passes every row's
adapter in the step (peft's ``adapter_names``: the base weights are read once, each row adds its own LoRA
product). The batcher moves rows into it while several versions of one base model decode, and back to their
merged model when one is left (``tandem.serve.batcher``).

peft's own mixed forward loops over the adapters in every LoRA layer, in Python, and registers hooks on every
layer for every step: an 8-row mixed step cost about 1.5x a merged one. ``RowLora`` computes every row's LoRA
product at once instead (each layer: the rows' A and B matrices gathered from a stack of the attached adapters,
two batched matmuls), which brings a mixed step to about the cost of a merged one (measured: 8 rows at 735
tokens of context, 152 -> 133 ms median, the same tokens). Adapters it cannot fuse (DoRA and other peft
variants, a LoRA bias, LoRA on a layer that is not linear) keep peft's path.

A row's keys/values move with it: the merged and the unmerged model compute the same ones (up to float
rounding), so the answer stays the one its version gives alone (tested).

Loading the base model and attaching an adapter happen in the mixer's own thread, so decoding never waits
for them; the batcher mixes a version's rows only once its adapter is attached. At most ``max_adapters``
stay attached (least recently used out; a few MB each).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in adapter_names


class RowLora:
    """Each row's LoRA product in one mixed step, for all rows at once (see the module docstring).

    It takes over the ``forward`` of every LoRA layer of ``peft_model``: inside ``rows(names)`` a layer adds
    ``x @ A[row].T @ B[row].T`` (scaling folded into B, zeros for a row of the base model) to its base layer's
    output; outside it, the layer runs peft's own forward. The stacks are rebuilt after ``changed()`` (an
    adapter attached or detached); the caller holds the mixer's lock around both."""

    def __init__(self, peft_model):
        from peft.tuners.lora import Linear, LoraLayer

        self._layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
        self.all_linear = all(type(m) is Linear for m in self._layers)
        self._stacks: dict[int, tuple] = {}
        self._order: dict[str, int] = {}  # adapter name -> its place in the stacks (0: the base model)
        self._index = None
        for layer in self._layers:
            layer.forward = self._forward_of(layer, layer.forward)

    def fusable(self, names) -> bool:
        """Whether every adapter in ``names`` is plain LoRA on linear layers (what the stacks hold)."""
        if not self.all_linear:
            return False
        for layer in self._layers:
            for name in set(names) - {BASE}:
                if name in layer.lora_variant or (name in layer.lora_B and layer.lora_B[name].bias is not None):
                    return False
        return True

    def changed(self) -> None:
        self._stacks, self._order = {}, {}

    @contextlib.contextmanager
    def rows(self, names: list[str]):
        """Within: the LoRA layers give row ``i`` the adapter ``names[i]``."""
        import torch

        if any(name != BASE and name not in self._order for name in names):
            self._build(sorted({name for name in names if name != BASE} | set(self._order)))
        device = self._layers[0].base_layer.weight.device if self._layers else None
        self._index = torch.tensor([self._order.get(name, 0) for name in names], device=device)
        try:
            yield
        finally:
            self._index = None

    def _build(self, names: list[str]) -> None:
        """Per layer: A stacked [adapters + 1, rank, in], B·scaling stacked [adapters + 1, out, rank]."""
        self._order = {name: i + 1 for i, name in enumerate(names)}
        for layer in self._layers:
            weight = layer.base_layer.weight
            ranks = [layer.lora_A[n].weight.shape[0] for n in names if n in layer.lora_A] or [1]
            a = weight.new_zeros(len(names) + 1, max(ranks), layer.in_features)
            b = weight.new_zeros(len(names) + 1, layer.out_features, max(ranks))
            for i, name in enumerate(names, start=1):
                if name in layer.lora_A:
                    rank = layer.lora_A[name].weight.shape[0]
                    a[i, :rank] = layer.lora_A[name].weight
                    b[i, :, :rank] = layer.lora_B[name].weight * layer.scaling[name]
            self._stacks[id(layer)] = (a, b)

    def _forward_of(self, layer, peft_forward):
        import torch

        def forward(x, *args, **kwargs):
            if self._index is None:
                return peft_forward(x, *args, **kwargs)
            result = layer.base_layer(x, *args, **kwargs)
            a, b = self._stacks[id(layer)]
            low = torch.bmm(x, a.index_select(0, self._index).transpose(1, 2))  # [rows, tokens, rank]
            return result + torch.bmm(low, b.index_select(0, self._index).transpose(1, 2))

        return forward


def can_mix(generator) -> bool:
    """Whether rows of ``generator`` (a ``tandem.behavior.generate.Generator``) can decode in a mixed step:
    its adapter is a PEFT folder on disk, or it has none."""
    return isinstance(getattr(generator, "base_model", None), str) and hasattr(generator, "adapter_path")


class Mixer:
    """The base model ``base_model`` with the adapters of the versions in flight (see the module docstring)."""

    def __init__(self, base_model: str, *, max_adapters: int = 8, packed: bool = True):
        self.base_model = base_model
        self.packed = packed  # its base model's linear layers get packed weights (``Generator(packed=)``)
        self.max_adapters = max(2, int(max_adapters))
        self.lock = threading.Lock()  # a mixed step, or attaching/detaching an adapter
        self._meta = threading.Lock()  # the dicts below (the worker and the mixer's thread use them)
        self._names: "collections.OrderedDict[str, str]" = collections.OrderedDict()  # adapter path -> name
        self._busy: set[str] = set()  # adapter names with rows in the mixed batch (never detached)
        self._pending: dict[str, Future] = {}
        self._count = 0
        self._generator = None
        self._decoder = None
        self.lora: RowLora | None = None
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

            # its model becomes the peft model holding the adapters
            generator = Generator(self.base_model, packed=self.packed)
            generator.model = PeftModel.from_pretrained(generator.model, path, adapter_name=name).eval()
            self._generator = generator
            self.lora = RowLora(generator.model)
            self._decoder = Decoder(generator, mixed=True, lock=self.lock, lora=self.lora)
            with self._meta:
                self._names[path] = name
        else:
            with self.lock:
                self._generator.model.load_adapter(path, adapter_name=name)
                self._generator.model.eval()
                self.lora.changed()
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
                self.lora.changed()
                del self._names[path]

    def state(self) -> dict[str, Any]:
        with self._meta:
            fused = self._decoder.fused_steps if self._decoder is not None else 0
            return {"attached": len(self._names), "failed": self.failed, "fused_steps": fused}
