"""The FastAPI app: /health, /v1/models, /v1/chat/completions (JSON or server-sent events).

The body is read here, not by FastAPI, so that its size (413) and the time to send it (408) are
bounded before anything is parsed; then pydantic validates it in a worker thread (400 for broken
JSON, 422 naming the field).  Per-request limits (images, pixels, aspect ratio, decoded image bytes
in flight, prompt tokens, max_tokens) are checked in a thread pool before the request is queued, so
a bad request never reaches the worker.  A client that disconnects while queued is dropped from the
queue (`Future.cancel`).  Answers are strict JSON (no NaN).  Host, framing and the count of requests
in flight are checked first (prp.route.server.guards, RefuseAmbiguousFraming).
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from prp.route.server.chat import RequestError
from prp.route.server.guards import CheckHost, CountRequests
from prp.route.server.images import ImageBudget, reuse_pixel_blocks
from prp.route.server.limits import ServeLimits, is_loopback
from prp.route.server.schemas import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    ChatRequest,
    error_body,
    sse_events,
    strict_json,
    validation_message,
)
from prp.route.server.worker import QueueFull, Worker

log = logging.getLogger(__name__)


class ClientGone(Exception):
    pass


def _error(status: int, message: str, *, param: str | None = None, close: bool = False,
           headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    hdrs = dict(headers or {})
    if close:  # the body was not read to its end: this connection cannot carry another request
        hdrs["Connection"] = "close"
    return JSONResponse(error_body(message, kind=kind, param=param), status_code=status, headers=hdrs)


async def read_body(request: Request, limits: ServeLimits) -> bytes:
    """The whole body, at most `max_body_bytes` (413) within `body_timeout_s` (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes):
        raise RequestError(413 if declared.isdigit() else 400,
                           f"request body over the limit of {limits.max_body_bytes} bytes"
                           if declared.isdigit() else "bad Content-Length")
    body = bytearray()

    async def pull() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limits.max_body_bytes:
                raise RequestError(413, f"request body over the limit of {limits.max_body_bytes} bytes")

    try:
        await asyncio.wait_for(pull(), timeout=limits.body_timeout_s)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        raise RequestError(408, f"the body was not received within {limits.body_timeout_s:g}s") from None
    return bytes(body)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def await_answer(request: Request, future, timeout_s: float):
    """The worker's answer; cancels the job when the client leaves or the time is up."""
    answer = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({answer, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if answer in done:
        return answer.result()
    future.cancel()  # still queued: dropped before any work; already running: its answer is discarded
    answer.cancel()
    if gone in done:
        raise ClientGone
    raise RequestError(504, f"no answer within {timeout_s:g}s")


class RefuseAmbiguousFraming:
    """ASGI middleware: a request with both Transfer-Encoding and Content-Length gets 400 and the connection is
    closed (RFC 9112 6.1: such a message "might indicate an attempt to perform request smuggling"; a proxy that
    frames by Content-Length would otherwise see the rest of the chunked body as a second request)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            names = {name.lower() for name, _ in scope["headers"]}
            if b"transfer-encoding" in names and b"content-length" in names:
                refusal = _error(400, "both Transfer-Encoding and Content-Length: ambiguous framing", close=True)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _content_type_json(request: Request) -> bool:
    """A POST must say `application/json` (parameters such as charset allowed).  A web page can send
    a cross-site POST without asking first only as text/plain, form data or multipart; requiring
    JSON makes the browser ask (CORS preflight), and this server never says yes."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


# a body over this is parsed only when no other such body is (503 otherwise): 200,000 empty messages
# (6.6 MB) take ~0.5 s of CPU to parse and refuse, and the GIL they hold slows the model's thread
LARGE_BODY_BYTES = 1024 * 1024
MAX_KEY_TOKENS = 8 * MAX_MESSAGES  # "role" / "type" tokens in a body; more is refused before parsing


def validate_request(raw: bytes) -> ChatRequest:
    """pydantic on the body (run in a worker thread: 200,000 messages take ~1 s to parse and
    reject, which would stall every other client, /health included, on the event loop)."""
    for key, param in ((b'"role"', "messages"), (b'"type"', "messages.content")):
        # a count of the key's string tokens (escaped quotes inside text never match) at C speed: an
        # upper bound on messages / content parts, checked before pydantic spends ~0.5 s of the GIL
        # (which the model's thread needs too) building 200,000 messages only to refuse them
        if (count := raw.count(key)) > MAX_KEY_TOKENS:
            raise RequestError(422, f"{count} {key.decode()} fields: over the limit of {MAX_MESSAGES} messages "
                                    f"of {MAX_CONTENT_PARTS} parts", param)
    try:
        return ChatRequest.model_validate_json(raw)
    except ValidationError as exc:
        error = _validation_error(exc.errors(include_url=False, include_input=False))
    # raised here, not in the except block: the ValidationError holds the whole parsed input (~75 MB for
    # 200,000 messages), and as this error's __context__ it stayed alive in reference cycles until a
    # full garbage collection; two clients grew the router by gigabytes that way
    raise error


def _validation_error(errors: list[dict]) -> RequestError:
    if any(e["type"] == "json_invalid" for e in errors):
        return RequestError(400, "the body is not valid JSON (UTF-8)")
    message, param = validation_message(errors)
    return RequestError(422, message, param)


def render(body: dict, *, stream: bool) -> Response:
    """The answer as strict JSON (no NaN / Infinity tokens), or as server-sent events."""
    if stream:
        return StreamingResponse(iter(sse_events(body)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return Response(strict_json(body), media_type="application/json")


def build_app(backend, worker: Worker, limits: ServeLimits, *, api_key: str | None = None,
              bind_host: str = "127.0.0.1") -> FastAPI:
    # no trailing-slash redirect: Starlette's would build its Location from the client's Host header
    app = FastAPI(title="PRP router", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    # added last = outermost: Host first, then framing, then the count of requests in flight
    app.add_middleware(CountRequests, limit=limits.limit_concurrency)
    app.add_middleware(RefuseAmbiguousFraming)
    if is_loopback(bind_host):
        app.add_middleware(CheckHost, extra_names=limits.allowed_hosts)
    key = api_key.encode() if api_key else None
    images = ImageBudget(limits.image_bytes_budget())
    large_bodies = threading.Semaphore(1)
    reuse_pixel_blocks(images.max_bytes)
    app.state.image_budget = images

    def unauthorized(request: Request) -> JSONResponse | None:
        if key is None:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key):
            return None
        return _error(401, "missing or wrong API key (Authorization: Bearer ...)",
                      headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.get("/health")
    async def health():
        state = {"model": backend.name, **worker.health(), "image_bytes_in_flight": images.used}
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)

    @app.get("/v1/models")
    async def models(request: Request):
        if (denied := unauthorized(request)) is not None:
            return denied
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "created": int(time.time()),
                                            "owned_by": "prp"}]}

    async def chat(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        if not _content_type_json(request):
            return _error(415, "Content-Type must be application/json", close=True)
        try:
            raw = await read_body(request, limits)
        except RequestError as exc:
            return _error(exc.status, exc.message, close=True)
        ticket = images.ticket()
        try:
            if len(raw) > LARGE_BODY_BYTES:  # one large body at a time: CPU for everyone else's requests
                if not large_bodies.acquire(blocking=False):
                    return _error(503, "server busy parsing another large request body", headers={"Retry-After": "1"})
                try:
                    req = await run_in_threadpool(validate_request, raw)
                finally:
                    large_bodies.release()
            else:
                req = await run_in_threadpool(validate_request, raw)
            del raw  # the parsed request holds what is needed; up to --max-body-bytes less in flight
            fault = backend.fault() if hasattr(backend, "fault") else None
            if fault == "503":
                return _error(503, "injected fault")
            if fault == "close":
                return _dropped_connection()
            if fault == "timeout":
                await asyncio.sleep(backend.faults["delay"])
            item = await run_in_threadpool(backend.prepare, req, ticket)
            future = worker.submit(item)
            body = await await_answer(request, future, limits.request_timeout_s)
            return render(body, stream=req.stream)
        except RequestError as exc:
            return _error(exc.status, exc.message, param=exc.param,
                          headers={"Retry-After": "1"} if exc.status == 503 else None)
        except QueueFull as exc:
            return _error(503, f"server busy: {exc}", headers={"Retry-After": "1"})
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; uvicorn closes the connection
        except Exception as exc:  # this request failed on its own (the worker isolated it), or its answer
            log.warning("a request failed: %s: %s", type(exc).__name__, exc)  # held NaN (strict JSON)
            return _error(500, f"the model failed on this request ({type(exc).__name__})")
        finally:
            ticket.release()  # answered, refused or abandoned: its images are no longer in flight

    app.add_api_route("/v1/chat/completions", chat, methods=["POST"])
    app.add_api_route("/chat/completions", chat, methods=["POST"])
    return app


def _dropped_connection() -> Response:
    """TEST-ONLY fault: promise a body, send part of it, fail: the client sees the connection drop."""

    async def partial():
        yield b'{"choices": ['
        raise ConnectionAbortedError("injected fault: connection dropped")

    return StreamingResponse(partial(), media_type="application/json", headers={"Content-Length": "4096"})
