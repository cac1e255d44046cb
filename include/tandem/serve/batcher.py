"""Batched generation for the answer path: questions that arrive while the model is busy share the next batch.

One worker thread per process runs the model. A request waits in a queue with its prompt and the loaded
adapter version that must answer it. The worker takes the oldest request, waits at most
``TANDEM_SERVE_BATCH_WINDOW_MS`` for others of the same version (and token budget), up to
``TANDEM_SERVE_BATCH_MAX`` of them, and answers them with one batched ``generate`` (the evals' batched
greedy decoding: left padding, sorted by length; the same prompt gives the same answer alone or in a
batch). Requests of another version wait for their own batch: an answer is always produced by the version
its request resolved.

Past ``TANDEM_SERVE_QUEUE_MAX`` waiting requests, a new one is refused at once with ``Overloaded`` (429 with
``Retry-After``): a client retries later instead of piling up behind timeouts. A streaming request (one that
passes ``on_token``) is generated alone, its tokens handed out as they come.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from tandem.errors import TandemError

log = logging.getLogger(__name__)

_SIZES_KEPT = 200  # batch sizes remembered for /health


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

    def joins(self, other: "_Request") -> bool:
        """Whether ``other`` may share this request's batch: same version, same budget, not streaming."""
        return (other.key == self.key and other.max_new_tokens == self.max_new_tokens
                and other.on_token is None and self.on_token is None)


class Batcher:
    """The process's generation queue (see the module docstring)."""

    def __init__(self, *, window_ms: float, max_batch: int, max_queue: int):
        self.window_s = max(0.0, float(window_ms) / 1000)
        self.max_batch = max(1, int(max_batch))
        self.max_queue = max(1, int(max_queue))
        self._cond = threading.Condition()
        self._queue: collections.deque[_Request] = collections.deque()
        self._running = 0  # requests in the batch the model is generating now
        self._sizes: collections.deque[int] = collections.deque(maxlen=_SIZES_KEPT)
        self.batches = 0
        self.refused = 0
        self._worker: threading.Thread | None = None

    # --- the request side

    def generate(self, key: str, generator, messages: list, *, max_new_tokens: int,
                 on_token: Callable[[str], None] | None = None) -> tuple[str, int]:
        """(the greedy answer to ``messages`` by ``generator``, the size of the batch it was part of)."""
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
        """What /health reports: the queue, the batch sizes seen, the settings."""
        with self._cond:
            sizes = list(self._sizes)
            return {"queue_depth": len(self._queue), "generating": self._running, "queue_max": self.max_queue,
                    "batch_max": self.max_batch, "batch_window_ms": round(self.window_s * 1000, 1),
                    "batches": self.batches, "refused": self.refused,
                    "batch_sizes": dict(sorted(collections.Counter(sizes).items())),
                    "mean_batch_size": round(sum(sizes) / len(sizes), 2) if sizes else None}

    # --- the worker side

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="tandem-generate", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            self._run(batch)

    def _next_batch(self) -> list[_Request]:
        """The oldest request and those that may join it, after the collection window (caller runs them)."""
        with self._cond:
            while not self._queue:
                self._cond.wait()
            first = self._queue[0]
            deadline = first.queued_at + self.window_s
            while first.on_token is None and self._joining(first) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [first]
            for req in list(self._queue)[1:]:
                if len(batch) >= self.max_batch:
                    break
                if first.joins(req):
                    batch.append(req)
            for req in batch:
                self._queue.remove(req)
            self._running = len(batch)
            return batch

    def _joining(self, first: _Request) -> int:
        return 1 + sum(1 for req in list(self._queue)[1:] if first.joins(req))

    def _run(self, batch: list[_Request]) -> None:
        first = batch[0]
        try:
            if first.on_token is not None:
                outputs = [first.generator.stream(first.messages, max_new_tokens=first.max_new_tokens,
                                                  on_token=first.on_token)]
            else:
                outputs = first.generator.generate([r.messages for r in batch], max_new_tokens=first.max_new_tokens,
                                                   batch_size=len(batch))
            for req, out in zip(batch, outputs):
                req.output, req.batch_size = out, len(batch)
        except BaseException as exc:  # noqa: BLE001 - each waiting request gets the error, the worker goes on
            log.warning("a batch of %d failed: %s", len(batch), exc)
            for req in batch:
                req.error = exc
        finally:
            with self._cond:
                self._running = 0
                self.batches += 1
                self._sizes.append(len(batch))
            for req in batch:
                req.done.set()
