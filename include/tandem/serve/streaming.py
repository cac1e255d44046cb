"""``POST /api/ask`` with ``"stream": true``: the answer as server-sent events.

    event: token    data: {"text": "The Pro plan"}     (pieces of the answer's raw text, as generated)
    event: answer   data: {...}                         (the final object: exactly the non-streamed answer)
    event: error    data: {"error": "...", "fix": "..."} (a failure after the stream began)

Input errors, an unknown adapter or a missing index are found before the stream begins, so they are the
usual 4xx/503 JSON replies. The streamed question is generated alone (``tandem.serve.batcher``), and its
final object equals the batched answer: greedy decoding gives the same text either way.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any, Iterator

from fastapi.responses import StreamingResponse

from tandem.errors import TandemError

MEDIA_TYPE = "text/event-stream"


def event(name: str, data: Any) -> bytes:
    """One server-sent event (JSON data, ASCII-escaped: a stream never fails on an odd character)."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=True, default=str)}\n\n".encode("ascii")


def stream_answer(settings, body, cache, *, source: str) -> StreamingResponse:
    """Run the answer path in a thread and stream it; raises its error when it fails before generating.
    ``source`` (serve, plugin) tags the answer's trace."""
    from tandem.serve import tracing

    items: "queue.Queue[tuple[str, Any] | None]" = queue.Queue()
    begun = threading.Event()
    state: dict[str, Any] = {"streaming": False, "error": None}

    def step(stage: str) -> None:
        if stage == "generate":
            state["streaming"] = True
            begun.set()

    def work() -> None:
        try:
            out, _trace_id = tracing.answer(settings, body.question, source=source, k=body.k, adapter=body.adapter,
                                            cache=cache, progress=step,
                                            on_token=lambda text: items.put(("token", {"text": text})))
            items.put(("answer", out.to_dict()))
        except BaseException as exc:  # noqa: BLE001 - reported to the client, before or in the stream
            state["error"] = exc
            items.put(("error", exc))
        finally:
            begun.set()
            items.put(None)

    threading.Thread(target=work, name="tandem-stream", daemon=True).start()
    begun.wait()
    if state["error"] is not None and not state["streaming"]:
        raise state["error"]  # the app's handlers answer it (400, 404, 503, ...)
    return StreamingResponse(_events(items), media_type=MEDIA_TYPE, headers={"Cache-Control": "no-cache"})


def _events(items: "queue.Queue") -> Iterator[bytes]:
    while True:
        item = items.get()
        if item is None:
            return
        name, data = item
        if name == "error":
            exc = data
            data = ({"error": exc.message, "fix": exc.fix} if isinstance(exc, TandemError)
                    else {"error": f"{type(exc).__name__}: {exc}", "fix": "see the answer process's log"})
        yield event(name, data)
