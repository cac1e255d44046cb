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
from tandem.errors import NotFound, ServiceUnavailable, TandemError, UserError
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


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"trace_id": "tr-0123456789abcdef0123456789abcdef", "rating": "down",
                      "comment": "wrong price", "corrected_answer": "The Pro plan costs $49 per month."}]})

    trace_id: str = Field(pattern=r"^tr-[0-9a-f]{32}$",
                          description="The answer's trace id (its `trace_id` field, or the X-Tandem-Trace header).")
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=2000, description="Why (at most 2000 characters).")
    corrected_answer: str | None = Field(None, min_length=1, max_length=4000,
                                         description="What the answer should have been (at most 4000 characters).")


class FeedbackResponse(BaseModel):
    trace_id: str
    rating: Literal["up", "down"]
    feedback_id: str
    expectation_id: str | None = None


class Source(BaseModel):
    doc_id: str
    title: str
    uri: str
    locations: list[str] = Field([], description="Where in the document its retrieved chunks are: PDF pages "
                                                 "('p. 12'), slides ('slide 3'), sheets ('sheet Prices'); "
                                                 "empty for text formats.")


class Retrieved(BaseModel):
    doc_id: str
    chunk_id: str
    title: str
    uri: str
    score: float
    vector_similarity: float | None
    location: str = Field("", description="The chunk's page, slide or sheet ('' for text formats).")


class AskResponse(BaseModel):
    answer: str = Field(description="The answer (the spec's refusal text when the context lacks it).")
    citations: list[str] = Field(description="Doc ids of the context the answer cites (a subset of `retrieved`).")
    confidence: Literal["high", "medium", "low"]
    sources: list[Source] = Field(description="The cited documents with title and URI, in citation order.")
    timings: dict[str, float] = Field(description="retrieval_ms, generation_ms, adapter_load_ms, total_ms")
    adapter: str = Field(description="The adapter that answered: 'base' or 'v<version>'.")
    index_version: int | None
    refused: bool = Field(description="True: refused without generating (best similarity under the threshold).")
    best_similarity: float | None
    threshold: float
    valid: bool = Field(description="Whether the model's output met the contract as generated.")
    violations: list[str]
    retrieved: list[Retrieved]
    raw_output: str | None
    question: str
    trace_id: str | None = Field(None, description="The answer's MLflow trace (also the X-Tandem-Trace header); "
                                                   "null when tracing is off or the trace was dropped.")


class ErrorBody(BaseModel):
    error: str
    fix: str | None = None


ERRORS = {400: {"model": ErrorBody, "description": "bad input (names the input and the fix)"},
          401: {"model": ErrorBody, "description": "not authenticated (log in to Airflow, or send a bearer token)"},
          403: {"model": ErrorBody, "description": "logged in without the permission (asking: trigger behavior_eval)"},
          404: {"model": ErrorBody, "description": "feedback for a trace id MLflow does not hold"},
          413: {"model": ErrorBody, "description": "the request body is over TANDEM_ASK_MAX_BODY_BYTES"},
          422: {"model": ErrorBody, "description": "the request body does not match the schema"},
          429: {"model": ErrorBody, "description": "the plugin already forwards TANDEM_FORWARD_MAX_CONCURRENT asks"},
          502: {"model": ErrorBody, "description": "`tandem serve` sent a reply that is not JSON or is too large"},
          503: {"model": ErrorBody, "description": "no index, no champion, or Postgres/MLflow down: says what to run"}}


ASK_EXAMPLE = '{"question": "What does the Pro plan cost?", "k": 5}'
FEEDBACK_EXAMPLE = '{"trace_id": "tr-<32 hex digits>", "rating": "up", "comment": "clear and right"}'


def example_body(request: Request) -> str:
    """A body the route ``request`` went to accepts (the fix of a 400, 413 or 422)."""
    return FEEDBACK_EXAMPLE if request.url.path.endswith("/feedback") else ASK_EXAMPLE


def body_limit(settings: Settings, request: Request) -> int:
    """The largest body the route of ``request`` accepts."""
    feedback = request.url.path.endswith("/feedback")
    return settings.feedback_max_body_bytes if feedback else settings.ask_max_body_bytes


def answer_headers(result) -> dict[str, str]:
    """The reply headers of an answer: the exact adapter version, and its MLflow trace when recorded."""
    headers = {"X-Tandem-Adapter": result.adapter}
    if result.trace_id:
        headers["X-Tandem-Trace"] = result.trace_id
    return headers


def _error(status: int, message: str, fix: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "fix": fix}, status_code=status, headers=headers)


AIRFLOW_LOGIN_FIX = "log in to the Airflow UI, or send 'Authorization: Bearer <token>' (POST /auth/token)"


def install_error_handlers(app: FastAPI, login_fix: str = AIRFLOW_LOGIN_FIX) -> None:
    """JSON errors {"error", "fix"}: bad input 400/422, unauthenticated 401, a missing index or champion 503."""

    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound):
        return _error(404, exc.message, exc.fix)

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

    @app.exception_handler(Exception)  # a bug or an unforeseen failure: JSON that says where to look, not bare text
    async def _unexpected(request: Request, exc: Exception):
        log.error("unexpected %s on %s %s: %s (the traceback follows from the server)", type(exc).__name__,
                  request.method, request.url.path, exc)
        return _error(500, f"an unexpected error answering {request.url.path}: {type(exc).__name__}: {exc}"[:500],
                      "this is not your request's fault: the process's log has the traceback; retry, and report "
                      "it if it repeats")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg')}")
        return JSONResponse({"error": "invalid request: " + "; ".join(problems),
                             "fix": f"send JSON like {example_body(request)}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own (a body it cannot parse) and the routes'
    async def _http(request: Request, exc: StarletteHTTPException):
        fix = None
        if exc.status_code == 400:
            fix = f"send the body as UTF-8 JSON, like {example_body(request)}"
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
                              f"send JSON like {example_body(request)}")
        return await call_next(request)


def token_path(settings: Settings) -> Path:
    return settings.airflow_home / "secrets" / "serve_token"


def serve_token(settings: Settings) -> str:
    """The serve process's bearer token: TANDEM_SERVE_TOKEN, else one generated once under TANDEM_HOME."""
    if settings.serve_token:
        return settings.serve_token
    return secret_files.read_or_create(token_path(settings), lambda: secrets.token_urlsafe(32))
