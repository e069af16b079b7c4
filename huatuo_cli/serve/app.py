"""The Starlette application: OpenAI's routes over one `Worker`.

Every response carries the not-for-diagnostic-use notice in an `X-Huatuo-Notice` header (and JSON
bodies in a `notice` field). With an API key every route but `/health` wants `Authorization: Bearer
<key>`. Bodies over `max_body` bytes are refused (413) while being read. Errors are OpenAI's shape
with PHI-free messages; an unexpected failure is a 500 that names only the exception's type in the
log. The log has one line per request: method, path (no query string), status, seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from huatuo_cli.answering.service import Stopped
from huatuo_cli.privacy import NOTICE
from huatuo_cli.serve import protocol
from huatuo_cli.serve.protocol import ApiError, ChatRequest
from huatuo_cli.serve.worker import Result, Worker

LOG = logging.getLogger("huatuo.serve")
NOTICE_HEADER = "X-Huatuo-Notice"
OPEN_PATHS = ("/health",)
#: the paths the log names as they are; any other is logged as a placeholder (a URL may hold anything)
LOGGED_PATHS = ("/health", "/v1/models", "/v1/chat/completions")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class Guard:
    """ASGI middleware: API key, notice header, one log line per request."""

    def __init__(self, app: ASGIApp, *, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode("utf-8") if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [0]

        async def send_with_notice(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (NOTICE_HEADER.lower().encode(), NOTICE.encode())]
            await send(message)

        try:
            if self.api_key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
                response = error_response(ApiError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                                                   type_="authentication_error", code="invalid_api_key",
                                                   headers={"WWW-Authenticate": "Bearer"}))
                await response(scope, receive, send_with_notice)
                return
            await self.app(scope, receive, send_with_notice)
        except Exception as exc:
            # Starlette answers an unexpected exception with our 500 handler (which logs its type) and then
            # re-raises it for the server to log: uvicorn would print the traceback and the message, which
            # may quote the request (a file name, a patient's name). It ends here, logged by type alone.
            if not status[0]:
                await error_response(ApiError(500, "internal error (see the server's log)", type_="server_error",
                                              code="internal_error"))(scope, receive, send_with_notice)
            LOG.error("internal error: %s (details withheld: they may quote the request)", type(exc).__name__)
        finally:
            path = scope.get("path", "")
            shown = path if path in LOGGED_PATHS else "/v1/models/{name}" if path.startswith("/v1/models/") else "<other>"
            LOG.info("%s %s %s %.3fs", str(scope.get("method", ""))[:10], shown, status[0] or "-",
                     time.perf_counter() - t0)

    def _authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False


async def read_json(request: Request, max_body: int) -> Any:
    """The body as JSON: 413 past `max_body` bytes (checked while reading), 400 when empty or malformed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise ApiError(413, f"the request body is larger than the server's limit ({max_body} bytes)",
                       code="body_too_large")
    chunks: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > max_body:
            raise ApiError(413, f"the request body is larger than the server's limit ({max_body} bytes)",
                           code="body_too_large")
        chunks.append(piece)
    raw = b"".join(chunks)
    if not raw.strip():
        raise protocol.bad_request("empty request body: send a JSON chat-completion request")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise protocol.bad_request("the request body is not valid JSON") from None


