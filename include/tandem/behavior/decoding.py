"""Continuous batched greedy decoding for one loaded model: each prompt is prefilled alone, then decodes in a
batch with every other sequence of the same model, joining and leaving it between steps.

Prefill is compute-bound: a batch of left-padded prompts costs at least as much per prompt as each prompt
alone (``make bench-batching``), so a prompt is prefilled on its own, right when it arrives. Decoding one
token is memory-bound, so the rows of a ``Decoder`` take their next token in one forward pass. A sequence
joins the running batch as soon as its prefill is done and leaves it at its end-of-sequence or budget, so
nobody waits for the longest answer of a batch, and a question that arrives mid-answer does not wait for the
batch to end.

The rows' key/value caches sit right-aligned in one tensor per layer, with left padding masked out, the
layout transformers' batched ``generate`` uses; a joining row is padded to the batch's length (or the batch
to the row's). The greedy answer is the one ``Generator.generate`` gives for the prompt alone (checked in
tests), up to float rounding between batch shapes.

The ``PrefixCache`` keeps the key/values of recent prompts (least recently used first out, bounded in
megabytes): a new prompt reuses the longest stored prefix it shares (the spec's system prompt for every
question; the whole prompt for a repeated question over the same index release) and prefills only the rest.
A prefix's keys and values depend only on its own tokens (causal attention), so reuse gives the same answer.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
from typing import Any, Callable, Sequence as Seq

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class Sequence:
    """One prompt's generation: its tokens, the new tokens so far, and where it stands."""

    prompt_ids: list[int]
    budget: int
    on_token: Callable[[str], None] | None = None
    new_ids: list[int] = dataclasses.field(default_factory=list)
    kv: list | None = None  # the prompt's key/values per layer, until the sequence joins a batch
    cached: int = 0  # its tokens in the key/value cache
    reused: int = 0  # prompt tokens taken from the prefix cache
    done: bool = False
    text: str | None = None
    largest_batch: int = 0  # the most rows it decoded beside (itself included)
    streamer: Any = None
    adapter: str | None = None  # its adapter's name in a mixed batch (``tandem.behavior.mixing``)


