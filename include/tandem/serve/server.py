"""``tandem serve``: the answer API in a process of its own (uvicorn), out of the Airflow api-server.

Generation is seconds of CPU per answer; in the api-server it competed with the UI. This process holds the
models (the adapter cache) and answers:

- ``GET /health``: 200 with what is loaded and which version the champion alias named at its last check
  (no login: for process managers and load balancers);
- ``POST /api/ask``: the answer contract, with the same request and response as the plugin's route; every
  answer names the exact adapter version that produced it (``adapter``, and the ``X-Tandem-Adapter`` header).

Authentication: ``Authorization: Bearer <token>``, the token ``make up`` prints (``TANDEM_SERVE_TOKEN``, or
one generated under ``$TANDEM_HOME/airflow/secrets``). The Airflow plugin's ``/tandem/api/ask`` keeps the
Airflow login and forwards to this process with that token, so users keep one URL and one login.
"""

from __future__ import annotations

import hmac
import logging
import threading
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tandem.config import Settings
from tandem.serve import tracing
from tandem.serve.contract import (ERRORS, AskRequest, AskResponse, FeedbackRequest, FeedbackResponse, answer_headers,
                                   body_limit, install_body_cap, install_error_handlers, serve_token)

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="The token `make up` prints (TANDEM_SERVE_TOKEN).")


def create_serve_app(settings: Settings, *, cache=None, warm: bool = True) -> FastAPI:
    """The serve process's app: the plugin's error handling and models, a token instead of the Airflow login."""
    from tandem.serve.adapter_cache import AdapterCache

    app = FastAPI(title="Tandem serve", summary="Answers from the live index with the champion adapter.",
                  description=__doc__, version="1", docs_url=None, redoc_url=None)
    install_error_handlers(app, login_fix="send 'Authorization: Bearer <token>' with the token `make up` printed "
                                          "(TANDEM_SERVE_TOKEN)")
    install_body_cap(app, lambda request: body_limit(settings, request))
    cache = cache or AdapterCache(settings)
    token = serve_token(settings)
    app.state.cache = cache

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health", tags=["health"], summary="Liveness, and the adapter cache's state")
    def health() -> dict[str, Any]:
        return {"status": "ok", **cache.state(), "queue": cache.batcher.state(),
                "tracing": tracing.tracer_for(settings).state()}

    @app.post("/api/ask", response_model=AskResponse, responses=ERRORS, tags=["ask"],
              summary="Answer a question from the live index with the champion adapter")
    def ask(body: AskRequest, response: Response, _auth=Depends(require_token)) -> Any:
        if body.stream:
            from tandem.serve.streaming import stream_answer

            return stream_answer(settings, body, cache, source="serve")

        result, _trace_id = tracing.answer(settings, body.question, source="serve", k=body.k, adapter=body.adapter,
                                           cache=cache)
        response.headers.update(answer_headers(result))
        return result.to_dict()

    @app.post("/api/feedback", response_model=FeedbackResponse, responses=ERRORS, tags=["feedback"],
              summary="Rate an answer (up/down), with an optional comment and corrected answer")
    def feedback(body: FeedbackRequest, _auth=Depends(require_token)) -> Any:
        from tandem.serve import feedback as user_feedback

        return user_feedback.record(settings, body)

    tracing.tracer_for(settings).experiment_id()  # looked up in the background before the first answer
    if warm:
        threading.Thread(target=_warm, args=(cache,), name="tandem-serve-warm", daemon=True).start()
    return app


def _warm(cache) -> None:
    """Load the champion before the first question (a failure here is the first request's error to report)."""
    try:
        cache.get("champion")
    except Exception as exc:  # noqa: BLE001 - e.g. no champion yet: the request path says what to run
        log.info("not warmed: %s", exc)


def run(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    uvicorn.run(create_serve_app(settings), host=host or settings.bind_host, port=port or settings.serve_port,
                log_level="info", access_log=False)
