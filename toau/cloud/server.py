"""HTTP front of the cloud service: FastAPI endpoints over a `BatchWorker`.

Endpoints (schema at /openapi.json):
  POST /v1/answer?question=...[&max_new_tokens=...]   body: the packet bytes
  POST /v1/choose?question=...&choice=...&choice=...   body: the packet bytes
  GET  /healthz

The packet travels as the raw request body (Content-Type application/octet-stream), so the
bytes on the wire are the packet itself with no base64 or multipart framing. The text fields
travel in the query string, percent-encoded UTF-8.

Status codes:
  400 malformed packet, naming the packet field that failed
  408 body not received within the request timeout
  409 packet made with another codebook or index model
  413 body, packet or prompt too large
  422 invalid query parameters
  500 model failure
  503 queue full (with Retry-After) or shutting down
  504 request timed out

Every response carries X-Request-ID, and every rejection is logged with its request id and
reason. Every error body is {"detail", "field", "request_id"}.
"""

import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Callable

import httpx
import uvicorn
from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from toau.channel.packet import (
    CodebookMismatchError,
    EntropyModelMismatchError,
    MotionPacket,
    OversizedPacketError,
    PacketError,
)
from toau.cloud.service import (
    BatchWorker,
    Job,
    JobResult,
    ModelBundle,
    QueueFullError,
    ServiceLimits,
    ServiceStoppedError,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # ids taken from clients, so logs stay clean
PACKET_MEDIA_TYPE = "application/octet-stream"
SERVER_START_TIMEOUT_S = 30.0
LISTENING_MESSAGE = "listening on http://%s:%d"  # `ServerProcess` reads the URL from this log line
# Idle keep-alive connections close after this many seconds. It exceeds httpx's default
# keepalive_expiry (5 s): with equal values, a client can send a request on a connection
# that the server is closing at that moment and get a ReadError instead of a status.
KEEP_ALIVE_S = 15

PACKET_BODY = {
    "requestBody": {
        "required": True,
        "description": "The motion packet bytes as written by toau.channel.packet.encode_packet.",
        "content": {PACKET_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


# ---------------------------------------------------------------- response schemas


class Timings(BaseModel):
    """Server-side milliseconds of one request."""

    receive: float = Field(description="reading the request body")
    parse: float = Field(description="checking and unpacking the packet")
    decode: float = Field(description="VQ-VAE decoding of the indices into features")
    prefill: float = Field(description="projector, prompt and the LLM's first forward pass (the whole scoring pass for /v1/choose)")
    generation: float = Field(description="later decoding steps of the LLM (0 for /v1/choose)")
    queue_wait: float = Field(description="waiting for the batch worker")
    total: float = Field(description="arrival of the request to the response")


class AnswerResponse(BaseModel):
    request_id: str
    answer: str
    index_count: int
    frame_count: int
    batch_size: int = Field(description="requests answered by the same generate call")
    timings_ms: Timings


class ChooseResponse(BaseModel):
    request_id: str
    scores: list[float] = Field(description="log-likelihood of each choice as the answer")
    choice: int = Field(description="index of the highest-scoring choice")
    index_count: int
    frame_count: int
    timings_ms: Timings


class HealthResponse(BaseModel):
    status: str
    llm: str
    codebook_hash: str
    codebook_size: int
    frames_per_index: int
    queue_depth: int
    max_queue: int
    max_batch: int


class ErrorResponse(BaseModel):
    detail: str
    field: str | None = Field(None, description="the packet field or query parameter that failed")
    request_id: str


ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "malformed packet",
        408: "request body not received in time",
        409: "packet made with another codebook or index model",
        413: "body, packet or prompt too large",
        422: "invalid query parameters",
        500: "model failure",
        503: "queue full (see Retry-After) or shutting down",
        504: "request timed out",
    }.items()
}


# ---------------------------------------------------------------- errors


class ServiceError(Exception):
    """A request the server rejects with `status`; the handler logs it and returns an ErrorResponse."""

    def __init__(self, status: int, message: str, *, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}


def packet_error_status(error: PacketError) -> int:
    """Map a packet error to its HTTP status: 409 other codebook, 413 too many indices, 400 otherwise."""
    if isinstance(error, (CodebookMismatchError, EntropyModelMismatchError)):
        return 409
    if isinstance(error, OversizedPacketError) and error.field == "index_count":
        return 413
    return 400


def request_id(request: Request) -> str:
    """Return the request's id: a valid X-Request-ID header, else a new random one (stored per request)."""
    if not hasattr(request.state, "request_id"):
        header = request.headers.get(REQUEST_ID_HEADER, "")
        request.state.request_id = header if REQUEST_ID_PATTERN.match(header) else uuid.uuid4().hex[:16]
    return request.state.request_id


def _ms(seconds: float) -> float:
    return 1000 * seconds


# ---------------------------------------------------------------- request steps


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body, rejecting it with 413 as soon as the declared or the counted size exceeds limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceError(400, f"Content-Length is {declared!r}, not a byte count")
        if int(declared) > limit:
            raise ServiceError(413, f"request body is {declared} bytes, above the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _remaining(deadline: float) -> float:
    return deadline - time.perf_counter()


class _Handler:
    """The steps every motion request shares: receive, parse, check, queue and wait."""

    def __init__(self, bundle: ModelBundle, limits: ServiceLimits, worker: BatchWorker):
        self.bundle = bundle
        self.limits = limits
        self.worker = worker

    async def receive_packet(self, request: Request, deadline: float) -> tuple[MotionPacket, dict]:
        started = time.perf_counter()
        try:
            body = await asyncio.wait_for(_read_body(request, self.limits.max_body_bytes), _remaining(deadline))
        except TimeoutError:
            raise ServiceError(
                408, f"the request body did not arrive within the {self.limits.request_timeout_s} s request timeout"
            ) from None
        except ClientDisconnect:
            # The client never reads this response, but the rejection is still logged with the request id.
            raise ServiceError(400, "the client disconnected before sending the whole body") from None
        received = time.perf_counter()
        try:
            packet = await run_in_threadpool(self.bundle.parse, body, self.limits.max_indices)
        except PacketError as error:
            raise ServiceError(packet_error_status(error), str(error), field=error.field) from None
        timings = {"receive": _ms(received - started), "parse": _ms(time.perf_counter() - received)}
        return packet, timings

    async def serve(
        self, request: Request, question: str, make_job: Callable[[str, MotionPacket], Job]
    ) -> tuple[str, MotionPacket, JobResult, Timings]:
        """Receive and check the packet, run the job `make_job(request id, packet)` builds, and time it.

        Returns (request id, packet, result, timings); every step raises ServiceError on failure.
        """
        started = time.perf_counter()
        deadline = started + self.limits.request_timeout_s
        rid = request_id(request)
        if not question.strip():
            raise ServiceError(422, "the question has no non-space character; send the question text", field="question")
        packet, step_timings = await self.receive_packet(request, deadline)
        self.check_prompt(packet, question)
        result = await self.run(make_job(rid, packet), deadline)
        return rid, packet, result, _timings(step_timings, result, started)

    def check_prompt(self, packet: MotionPacket, question: str) -> None:
        try:
            self.bundle.check_prompt(packet.index_count, question)
        except ValueError as error:
            raise ServiceError(413, f"the motion and question do not fit the language model: {error}") from None

    async def run(self, job: Job, deadline: float) -> JobResult:
        retry = self.limits.retry_after_s
        try:
            future = self.worker.submit(job)
        except QueueFullError as error:
            raise ServiceError(
                503, f"the server is busy ({error}); retry after {retry} s", headers={"Retry-After": str(retry)}
            ) from None
        except ServiceStoppedError as error:
            raise ServiceError(503, str(error), headers={"Retry-After": str(retry)}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, _remaining(deadline)))
        except TimeoutError:
            future.cancel()  # a job still in the queue is skipped; a running one finishes unused
            raise ServiceError(
                504,
                f"the request timed out after {self.limits.request_timeout_s} s "
                f"({self.worker.queue_depth} requests queued); retry later or send a shorter clip",
            ) from None
        except ServiceStoppedError as error:
            raise ServiceError(503, str(error), headers={"Retry-After": str(retry)}) from None
        except Exception as error:
            raise ServiceError(500, f"the model failed on this request: {type(error).__name__}: {error}") from None


def _timings(step_timings: dict, result: JobResult, started: float) -> Timings:
    return Timings(**step_timings, **result.timings_ms, total=_ms(time.perf_counter() - started))


# ---------------------------------------------------------------- app


def create_app(bundle: ModelBundle, limits: ServiceLimits = ServiceLimits()) -> FastAPI:
    """Build the FastAPI app; its lifespan starts and stops the batch worker."""
    worker = BatchWorker(bundle, limits)
    handler = _Handler(bundle, limits, worker)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        log.info(
            "server started: llm %s, codebook hash %s, limits %s", bundle.llm_name, bundle.codebook_hash.hex(), limits
        )
        try:
            yield
        finally:
            await run_in_threadpool(worker.stop)
            log.info("server stopped")

    app = FastAPI(
        title="TOAU cloud service",
        summary="Answers questions about human motion sent as VQ-VAE codebook-index packets.",
        lifespan=lifespan,
    )
    app.state.worker = worker

    @app.exception_handler(ServiceError)
    async def service_error_handler(request: Request, error: ServiceError) -> JSONResponse:
        rid = request_id(request)
        level = logging.ERROR if error.status >= 500 and error.status not in (503, 504) else logging.WARNING
        log.log(level, "request %s rejected with %d: %s", rid, error.status, error.message)
        body = ErrorResponse(detail=error.message, field=error.field, request_id=rid)
        headers = {**error.headers, REQUEST_ID_HEADER: rid}
        return JSONResponse(body.model_dump(), status_code=error.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error_handler(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own body is a list that echoes the input; this keeps one error format for clients
        # and keeps long inputs out of the log.
        problems = [(str(item["loc"][-1]), item["msg"]) for item in error.errors()]
        detail = "; ".join(f"{name}: {message}" for name, message in problems)
        return await service_error_handler(request, ServiceError(422, detail, field=problems[0][0] if problems else None))

    @app.middleware("http")
    async def add_request_id(request: Request, call_next) -> Response:
        # Endpoints and error handlers set the header themselves; this covers 404, 405 and /healthz.
        response = await call_next(request)
        if REQUEST_ID_HEADER not in response.headers:
            response.headers[REQUEST_ID_HEADER] = request_id(request)
        return response

    question_query = Query(
        min_length=1, max_length=limits.max_question_chars, description="the question about the motion (UTF-8)"
    )

    @app.post(
        "/v1/answer",
        response_model=AnswerResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=PACKET_BODY,
        summary="Answer a question about the motion in the packet",
    )
    async def answer(
        request: Request,
        response: Response,
        question: Annotated[str, question_query],
        max_new_tokens: Annotated[
            int | None, Query(ge=1, le=limits.max_new_tokens, description="max generated tokens")
        ] = None,
    ) -> AnswerResponse:
        def make_job(rid: str, packet: MotionPacket) -> Job:
            return Job(rid, packet.indices, question, None, max_new_tokens or limits.max_new_tokens)

        rid, packet, result, timings = await handler.serve(request, question, make_job)
        response.headers[REQUEST_ID_HEADER] = rid
        return AnswerResponse(
            request_id=rid,
            answer=result.answer,
            index_count=packet.index_count,
            frame_count=packet.frame_count,
            batch_size=result.batch_size,
            timings_ms=timings,
        )

    @app.post(
        "/v1/choose",
        response_model=ChooseResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=PACKET_BODY,
        summary="Score the choices of a multiple-choice question about the motion in the packet",
    )
    async def choose(
        request: Request,
        response: Response,
        question: Annotated[str, question_query],
        choices: Annotated[
            list[str],
            Query(alias="choice", min_length=2, max_length=limits.max_choices, description="repeat once per choice"),
        ],
    ) -> ChooseResponse:
        if any(not choice.strip() for choice in choices):
            raise ServiceError(422, "every choice must contain a non-space character", field="choice")
        longest = max(len(choice) for choice in choices)
        if longest > limits.max_choice_chars:
            raise ServiceError(
                422, f"a choice has {longest} characters, more than the limit of {limits.max_choice_chars}; "
                "shorten it", field="choice",
            )
        rid, packet, result, timings = await handler.serve(
            request, question, lambda rid, packet: Job(rid, packet.indices, question, tuple(choices))
        )
        response.headers[REQUEST_ID_HEADER] = rid
        return ChooseResponse(
            request_id=rid,
            scores=result.scores,
            choice=max(range(len(choices)), key=result.scores.__getitem__),
            index_count=packet.index_count,
            frame_count=packet.frame_count,
            timings_ms=timings,
        )

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness and the loaded models")
    async def healthz() -> HealthResponse:
        return HealthResponse(
            status="ok",
            llm=bundle.llm_name,
            codebook_hash=bundle.codebook_hash.hex(),
            codebook_size=bundle.tokenizer.codebook_size,
            frames_per_index=bundle.tokenizer.frames_per_index,
            queue_depth=worker.queue_depth,
            max_queue=limits.max_queue,
            max_batch=limits.max_batch,
        )

    return app


# ---------------------------------------------------------------- running


def bind_socket(host: str = DEFAULT_HOST, port: int = 0) -> socket.socket:
    """Bind a TCP socket for uvicorn; port 0 picks a free port (read it with getsockname())."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def uvicorn_config(app: FastAPI, *, log_level: str = "info", access_log: bool = False) -> uvicorn.Config:
    # The service logs its own rejections, so uvicorn's access log is off by default.
    return uvicorn.Config(
        app, log_level=log_level, access_log=access_log, lifespan="on", log_config=None, timeout_keep_alive=KEEP_ALIVE_S
    )


def serve(app: FastAPI, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, access_log: bool = False) -> None:
    """Serve the app in this thread until SIGINT or SIGTERM."""
    sock = bind_socket(host, port)
    log.info(LISTENING_MESSAGE, host, sock.getsockname()[1])
    uvicorn.Server(uvicorn_config(app, access_log=access_log)).run(sockets=[sock])


class ServerThread:
    """Run the app with uvicorn in a background thread on host:port (0 picks a free port).

    Use as a context manager; `url` is the base URL once started.
    """

    def __init__(self, app: FastAPI, host: str = DEFAULT_HOST, port: int = 0, *, log_level: str = "warning"):
        self.socket = bind_socket(host, port)
        self.host = host
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(app, log_level=log_level))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="toau-server", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start within {SERVER_START_TIMEOUT_S} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(SERVER_START_TIMEOUT_S)
        self.socket.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class ServerProcess:
    """`toau serve` with serve_args in a subprocess; `url` is read from its log once it starts.

    wrapper goes before the Python command, e.g. `ip netns exec NAME` to run the server in a
    network namespace. The log (stdout and stderr) goes to log_path. Use as a context manager.
    """

    def __init__(self, serve_args: list[str], log_path: str | os.PathLike, *, wrapper: tuple[str, ...] = (),
                 cwd: str | os.PathLike | None = None, start_timeout_s: float = 600.0):
        self.command = [*wrapper, sys.executable, "-m", "toau.cloud.commands", "serve", *serve_args]
        self.log_path = log_path
        self.cwd = cwd
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.url = ""

    def log_text(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def start(self) -> "ServerProcess":
        """Start the process and wait until /healthz returns 200; raise RuntimeError with the log tail if not."""
        pattern = re.compile(LISTENING_MESSAGE.replace("%s:%d", r"(\S+)"))
        with open(self.log_path, "w") as log_file:
            self.process = subprocess.Popen(self.command, stdout=log_file, stderr=subprocess.STDOUT, cwd=self.cwd)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}:\n{self.log_text()[-2000:]}")
            match = pattern.search(self.log_text())
            if match:
                url = "http://" + match.group(1)
                try:
                    if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                        self.url = url
                        return self
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"/healthz did not return 200 within {self.start_timeout_s} s:\n{self.log_text()[-2000:]}")

    def stop(self, timeout_s: float = 60.0) -> None:
        """Send SIGTERM, which uvicorn handles by finishing open requests, and kill after timeout_s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