class PrefixCache:
    """The key/values of recent prompts of one model, bounded by ``max_bytes`` (see the module docstring)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._entries: "collections.OrderedDict[tuple[int, ...], list]" = collections.OrderedDict()
        self._bytes: dict[tuple[int, ...], int] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.reused_tokens = 0
        self.prompt_tokens = 0

    def longest(self, ids: list[int]) -> tuple[int, list | None]:
        """(n, per-layer key/values of the first n tokens) of the longest stored prefix of ``ids``, at most
        ``len(ids) - 1`` tokens (the last one is always run, for its logits); (0, None) when none."""
        best, best_kv = 0, None
        with self._lock:
            self.prompt_tokens += len(ids)
            for key, kv in self._entries.items():
                n = _common_prefix(key, ids, len(ids) - 1)
                if n > best:
                    best, best_kv, best_key = n, kv, key
            if best_kv is None:
                return 0, None
            self._entries.move_to_end(best_key)
            self.hits += 1
            self.reused_tokens += best
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in best_kv]

    def put(self, ids: list[int], kv: list) -> None:
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if not self.max_bytes or size > self.max_bytes:
            return
        key = tuple(ids)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            self._entries[key], self._bytes[key] = kv, size
            self._evict()

    def resize(self, max_bytes: int) -> None:
        """A new bound; the least recently used prompts leave until the cache fits it."""
        with self._lock:
            self.max_bytes = max(0, int(max_bytes))
            self._evict()

    def _evict(self) -> None:
        while self._entries and sum(self._bytes.values()) > self.max_bytes:
            old, _ = self._entries.popitem(last=False)
            del self._bytes[old]

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"entries": len(self._entries), "mb": round(sum(self._bytes.values()) / 2**20, 1),
                    "hits": self.hits, "reused_tokens": self.reused_tokens, "prompt_tokens": self.prompt_tokens}


def _common_prefix(a: Seq[int], b: Seq[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Decoder:
    """The running batch of one model (see the module docstring). One thread drives ``join``, ``step``,
    ``release`` and ``fail``; ``begin`` may run in another thread at the same time (a prefill beside the
    batch's steps).

    A ``mixed`` decoder runs a peft model holding several LoRA adapters unmerged: each step passes every
    row's ``adapter`` (``adapter_names``), so rows of different versions decode in one step
    (``tandem.behavior.mixing``); ``lock`` is held around each step, so adapters can be attached beside it.
    """

    def __init__(self, generator, prefix_cache_bytes: int = 0, *, mixed: bool = False, lock=None, lora=None):
        self.generator = generator
        self.lora = lora  # a ``tandem.behavior.mixing.RowLora`` computing a mixed step's LoRA products at once
        self.fused_steps = 0
        self.prefix = PrefixCache(prefix_cache_bytes)
        self.mixed = mixed
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self.rows: list[Sequence] = []
        self._cache = None  # a DynamicCache whose layers are Columns, batch first, right-aligned
        self._mask = None  # [rows, length] 1 where a row has a token
        self._tokenizer_lock = threading.Lock()  # begin (the prefill thread) and step may use it at once
        self.steps = 0

    # --- one prompt

    def begin(self, messages: Seq[dict], *, max_new_tokens: int,
              on_token: Callable[[str], None] | None = None) -> Sequence:
        """Prefill ``messages`` alone (reusing a stored prefix) and choose its first token; the sequence is
        ``done`` already when that token ends it, otherwise it goes to ``join``."""
        import torch
        from transformers import DynamicCache

        gen = self.generator
        with self._tokenizer_lock:
            ids = gen.tokenizer(gen.render(messages), add_special_tokens=False)["input_ids"]
        seq = Sequence(list(ids), int(max_new_tokens), on_token)
        if on_token is not None:
            seq.streamer = _streamer(gen.tokenizer, on_token)
        reused, prefix_kv = self.prefix.longest(seq.prompt_ids)
        cache = DynamicCache(config=gen.model.config)
        if prefix_kv is not None:
            for layer, (k, v) in enumerate(prefix_kv):
                cache.update(k, v, layer)
        rest = torch.tensor([seq.prompt_ids[reused:]], device=gen.device)
        with torch.inference_mode():
            out = gen.model(input_ids=rest, past_key_values=cache, use_cache=True, logits_to_keep=1,
                            cache_position=torch.arange(reused, len(seq.prompt_ids), device=gen.device))
        seq.kv = [(layer.keys, layer.values) for layer in cache.layers]
        seq.cached, seq.reused = len(seq.prompt_ids), reused
        self.prefix.put(seq.prompt_ids, seq.kv)
        self._take(seq, int(out.logits[0, -1].argmax()))  # logits of the last position only, as generate keeps
        return seq

    def join(self, seq: Sequence) -> None:
        """Add a prefilled sequence to the running batch (its keys/values are copied in once)."""
        import torch

        kv, seq.kv = seq.kv, None
        device = self.generator.device
        if not self.rows:
            self._cache = self._new_cache([(k, v, 0) for k, v in kv], rows=1, length=seq.cached)
            self._mask = torch.ones(1, seq.cached, dtype=torch.long, device=device)
        else:
            length = max(self._mask.shape[1], seq.cached)
            grow, pad = length - self._mask.shape[1], length - seq.cached
            parts = [(layer.keys, layer.values, grow) for layer in self._cache.layers]
            self._cache = self._new_cache(parts, rows=len(self.rows) + 1, length=length,
                                          extra=[(k, v, pad) for k, v in kv])
            row = torch.zeros(1, length, dtype=torch.long, device=device)
            row[0, pad:] = 1
            self._mask = torch.cat([torch.nn.functional.pad(self._mask, (grow, 0)), row])
        self.rows.append(seq)

    # --- the batch

    def step(self) -> list[Sequence]:
        """One new token for every row; returns the rows that ended (they leave the batch)."""
        import torch

        if not self.rows:
            return []
        gen = self.generator
        size = len(self.rows)
        device = self._mask.device
        self._mask = torch.cat([self._mask, torch.ones(size, 1, dtype=torch.long, device=device)], dim=1)
        inputs = torch.tensor([[s.new_ids[-1]] for s in self.rows], device=device)
        positions = torch.tensor([[s.cached] for s in self.rows], device=device)
        with self._lock, torch.inference_mode(), self._adapters() as extra:
            out = gen.model(input_ids=inputs, attention_mask=self._mask, position_ids=positions,
                            past_key_values=self._cache, use_cache=True, **extra)
        self.steps += 1
        chosen = out.logits[:, -1].argmax(-1).tolist()
        for seq, token in zip(self.rows, chosen):
            seq.cached += 1
            seq.largest_batch = max(seq.largest_batch, size)
            self._take(seq, token)
        ended = [s for s in self.rows if s.done]
        if ended:
            self._keep([i for i, s in enumerate(self.rows) if not s.done])
        return ended

    @contextlib.contextmanager
    def _adapters(self):
        """The extra arguments of a step's forward: none, or each row's adapter in a mixed step (computed at
        once by ``lora`` where it can, else peft's ``adapter_names``)."""
        if not self.mixed:
            yield {}
            return
        names = [s.adapter for s in self.rows]
        if self.lora is None or not self.lora.fusable(names):
            yield {"adapter_names": names}
            return
        with self.lora.rows(names):
            self.fused_steps += 1
            yield {}

    def release(self, seqs: Seq[Sequence]) -> None:
        """Take ``seqs`` out of the running batch, each with its own keys/values (``kv``), to ``join``
        another decoder: the batch of a model that gives the same key/values (the same weights, merged
        or not)."""
        leaving = {id(s) for s in seqs}
        for i, seq in enumerate(self.rows):
            if id(seq) in leaving:
                pad = self._mask.shape[1] - seq.cached
                seq.kv = [(layer.keys[i:i + 1, :, pad:].clone(), layer.values[i:i + 1, :, pad:].clone())
                          for layer in self._cache.layers]
        self._keep([i for i, s in enumerate(self.rows) if id(s) not in leaving])

    def fail(self) -> list[Sequence]:
        """Empty the batch after an error; returns the rows that were in it."""
        rows, self.rows, self._cache, self._mask = self.rows, [], None, None
        return rows

    def _take(self, seq: Sequence, token: int) -> None:
        """Record ``token`` as the sequence's next one; it ends at end-of-sequence or at its budget."""
        seq.new_ids.append(token)
        with self._tokenizer_lock:
            if seq.streamer is not None:
                seq.streamer.put(_tensor([token]))
            if token == self.generator.tokenizer.eos_token_id or len(seq.new_ids) >= seq.budget:
                seq.done = True
                seq.largest_batch = max(seq.largest_batch, 1)
                seq.text = self.generator._decode(seq.new_ids)[0]
                if seq.streamer is not None:
                    seq.streamer.end()

    def _keep(self, keep: list[int]) -> None:
        """Keep the rows at ``keep`` only, without the columns that are padding in every row left."""
        import torch

        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        trim = mask.shape[1] - int(mask.sum(dim=1).max())
        self._mask = mask[:, trim:]
        parts = [(layer.keys.index_select(0, index)[:, :, trim:], layer.values.index_select(0, index)[:, :, trim:], 0)
                 for layer in self._cache.layers]
        self._cache = self._new_cache(parts, rows=len(keep), length=self._mask.shape[1])

    def _new_cache(self, parts: list, *, rows: int, length: int, extra: list | None = None):
        """A DynamicCache of ``Columns`` layers holding ``parts`` (keys, values, left offset) in its first rows
        and ``extra`` in the row after them, with room for the next tokens."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.generator.model.config)
        layers = []
        for i, (k, v, offset) in enumerate(parts):
            layer = _columns_class().empty(rows, k.shape[1], length, k.shape[3], k.dtype, k.device)
            n = k.shape[0]
            layer.buf_k[:n, :, offset:length], layer.buf_v[:n, :, offset:length] = k, v
            if extra is not None:
                ek, ev, pad = extra[i]
                layer.buf_k[n:, :, pad:length], layer.buf_v[n:, :, pad:length] = ek, ev
            layers.append(layer)
        cache.layers = layers
        return cache


def _columns_class():
    """``_Columns``, made on first use: it subclasses transformers' cache layer, and transformers is imported
    only when a model is."""
    global _Columns
    if _Columns is not None:
        return _Columns
    import torch
    from transformers.cache_utils import CacheLayerMixin

    class Columns(CacheLayerMixin):
        """One layer's keys/values of the running batch in a buffer with room to grow: a decode step writes
        its column in place and attention reads a view. (transformers' DynamicLayer concatenates, copying the
        whole cache every token: about 80 % of a batch-8 decode step on a CPU, profiled.)"""

        ROOM = 128  # columns added at a time
        is_sliding = False

        @classmethod
        def empty(cls, rows: int, heads: int, length: int, dim: int, dtype, device) -> "Columns":
            layer = cls()
            shape = (rows, heads, length + cls.ROOM, dim)
            layer.buf_k = torch.zeros(shape, dtype=dtype, device=device)
            layer.buf_v = torch.zeros(shape, dtype=dtype, device=device)
            layer.length, layer.dtype, layer.device, layer.is_initialized = length, dtype, device, True
            layer._view()
            return layer

        def _view(self) -> None:
            self.keys, self.values = self.buf_k[:, :, :self.length], self.buf_v[:, :, :self.length]

        def lazy_initialization(self, key_states, value_states) -> None:  # made full by ``empty``
            raise RuntimeError("a Columns layer is made by Columns.empty")

        def update(self, key_states, value_states, *args, **kwargs):
            n = key_states.shape[-2]
            if self.length + n > self.buf_k.shape[2]:
                more = max(n, self.ROOM)
                self.buf_k = torch.nn.functional.pad(self.buf_k, (0, 0, 0, more))
                self.buf_v = torch.nn.functional.pad(self.buf_v, (0, 0, 0, more))
            self.buf_k[:, :, self.length:self.length + n] = key_states
            self.buf_v[:, :, self.length:self.length + n] = value_states
            self.length += n
            self._view()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

        def get_max_length(self) -> int:
            return -1

    _Columns = Columns
    return Columns


_Columns = None


def _tensor(ids: list[int]):
    import torch

    return torch.tensor(ids)


def _streamer(tokenizer, on_token: Callable[[str], None]):
    """transformers' TextStreamer cutting at word boundaries; it is fed the new tokens only."""
    from transformers import TextStreamer

    class _Pieces(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_token(text)

    return _Pieces(tokenizer, skip_prompt=False, skip_special_tokens=True)
