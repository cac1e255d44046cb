"""What `make status` says of the Celery side: which workers answer, what each runs, how deep each queue is.

Workers are asked through the broker (Celery's remote control ``ping`` and ``inspect active``). Queue depth
is read off Redis: kombu keeps each queue as a list (one list per priority step), so the depth is the sum
of their lengths: messages no worker has taken yet.
"""

from __future__ import annotations

from tandem.config import Settings
from tandem.stack import services

# kombu's Redis transport: a queue ``q`` is the list ``q`` plus one list per non-zero priority step
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def _app(settings: Settings):
    from celery import Celery

    return Celery("tandem-status", broker=services.broker_url(settings))


def ping(settings: Settings, timeout: float = 1.0) -> dict[str, str]:
    """{worker name: its Celery node name} of the workers that answered."""
    try:
        replies = _app(settings).control.ping(timeout=timeout)
    except Exception:  # noqa: BLE001 - broker down: no worker answers
        return {}
    out = {}
    for reply in replies:
        for node in reply:
            out[node.split("@", 1)[0]] = node
    return out


def active(settings: Settings, timeout: float = 1.0) -> dict[str, int]:
    """{worker name: tasks it is running now}."""
    try:
        replies = _app(settings).control.inspect(timeout=timeout).active() or {}
    except Exception:  # noqa: BLE001
        return {}
    return {node.split("@", 1)[0]: len(tasks or []) for node, tasks in replies.items()}


def queue_depths(settings: Settings) -> dict[str, int | None]:
    """{queue: messages waiting in the broker} (None: the broker did not answer)."""
    import redis

    queues = sorted({queue for _, queue in services.worker_names(settings)})
    try:
        client = redis.Redis.from_url(services.broker_url(settings), socket_timeout=3)
        return {q: sum(client.llen(q + suffix) for suffix in _PRIORITY_SUFFIXES) for q in queues}
    except redis.RedisError:
        return {q: None for q in queues}


def queues_text(settings: Settings) -> str:
    depths = queue_depths(settings)
    return ", ".join(f"{q} {'?' if n is None else n} waiting" for q, n in depths.items())