def create_app(worker: Worker, *, model_name: str, model_sha256: str, api_key: str | None = None,
               max_body: int = 64 * 1024 * 1024) -> ASGIApp:
    """The ASGI application (wrapped in `Guard`)."""

    def model_entry() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "huatuo",
                "model_sha256": model_sha256}

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": model_name, "model_sha256": model_sha256,
                             "queue": {"admitted": worker.admitted, "limit": worker.limit}, "notice": NOTICE})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_entry()], "notice": NOTICE})

    async def one_model(request: Request) -> Response:
        if request.path_params["name"] not in (model_name, model_sha256):
            raise ApiError(404, "no such model: this server serves one bundle (GET /v1/models)",
                           code="model_not_found", param="model")
        return JSONResponse({**model_entry(), "notice": NOTICE})

    async def chat(request: Request) -> Response:
        body = await read_json(request, max_body)
        chat_request = protocol.read_chat_request(body, max_images=worker.max_images)
        if isinstance(body, dict) and body.get("model") not in (None, "", model_name, model_sha256):
            raise ApiError(404, "no such model: this server serves one bundle (GET /v1/models)",
                           code="model_not_found", param="model")
        ticket = worker.admit()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        worker.active.add(stop)

        def on_text(text: str) -> None:  # in the worker thread
            loop.call_soon_threadsafe(events.put_nowait, ("text", text))

        future = loop.run_in_executor(worker.executor, worker.answer, chat_request, stop, on_text)

        def finished(done: asyncio.Future[Result]) -> None:
            ticket.release()
            worker.active.discard(stop)
            events.put_nowait(("done", None))
            if not done.cancelled():
                # retrieved here, whoever reads it later: a job whose client left (Stopped) is otherwise never
                # read, and asyncio prints "Future exception was never retrieved" with its traceback (paths,
                # the request's text) into the server's log
                done.exception()

        future.add_done_callback(finished)
        first = await _next_event(request, events, stop)
        if first[0] == "done" and (stop.is_set() or future.exception() is not None):
            _raise_outcome(future)
            return Response(status_code=499)  # the client has gone; nothing is sent
        cid = protocol.completion_id()
        if not chat_request.stream:
            while first[0] != "done":
                first = await _next_event(request, events, stop)
            _raise_outcome(future)
            if stop.is_set():
                return Response(status_code=499)
            result: Result = future.result()
            return JSONResponse(protocol.completion(
                cid=cid, model=model_name, text=result.answer.text, stopped_by=result.answer.stopped_by,
                prompt_tokens=result.answer.prompt_tokens, completion_tokens=result.answer.tokens,
                huatuo=_extension(result, model_sha256)))
        return StreamingResponse(_stream(request, chat_request, first, events, future, stop, cid=cid,
                                         model_name=model_name, model_sha256=model_sha256),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(ApiError(exc.status_code, str(exc.detail), code=code))

    async def internal_error(request: Request, exc: Exception) -> Response:
        LOG.error("internal error answering %s: %s (details withheld: they may quote the request)",
                  request.url.path, type(exc).__name__)
        return error_response(ApiError(500, "internal error (see the server's log)", type_="server_error",
                                       code="internal_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        worker.stop_all()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{name:path}", one_model, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    return Guard(app, api_key=api_key)


async def _next_event(request: Request, events: asyncio.Queue[tuple[str, Any]],
                      stop: threading.Event) -> tuple[str, Any]:
    """The worker's next event; meanwhile a client that disconnects sets `stop`."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), 0.25)
        except TimeoutError:
            if not stop.is_set() and await request.is_disconnected():
                stop.set()


def _raise_outcome(future: asyncio.Future[Result]) -> None:
    """Raise what the job raised, as the client should see it (Stopped: nothing to raise)."""
    exc = future.exception()
    if exc is None or isinstance(exc, Stopped):
        return
    raise exc


def _extension(result: Result, model_sha256: str) -> dict[str, Any]:
    answer = result.answer
    return {"model_sha256": model_sha256, "inputs": [{"sha256": h} for h in result.inputs.inputs],
            "window": result.inputs.window if result.inputs.images else None, "stopped_by": answer.stopped_by,
            "timings": {k: round(v, 4) for k, v in answer.timings.items()}}


class _Trim:
    """Streamed pieces whose concatenation is the answer as the non-streaming response gives it (the
    engine strips the answer's leading and trailing whitespace): leading whitespace is dropped,
    trailing whitespace held back until more text follows it."""

    def __init__(self) -> None:
        self.started = False
        self.held = ""

    def feed(self, piece: str) -> str:
        if not self.started:
            piece = piece.lstrip()
            if not piece:
                return ""
            self.started = True
        text = self.held + piece
        kept = text.rstrip()
        self.held = text[len(kept):]
        return kept


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


async def _stream(request: Request, chat_request: ChatRequest, first: tuple[str, Any],
                  events: asyncio.Queue[tuple[str, Any]], future: asyncio.Future[Result], stop: threading.Event, *,
                  cid: str, model_name: str, model_sha256: str) -> AsyncIterator[bytes]:
    created = int(time.time())
    try:
        yield _sse(protocol.chunk(cid=cid, model=model_name, created=created, delta={"role": "assistant", "content": ""}))
        event = first
        trim = _Trim()
        while event[0] == "text":
            piece = trim.feed(event[1])
            if piece:
                yield _sse(protocol.chunk(cid=cid, model=model_name, created=created, delta={"content": piece}))
            event = await _next_event(request, events, stop)
        exc = future.exception()
        if exc is not None:
            error = exc if isinstance(exc, ApiError) else ApiError(500, "internal error (see the server's log)",
                                                                   type_="server_error", code="internal_error")
            if not isinstance(exc, (ApiError, Stopped)):
                LOG.error("internal error while streaming: %s", type(exc).__name__)
            yield _sse(error.body())
            yield _sse("[DONE]")
            return
        result = future.result()
        figures = protocol.usage(result.answer.prompt_tokens, result.answer.tokens)
        yield _sse(protocol.chunk(cid=cid, model=model_name, created=created, delta={},
                                  finish=protocol.finish_reason(result.answer.stopped_by),
                                  huatuo=_extension(result, model_sha256)))
        if chat_request.include_usage:
            yield _sse(protocol.chunk(cid=cid, model=model_name, created=created, delta=None, usage_figures=figures))
        yield _sse("[DONE]")
    finally:
        if not future.done():
            stop.set()  # the client went away mid-stream: the worker stops at its next piece
