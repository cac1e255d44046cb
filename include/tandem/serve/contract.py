"""What the plugin's app (``tandem.serve.api``) and ``tandem serve`` (``tandem.serve.server``) share: the
request and response models of ``/api/ask``, the JSON errors ``{"error", "fix"}``, and serve's bearer token.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Callable, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from tandem import secret_files
from tandem.config import Settings
from tandem.errors import ServiceUnavailable, TandemError, UserError
from tandem.serve.batcher import Overloaded

log = logging.getLogger(__name__)

ASK_DAG = "behavior_eval"  # asking needs the right to trigger this DAG (POST on its runs)


# --- request and response models (they document the API in the OpenAPI schema)


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"question": "What does the Pro plan cost?", "k": 5, "adapter": "champion"}]})

    question: str = Field(description="The question (1 to TANDEM_ASK_MAX_QUESTION_CHARS characters, default 1000).")
    k: StrictInt | None = Field(None, description="How many chunks to retrieve (1 to TANDEM_ASK_MAX_K, default 20); "
                                                   "default: the behavior spec's retrieval.k, as in the evals.")
    adapter: str | None = Field(None, description="'champion' (default), 'base', 'challenger', 'previous', "
                                                  "or a version number of the tandem-adapter model.")
    stream: bool = Field(False, description="true: server-sent events, the answer's text as it is generated "
                                            "(`token`), then the whole answer (`answer`)")


class Source(BaseModel):
    doc_id: str
    title: str
    uri: str


class Retrieved(BaseModel):
    doc_id: str
    chunk_id: str
    title: str
    uri: str
    score: float
    vector_similarity: float | None


class AskResponse(BaseModel):
    answer: str = Field(description="The answer (the spec's refusal text when the context lacks it).")
    citations: list[str] = Field(description="Doc ids of the context the answer cites (a subset of `retrieved`).")
    confidence: Literal["high", "medium", "low"]
    sources: list[Source] = Field(description="The cited documents with title and URI, in citation order.")
    timings: dict[str, float] = Field(description="retrieval_ms, generation_ms, adapter_load_ms, total_ms")
    adapter: str = Field(description="The adapter that answered: 'base' or 'v<version>'.")
    index_version: str | None
    refused: bool = Field(description="True: refused without generating (best similarity under the threshold).")
    best_similarity: float | None
    threshold: float
    valid: bool = Field(description="Whether the model's output met the contract as generated.")
    violations: list[str]
    retrieved: list[Retrieved]
    raw_output: str | None
    question: str


class ErrorBody(BaseModel):
    error: str
    fix: str | None = None


ERRORS = {400: {"model": ErrorBody, "description": "bad input (names the input and the fix)"},
          401: {"model": ErrorBody, "description": "not authenticated (log in to Airflow, or send a bearer token)"},
          403: {"model": ErrorBody, "description": "logged in without the permission (asking: trigger behavior_eval)"},
          413: {"model": ErrorBody, "description": "the request body is over TANDEM_ASK_MAX_BODY_BYTES"},
          422: {"model": ErrorBody, "description": "the request body does not match the schema"},
          429: {"model": ErrorBody, "description": "the plugin already forwards TANDEM_FORWARD_MAX_CONCURRENT asks"},
          502: {"model": ErrorBody, "description": "`tandem serve` sent a reply that is not JSON or is too large"},
          503: {"model": ErrorBody, "description": "no index, no champion, or Postgres/MLflow down: says what to run"}}


def _error(status: int, message: str, fix: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "fix": fix}, status_code=status, headers=headers)


AIRFLOW_LOGIN_FIX = "log in to the Airflow UI, or send 'Authorization: Bearer <token>' (POST /auth/token)"


def install_error_handlers(app: FastAPI, login_fix: str = AIRFLOW_LOGIN_FIX) -> None:
    """JSON errors {"error", "fix"}: bad input 400/422, unauthenticated 401, a missing index or champion 503."""

    @app.exception_handler(UserError)
    async def _user_error(_request: Request, exc: UserError):
        return _error(400, exc.message, exc.fix)

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(_request: Request, exc: ServiceUnavailable):
        return _error(503, exc.message, exc.fix, headers={"Retry-After": "60"})

    @app.exception_handler(Overloaded)
    async def _overloaded(_request: Request, exc: Overloaded):
        return _error(429, exc.message, exc.fix, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TandemError)
    async def _tandem_error(_request: Request, exc: TandemError):
        log.error("tandem error: %s", exc)
        return _error(500, exc.message, exc.fix)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg')}")
        return JSONResponse({"error": "invalid request: " + "; ".join(problems),
                             "fix": 'send JSON like {"question": "What does the Pro plan cost?", "k": 5}'},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own (a body it cannot parse) and the routes'
    async def _http(_request: Request, exc: StarletteHTTPException):
        fix = None
        if exc.status_code == 400:
            fix = 'send the body as UTF-8 JSON, like {"question": "What does the Pro plan cost?", "k": 5}'
        elif exc.status_code == 401:
            fix = login_fix
        elif exc.status_code == 403:
            fix = (f"ask an Airflow admin for a role that may trigger {ASK_DAG} and read the Tandem DAGs' runs "
                   "(User, Op or Admin; a Viewer may read the status, not ask)")
        return _error(exc.status_code, str(exc.detail), fix, headers=getattr(exc, "headers", None))


def install_body_cap(app: FastAPI, limit_of: Callable[[Request], int]) -> None:
    """413 for a POST whose declared body is over ``limit_of(request)`` bytes, before the body is read."""

    @app.middleware("http")
    async def _cap_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.method == "POST" and length is not None:
            limit = limit_of(request)
            if not length.isdigit() or int(length) > limit:
                return _error(413, f"the request body is {length} bytes; at most {limit} are accepted",
                              'send JSON like {"question": "What does the Pro plan cost?", "k": 5}')
        return await call_next(request)


def token_path(settings: Settings) -> Path:
    return settings.airflow_home / "secrets" / "serve_token"


def serve_token(settings: Settings) -> str:
    """The serve process's bearer token: TANDEM_SERVE_TOKEN, else one generated once under TANDEM_HOME."""
    if settings.serve_token:
        return settings.serve_token
    return secret_files.read_or_create(token_path(settings), lambda: secrets.token_urlsafe(32))
