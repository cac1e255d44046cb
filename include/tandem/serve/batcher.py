"""Continuous batching for the answer path: every question being answered by a model decodes in one batch.

One worker thread per process runs the models. A request waits in a queue with its prompt and the loaded
generator (adapter version) that must answer it. When the model is idle, the worker waits at most
``TANDEM_SERVE_BATCH_WINDOW_MS`` for companions of the first request; then it admits waiting requests in
arrival order while their model's batch has fewer than ``TANDEM_SERVE_BATCH_MAX`` rows. Each admitted
prompt is prefilled alone, reusing the key/values of a stored prefix (``TANDEM_SERVE_PREFIX_CACHE_MB``), in a
prefill thread of its own, so the running batch keeps decoding meanwhile (prefill is compute-bound, a
decode step mostly bound by memory: on a CPU the two use different cores). Once prefilled, the prompt joins
its model's running batch, which takes one token per row per step (``tandem.behavior.decoding``). A row
leaves at its end-of-sequence or budget, and a question that arrives mid-answer is admitted at once: nobody
waits for a whole batch to end.

Each row is answered by the version its request resolved. While the rows of one model's batch come from one
version, that version's merged model decodes them; while several versions of one base model have rows (the
champion just flipped, a challenger is asked), their rows move into one mixed batch whose step passes each
row's adapter (``tandem.behavior.mixing``; ``TANDEM_SERVE_MIX_ADAPTERS``), and back once one version is left.
Greedy decoding gives the same answer alone, in a batch and in a mixed batch (tested). A streaming request (one that
passes ``on_token``) decodes in the batch like any other, its text handed out as it comes.

Past ``TANDEM_SERVE_QUEUE_MAX`` waiting requests, a new one is refused at once with ``Overloaded`` (429 with
``Retry-After``): a client retries later instead of piling up behind timeouts.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from tandem.behavior.mixing import Mixer, can_mix
from tandem.errors import TandemError

log = logging.getLogger(__name__)

_SIZES_KEPT = 200  # answers whose batch size /health reports


class Overloaded(TandemError):
    """Too many questions are waiting: try again after ``retry_after`` seconds."""

    def __init__(self, message: str, fix: str | None = None, retry_after: int = 1):
        super().__init__(message, fix)
        self.retry_after = retry_after


@dataclasses.dataclass(eq=False)
class _Request:
    key: str
    generator: Any
    messages: list
    max_new_tokens: int
    on_token: Callable[[str], None] | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    output: str | None = None
    error: BaseException | None = None
    batch_size: int = 0
    queued_at: float = dataclasses.field(default_factory=time.monotonic)
    decoder: Any = None  # its model's decoding.Decoder, once admitted
    prefill: Future | None = None  # its prefill (decoder.begin), running in the prefill thread
    seq: Any = None  # its decoding.Sequence once prefilled


class Batcher:
    """The process's generation queue and running batches (see the module docstring)."""

    def __init__(self, *, window_ms: float, max_batch: int, max_queue: int, prefix_cache_mb: int = 0,
                 mix: bool = False):
        self.window_s = max(0.0, float(window_ms) / 1000)
        self.mix = bool(mix)
        self._mixers: dict[str, Mixer] = {}  # base model -> its mixed batch
        self.max_batch = max(1, int(max_batch))
        self.max_queue = max(1, int(max_queue))
        self.prefix_cache_mb = max(0, int(prefix_cache_mb))
        self._cond = threading.Condition()
        self._queue: collections.deque[_Request] = collections.deque()
        self._rows: dict[int, list[_Request]] = {}  # id(decoder) -> its admitted requests
        self._decoders: dict[int, Any] = {}  # id(decoder) -> the decoder, while it has rows
        self._seen: "weakref.WeakSet[Any]" = weakref.WeakSet()  # decoders of models still loaded (/health)
        self._sizes: collections.deque[int] = collections.deque(maxlen=_SIZES_KEPT)
        self.steps = 0
        self.step_rows = 0  # rows summed over the steps: mean rows per decode step
        self.refused = 0
        self.mixed_steps = 0  # decode steps of a mixed batch (rows of several versions)
        self.moves = 0  # rows moved between a version's batch and a mixed one
        self.decode_seconds = 0.0  # time in decode steps (the worker thread)
        self.prefill_seconds = 0.0  # time in prefills (the prefill thread)
        self._pending: list[_Request] = []  # admitted, prefilling (in admission order)
        self._prefill_pool: ThreadPoolExecutor | None = None
        self._worker: threading.Thread | None = None

    # --- the request side

    def generate(self, key: str, generator, messages: list, *, max_new_tokens: int,
                 on_token: Callable[[str], None] | None = None) -> tuple[str, int]:
        """(the greedy answer to ``messages`` by ``generator``, the most rows it decoded beside, itself
        included)."""
        req = _Request(key, generator, list(messages), int(max_new_tokens), on_token)
        with self._cond:
            if len(self._queue) >= self.max_queue:
                self.refused += 1
                raise Overloaded(f"{len(self._queue)} questions are already waiting for the model",
                                 fix="retry after a few seconds (Retry-After), or add serve replicas "
                                     "(docs/scaling.md); the queue limit is TANDEM_SERVE_QUEUE_MAX",
                                 retry_after=max(1, round(len(self._queue) / self.max_batch)))
            self._queue.append(req)
            self._ensure_worker()
            self._cond.notify_all()
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.output or "", req.batch_size

    def state(self) -> dict[str, Any]:
        """What /health reports: the queue, the rows being answered, the batch sizes seen, the settings."""
        with self._cond:
            sizes = list(self._sizes)
            prefix = [d.prefix.state() for d in list(self._seen)]
            return {"queue_depth": len(self._queue), "generating": sum(len(r) for r in self._rows.values()),
                    "queue_max": self.max_queue, "batch_max": self.max_batch,
                    "batch_window_ms": round(self.window_s * 1000, 1), "refused": self.refused,
                    "answers": len(sizes), "batches": self.steps, "decode_steps": self.steps, "decode_rows": self.step_rows,
                    "mean_rows_per_step": round(self.step_rows / self.steps, 2) if self.steps else None,
                    "batch_sizes": dict(sorted(collections.Counter(sizes).items())),
                    "mean_batch_size": round(sum(sizes) / len(sizes), 2) if sizes else None,
                    "decode_seconds": round(self.decode_seconds, 1),
                    "prefill_seconds": round(self.prefill_seconds, 1),
                    "mix_adapters": self.mix, "mixed_steps": self.mixed_steps, "row_moves": self.moves,
                    "mixers": [m.state() for m in self._mixers.values()],
                    "prefix_cache": _prefix_totals(prefix, self.prefix_cache_mb)}

    # --- the worker side

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="tandem-generate", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            ready = self._wait_for_work()
            for req in ready:
                self._join(req)
            self._mix()
            for ident in list(self._decoders):
                self._step(ident)

    def _wait_for_work(self) -> list[_Request]:
        """Admit what may start (its prefill goes to the prefill thread) and return the admitted requests
        whose prefill is done, in admission order; blocks while there is nothing to join or decode."""
        with self._cond:
            while True:
                if self._queue and not self._rows:  # every model idle: wait for company a moment
                    first = self._queue[0]
                    deadline = first.queued_at + self.window_s
                    while self._companions(first) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(left)
                self._admit()
                ready = [req for req in self._pending if req.prefill.done()]
                for req in ready:
                    self._pending.remove(req)
                if ready or any(d.rows for d in self._decoders.values()):
                    return ready
                self._cond.wait()

    def _admit(self) -> None:
        """Start the prefill of each waiting request whose model's batch has room, in arrival order (the
        caller holds the lock)."""
        for req in list(self._queue):
            try:
                decoder = req.generator.decoder(self.prefix_cache_mb)
            except BaseException as exc:  # noqa: BLE001 - this request fails, the others go on
                self._queue.remove(req)
                self._finish(req, error=exc)
                continue
            if self._in_flight(req.generator) >= self.max_batch:
                continue
            self._decoders[id(decoder)] = decoder
            self._seen.add(decoder)
            self._queue.remove(req)
            self._rows.setdefault(id(decoder), []).append(req)
            req.decoder = decoder
            req.prefill = self._prefiller().submit(self._prefill, decoder, req)
            self._pending.append(req)
            req.prefill.add_done_callback(self._wake)
        for ident in [i for i, rows in self._rows.items() if not rows]:
            del self._rows[ident]
            self._decoders.pop(ident, None)

    def _in_flight(self, generator) -> int:
        """The admitted requests of ``generator`` (one version), in its own batch or a mixed one."""
        return sum(1 for rows in self._rows.values() for req in rows if req.generator is generator)

    def _prefill(self, decoder, req: _Request):
        started = time.perf_counter()
        try:
            return decoder.begin(req.messages, max_new_tokens=req.max_new_tokens, on_token=req.on_token)
        finally:
            self.prefill_seconds += time.perf_counter() - started

    def _prefiller(self) -> ThreadPoolExecutor:
        if self._prefill_pool is None:
            self._prefill_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-prefill")
        return self._prefill_pool

    def _wake(self, _future=None) -> None:
        with self._cond:
            self._cond.notify_all()

    def _companions(self, first: _Request) -> int:
        return sum(1 for req in self._queue if req.generator is first.generator)

    def _join(self, req: _Request) -> None:
        """Put a prefilled request in its model's running batch (or answer it, when its first token ended
        it)."""
        decoder = req.decoder
        try:
            req.seq = req.prefill.result()
            if not req.seq.done:
                decoder.join(req.seq)
        except BaseException as exc:  # noqa: BLE001 - this request gets the error, the worker goes on
            log.warning("generating an answer failed: %s", exc)
            self._leave(id(decoder), [req], error=exc)
            return
        if req.seq.done:
            self._leave(id(decoder), [req])

    def _mix(self) -> None:
        """While rows of several versions of one base model decode, move them all into that base model's
        mixed batch (one step for all of them); once one version is left there, back to its own model."""
        if not self.mix:
            return
        with self._cond:
            groups: dict[str, list[_Request]] = {}
            for rows in self._rows.values():
                for req in rows:
                    if req.seq is not None and not req.seq.done and can_mix(req.generator):
                        groups.setdefault(req.generator.base_model, []).append(req)
        for base, reqs in groups.items():
            mixer = self._mixers.get(base)
            mixed = mixer.decoder() if mixer is not None else None
            if len({id(req.generator) for req in reqs}) >= 2:
                if mixer is None:
                    packed = any(getattr(req.generator, "packed_layers", 0) for req in reqs)  # as its models
                    mixer = self._mixers[base] = Mixer(base, packed=packed)
                names = {id(req.generator): mixer.name(req.generator) for req in reqs}
                if None in names.values():  # an adapter is still being attached (or cannot be)
                    continue
                mixer.hold(set(names.values()))
                self._move([req for req in reqs if req.decoder is not mixer.decoder()], mixer.decoder(), names)
            elif mixed is not None:
                back = [req for req in reqs if req.decoder is mixed]
                if back:
                    self._move(back, back[0].generator.decoder(self.prefix_cache_mb), None)

    def _move(self, reqs: list[_Request], target, names: dict[int, str] | None) -> None:
        """Move the rows of ``reqs`` (keys/values included) into ``target``'s batch."""
        sources: dict[int, list[_Request]] = {}
        for req in reqs:
            sources.setdefault(id(req.decoder), []).append(req)
        for group in sources.values():
            group[0].decoder.release([req.seq for req in group])
        for req in reqs:
            req.seq.adapter = names[id(req.generator)] if names is not None else None
            target.join(req.seq)
        with self._cond:
            for req in reqs:
                self._rows[id(req.decoder)].remove(req)
                req.decoder = target
            self._rows.setdefault(id(target), []).extend(reqs)
            self._decoders[id(target)] = target
            for ident in [i for i, rows in self._rows.items() if not rows]:
                del self._rows[ident]
                self._decoders.pop(ident, None)
            self.moves += len(reqs)

    def _step(self, ident: int) -> None:
        """One decode step of one model's batch; answers the rows that ended."""
        with self._cond:
            decoder, rows = self._decoders.get(ident), list(self._rows.get(ident, []))
        if decoder is None or not decoder.rows:
            return
        started = time.perf_counter()
        try:
            size = len(decoder.rows)
            ended = decoder.step()
        except BaseException as exc:  # noqa: BLE001 - the batch's requests get the error, the worker goes on
            log.warning("a batch of %d failed: %s", len(decoder.rows), exc)
            failed = {id(seq) for seq in decoder.fail()}
            self._leave(ident, [r for r in rows if r.seq is not None and id(r.seq) in failed], error=exc)
            return
        with self._cond:
            self.decode_seconds += time.perf_counter() - started
            self.steps += 1
            self.step_rows += size
            self.mixed_steps += 1 if getattr(decoder, "mixed", False) else 0
        ids = {id(seq) for seq in ended}
        self._leave(ident, [r for r in rows if r.seq is not None and id(r.seq) in ids])

    def _leave(self, ident: int, reqs: list[_Request], error: BaseException | None = None) -> None:
        with self._cond:
            rows = self._rows.get(ident, [])
            for req in reqs:
                if req in rows:
                    rows.remove(req)
            if not rows:
                self._rows.pop(ident, None)
                self._decoders.pop(ident, None)
        for req in reqs:
            self._finish(req, error=error)

    def _finish(self, req: _Request, error: BaseException | None = None) -> None:
        if error is not None:
            req.error = error
        else:
            req.output, req.batch_size = req.seq.text, req.seq.largest_batch
            with self._cond:
                self._sizes.append(req.batch_size)
        req.seq = req.generator = req.decoder = req.prefill = None  # the model may go once its answers are out
        req.done.set()


def _prefix_totals(states: list[dict], limit_mb: int) -> dict[str, Any]:
    """The prefix caches of the loaded models, summed (what /health shows)."""
    total: dict[str, Any] = {"limit_mb_per_model": limit_mb, "mb": round(sum(s["mb"] for s in states), 1)}
    for key in ("entries", "hits", "reused_tokens", "prompt_tokens"):
        total[key] = sum(s[key] for s in states)
    total["reused_share"] = round(total["reused_tokens"] / total["prompt_tokens"], 3) if total["prompt_tokens"] else None
    return total
