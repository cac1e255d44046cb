"""The Tandem HTTP app, mounted by the Airflow plugin under the api-server at ``/tandem``.

Routes (all behind the Airflow UI's authentication: a JWT bearer header, or the UI's ``_token`` cookie; and
behind Airflow's auth manager: asking needs the right to trigger ``behavior_eval``, the status needs read
access to the Tandem DAGs' runs; 403 otherwise):

- ``POST /tandem/api/ask``: the answer contract plus sources and timings (``tandem.serve.answer``).
- ``GET /tandem/api/status``: the state of both cadences as JSON (``tandem.serve.status``).
- ``GET /tandem/``: the status page, server-rendered (``tandem.serve.page``).
- ``GET /tandem/openapi.json``: the OpenAPI schema (served without a login, like Airflow's own).

Errors are JSON ``{"error", "fix"}``: bad input 400/422, unauthenticated 401, a missing index or champion
(or Postgres/MLflow down) 503 with what to run. Never a 500 for a user's mistake.

Importing this module is cheap (FastAPI and pydantic only): Airflow imports the plugin in every component.
Settings are read on the first request; the models load on the first question that needs them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tandem.errors import ServiceUnavailable
from tandem.serve.contract import (ASK_DAG, ERRORS, AskRequest, AskResponse, FeedbackRequest, FeedbackResponse, _error,
                                   answer_headers, body_limit, install_body_cap, install_error_handlers)

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="An Airflow JWT (POST /auth/token), or the Airflow UI's cookie.")


async def require_user(request: Request,
                       credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Any:
    """Airflow's own authentication dependency (``get_user``): the bearer token, else the UI cookie.

    Imported on the first request, not at plugin import: the security module pulls in Airflow's ORM
    models (seconds), which the scheduler and workers that also import plugins never need.
    """
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request=request, _oauth_token=None, bearer_credentials=credentials)


# --- authorization: Airflow's auth manager decides, on the Tandem DAGs' runs

#: Asking generates on the shared CPU: it needs the right to trigger ``behavior_eval`` (POST on its runs). In
#: Airflow's roles that is User, Op and Admin; a Viewer gets 403.
#: The status page and API show these DAGs' runs: reading needs GET on the runs of each of them.
TANDEM_DAGS = ("knowledge_reindex", "knowledge_verify", "behavior_eval", "lora_retrain", "adapter_rollback")


def _allowed(user: Any, method: str, dag_id: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return get_auth_manager().is_authorized_dag(method=method, access_entity=DagAccessEntity.RUN,
                                                details=DagDetails(id=dag_id), user=user)


def _require_readable(user: Any) -> Any:
    denied = [dag for dag in TANDEM_DAGS if not _allowed(user, "GET", dag)]
    if denied:
        raise HTTPException(403, f"reading the Tandem status needs read access to the runs of {', '.join(denied)}")
    return user


async def require_reader(request: Request,
                         credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Any:
    """Logged in, and allowed to read the runs of every Tandem DAG."""
    return _require_readable(await require_user(request, credentials))


async def require_asker(request: Request,
                        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Any:
    """Logged in, and allowed to trigger ``behavior_eval`` (asking spends the model's CPU)."""
    user = await require_user(request, credentials)
    if not _allowed(user, "POST", ASK_DAG):
        raise HTTPException(403, f"asking needs the right to trigger {ASK_DAG} (Airflow's User, Op or Admin role)")
    return user


class _State:
    """Settings and the adapter cache, created on first use (thread-safe)."""

    def __init__(self, settings=None, cache=None, settings_factory: Callable[[], Any] | None = None):
        self._settings, self._cache, self._factory = settings, cache, settings_factory
        self._tracing_started = False
        self._lock = threading.Lock()

    @property
    def settings(self):
        with self._lock:
            if self._settings is None:
                if self._factory is not None:
                    self._settings = self._factory()
                else:
                    from tandem.config import Settings

                    self._settings = Settings.load()
            if not self._tracing_started:  # the traces' experiment, looked up in the background once
                from tandem.serve import tracing

                self._tracing_started = True
                tracing.tracer_for(self._settings).experiment_id()
            return self._settings

    @property
    def cache(self):
        settings = self.settings
        with self._lock:
            if self._cache is None:
                from tandem.serve.adapter_cache import AdapterCache

                self._cache = AdapterCache(settings)
            return self._cache


def configure(app: FastAPI, *, settings=None, cache=None) -> None:
    """Point an app (e.g. the plugin's) at explicit settings and an adapter cache (tests, benchmarks)."""
    app.state.tandem = _State(settings, cache)


def create_app(settings=None, *, cache=None, settings_factory: Callable[[], Any] | None = None) -> FastAPI:
    """The FastAPI app. ``settings``/``cache`` default to ``Settings.load()`` and a new AdapterCache on first use."""
    app = FastAPI(
        title="Tandem",
        summary="Ask the live model (index + champion adapter) and see the state of both cadences.",
        description=__doc__,
        version="1",
        docs_url=None,  # Swagger UI / ReDoc fetch their assets from a CDN: nothing is fetched from the internet
        redoc_url=None,
    )
    app.state.tandem = _State(settings, cache, settings_factory)

    install_error_handlers(app)

    install_body_cap(app, lambda request: body_limit(request.app.state.tandem.settings, request))

    _answer_routes(app)

    @app.get("/api/status", responses=ERRORS, tags=["status"],
             summary="The state of both cadences (index, adapters, evals, anti-flap, links)")
    def api_status(request: Request, _user=Depends(require_reader)) -> dict:
        from tandem.serve.status import airflow_dag_runs, collect

        st = state(request)
        return collect(st.settings, cache=st.cache, dag_runs=airflow_dag_runs)

    @app.get("/", response_class=HTMLResponse, tags=["status"], summary="The status page (HTML)")
    def page(request: Request, _user=Depends(_page_user)) -> HTMLResponse:
        if isinstance(_user, RedirectResponse):
            return _user
        _require_readable(_user)
        from tandem.serve.page import render
        from tandem.serve.status import airflow_dag_runs, collect

        st = state(request)
        return HTMLResponse(render(collect(st.settings, cache=st.cache, dag_runs=airflow_dag_runs)))

    return app


def state(request: Request) -> _State:
    return request.app.state.tandem


def _answer_routes(app: FastAPI) -> None:
    """``/api/ask`` and ``/api/feedback``: answered here, or forwarded to `tandem serve` when it is configured."""

    @app.post("/api/ask", response_model=AskResponse, responses=ERRORS, tags=["ask"],
              summary="Answer a question from the live index with the champion adapter")
    def ask(body: AskRequest, request: Request, response: Response, _user=Depends(require_asker)) -> Any:
        st = state(request)
        if st.settings.serve_url:  # the answer process (`tandem serve`): generation stays out of the api-server
            return forward_ask(st.settings, body)
        if body.stream:
            from tandem.serve.streaming import stream_answer

            return stream_answer(st.settings, body, st.cache, source="plugin")
        from tandem.serve import tracing

        result, trace_id = tracing.answer(st.settings, body.question, source="plugin", k=body.k,
                                          adapter=body.adapter, cache=st.cache)
        response.headers.update(answer_headers(result))
        return result.to_dict()

    @app.post("/api/feedback", response_model=FeedbackResponse, responses=ERRORS, tags=["feedback"],
              summary="Rate an answer (up/down), with an optional comment and corrected answer")
    def feedback(body: FeedbackRequest, request: Request, user=Depends(require_asker)) -> Any:
        st = state(request)
        if st.settings.serve_url:
            return forward_json(st.settings, body, "/api/feedback")
        from tandem.serve import feedback as user_feedback

        return user_feedback.record(st.settings, body, user=_user_name(user))


_forward_slots: dict[int, threading.BoundedSemaphore] = {}
_forward_slots_lock = threading.Lock()


def _forward_slot(limit: int) -> threading.BoundedSemaphore:
    with _forward_slots_lock:
        return _forward_slots.setdefault(limit, threading.BoundedSemaphore(limit))


def forward_ask(settings, body: "AskRequest") -> Response:
    """POST the question to `tandem serve` with its token; its answer (or its error) goes back as it is.

    Bounded, so that the api-server stays responsive: at most ``forward_max_concurrent`` forwards at once
    (429 past it, at once), a 3 s connect timeout, ``forward_timeout_seconds`` for the answer, and a reply of
    at most ``forward_max_reply_bytes``. A reply that is not JSON becomes a 502 that says so, never a 500.
    """
    slot = _forward_slot(settings.forward_max_concurrent)
    if not slot.acquire(blocking=False):
        return _error(429, f"{settings.forward_max_concurrent} questions are already being answered",
                      "retry in a few seconds (TANDEM_FORWARD_MAX_CONCURRENT sets the limit)",
                      headers={"Retry-After": "5"})
    if body.stream:
        return _forward_stream(settings, body, slot)  # the slot is released when the stream ends
    try:
        return _forward(settings, body)
    finally:
        slot.release()


def forward_json(settings, body, path: str) -> Response:
    """POST ``body`` to `tandem serve`'s ``path`` within the same bounds as an ask (not streamed)."""
    slot = _forward_slot(settings.forward_max_concurrent)
    if not slot.acquire(blocking=False):
        return _error(429, f"{settings.forward_max_concurrent} requests are already being forwarded",
                      "retry in a few seconds (TANDEM_FORWARD_MAX_CONCURRENT sets the limit)",
                      headers={"Retry-After": "5"})
    try:
        return _forward(settings, body, path)
    finally:
        slot.release()


def _user_name(user: Any) -> str | None:
    name = getattr(user, "get_name", None)
    return str(name()) if callable(name) else getattr(user, "username", None)


def _serve_request(settings, body, path: str = "/api/ask") -> tuple[str, bytes, "Any", dict]:
    import json

    import httpx

    from tandem.serve.contract import serve_token

    url = settings.serve_url.rstrip("/") + path
    # ensure_ascii: a lone surrogate in the question travels as a \ud800 escape (valid JSON), not as bytes
    payload = json.dumps(body.model_dump(exclude_unset=True), ensure_ascii=True).encode("ascii")  # as received
    timeout = httpx.Timeout(settings.forward_timeout_seconds, connect=3.0)
    headers = {"Authorization": f"Bearer {serve_token(settings)}", "Content-Type": "application/json"}
    return url, payload, timeout, headers


def _unreachable(settings, exc) -> ServiceUnavailable:
    return ServiceUnavailable(f"the answer process at {settings.serve_url} is not answering ({type(exc).__name__})",
                              fix="start it with `make up` (or `tandem serve`), or unset TANDEM_SERVE_URL to answer "
                                  "in the api-server")


def _forward_stream(settings, body: "AskRequest", slot: threading.BoundedSemaphore) -> Response:
    """Pass serve's event stream on as it comes; a reply that is not a stream (an error) is forwarded as one."""
    import httpx

    from fastapi.responses import StreamingResponse

    from tandem.serve.streaming import MEDIA_TYPE

    url, payload, timeout, headers = _serve_request(settings, body)
    client = httpx.Client(timeout=timeout)
    try:
        resp = client.send(client.build_request("POST", url, content=payload, headers=headers), stream=True)
    except httpx.HTTPError as exc:
        client.close()
        slot.release()
        raise _unreachable(settings, exc) from None
    if resp.status_code != 200 or not resp.headers.get("content-type", "").startswith(MEDIA_TYPE):
        try:
            return _passed_on(settings, resp, _read_capped(resp, settings.forward_max_reply_bytes))
        finally:
            resp.close()
            client.close()
            slot.release()

    def relay():
        try:
            yield from resp.iter_raw()
        except httpx.HTTPError:
            from tandem.serve.streaming import event

            yield event("error", {"error": "the answer process stopped in the middle of the stream",
                                  "fix": "ask again; check `tandem serve`'s log"})
        finally:
            resp.close()
            client.close()
            slot.release()

    return StreamingResponse(relay(), media_type=MEDIA_TYPE, headers={"Cache-Control": "no-cache"})


def _forward(settings, body, path: str = "/api/ask") -> Response:
    import httpx

    url, payload, timeout, headers = _serve_request(settings, body, path)
    try:
        with httpx.Client(timeout=timeout) as client, client.stream("POST", url, content=payload,
                                                                    headers=headers) as resp:
            content = _read_capped(resp, settings.forward_max_reply_bytes)
    except httpx.HTTPError as exc:
        raise _unreachable(settings, exc) from None
    return _passed_on(settings, resp, content)


def _passed_on(settings, resp, content: bytes | None) -> Response:
    """serve's reply as the plugin's: its bytes unchanged, or a 502 that says what was wrong with it."""
    import json

    if content is None:
        return _error(502, f"the answer process sent a reply over {settings.forward_max_reply_bytes} bytes",
                      "check `tandem serve`'s log; TANDEM_FORWARD_MAX_REPLY_BYTES sets the limit")
    if resp.status_code == 401:
        raise ServiceUnavailable("the answer process refused the plugin's token",
                                 fix="give the api-server and `tandem serve` the same TANDEM_SERVE_TOKEN")
    try:
        json.loads(content)
    except ValueError:
        return _error(502, f"the answer process at {settings.serve_url} answered {resp.status_code} with a body "
                           "that is not JSON", "check that TANDEM_SERVE_URL points at `tandem serve`, and its log")
    passed = {k: v for k, v in resp.headers.items() if k.lower() in ("x-tandem-adapter", "x-tandem-trace", "retry-after")}
    return Response(content, status_code=resp.status_code, headers=passed, media_type="application/json")


def _read_capped(resp, limit: int) -> bytes | None:
    """The reply's body, or None once it passes ``limit`` bytes (the rest is not read)."""
    chunks, size = [], 0
    for chunk in resp.iter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _page_user(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Any:
    """Like ``require_user``, but a browser without a session is sent to the Airflow login and back."""
    try:
        return await require_user(request, credentials)
    except HTTPException as exc:
        if exc.status_code != 401 or credentials is not None or "text/html" not in request.headers.get("accept", ""):
            raise
        try:
            from airflow.api_fastapi.app import get_auth_manager

            login = get_auth_manager().get_url_login(next_url=str(request.url))
        except Exception:  # noqa: BLE001 - no auth manager configured: plain 401
            raise exc from None
        return RedirectResponse(login, status_code=307)
