"""Edge side of the HTTP service: send a motion packet (or a video, through the edge pipeline) and time it.

`send_packet` posts the packet bytes to /v1/answer, or to /v1/choose when choices are given.
It returns a `Reply` with the server's JSON, the HTTP request size and two client timings.
round_trip runs from sending the request to the parsed response. network is the round trip
minus the server's compute: connection setup, upload, download and HTTP handling.
"""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from toau.channel.packet import MAGIC

DEFAULT_TIMEOUT_S = 120.0  # above the server's default request timeout, so the server's 504 arrives first
ANSWER_PATH = "/v1/answer"
CHOOSE_PATH = "/v1/choose"
HEALTH_PATH = "/healthz"


class ServiceRejected(Exception):
    """A non-2xx response: status, the server's detail and field, request id and Retry-After seconds."""

    def __init__(self, status: int, detail: str, field: str | None, request_id: str, retry_after: float | None):
        super().__init__(f"{status}: {detail}" + (f" (field {field})" if field else ""))
        self.status = status
        self.detail = detail
        self.field = field
        self.request_id = request_id
        self.retry_after = retry_after


@dataclass
class Reply:
    """A 2xx response of the service with sizes and client-side timings in ms."""

    body: dict  # the server's AnswerResponse or ChooseResponse JSON
    payload_bytes: int  # the packet
    request_bytes: int  # the HTTP request: request line, headers, blank line and packet
    timings_ms: dict = field(default_factory=dict)  # round_trip, network, and edge timings when the edge ran
    edge: dict | None = None  # the edge pipeline's summary, for video input

    @property
    def server_timings_ms(self) -> dict:
        return self.body["timings_ms"]


def http_request_bytes(request: httpx.Request) -> int:
    """Return the bytes of an HTTP/1.1 request as h11 writes them: request line, headers, blank line, body."""
    target = request.url.raw_path
    size = len(request.method.encode()) + 1 + len(target) + len(b" HTTP/1.1\r\n")
    size += sum(len(name) + 2 + len(value) + 2 for name, value in request.headers.raw)
    return size + 2 + len(request.content)


def server_compute_ms(timings: dict) -> float:
    """Return the server's time on a request other than receiving its body."""
    return timings["total"] - timings["receive"]


def _rejection(response: httpx.Response) -> ServiceRejected:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    detail = body.get("detail")
    if not isinstance(detail, str):  # a proxy or an older server may send a list or an object
        detail = str(detail)
    retry_after = response.headers.get("retry-after")
    return ServiceRejected(
        response.status_code,
        detail,
        body.get("field"),
        response.headers.get("x-request-id", ""),
        float(retry_after) if retry_after else None,
    )


def send_packet(
    url: str,
    packet: bytes,
    question: str,
    *,
    choices: list[str] | None = None,
    max_new_tokens: int | None = None,
    client: httpx.Client | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Reply:
    """Post packet bytes with a question to the service at url; raise ServiceRejected for non-2xx statuses.

    Without a client, a new connection is opened for this request and closed afterwards.
    """
    params: dict = {"question": question}
    if choices is not None:
        params["choice"] = list(choices)
    if max_new_tokens is not None:
        params["max_new_tokens"] = max_new_tokens
    path = CHOOSE_PATH if choices is not None else ANSWER_PATH
    owned = client is None
    client = client or httpx.Client(timeout=timeout_s)
    try:
        request = client.build_request(
            "POST", url.rstrip("/") + path, params=params, content=packet,
            headers={"Content-Type": "application/octet-stream"},
        )
        started = time.perf_counter()
        response = client.send(request)
        if response.status_code // 100 != 2:
            raise _rejection(response)
        body = response.json()
        round_trip = 1000 * (time.perf_counter() - started)
    finally:
        if owned:
            client.close()
    timings = {"round_trip": round_trip, "network": round_trip - server_compute_ms(body["timings_ms"])}
    return Reply(body, len(packet), http_request_bytes(request), timings)


def health(url: str, timeout_s: float = 10.0) -> dict:
    """Return the service's /healthz JSON (raises httpx errors when it is down)."""
    response = httpx.get(url.rstrip("/") + HEALTH_PATH, timeout=timeout_s)
    response.raise_for_status()
    return response.json()


def is_packet_file(path: str | os.PathLike) -> bool:
    """Return whether the file starts with the packet magic bytes."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def send_file(url: str, path: str | os.PathLike, question: str, **options) -> Reply:
    """Send a packet file, or run the edge pipeline on a video file and send its packet.

    options go to `send_packet`, except `tokenizer` (folder) and `stream` for videos.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass a packet written by `toau encode` or a video")
    tokenizer = options.pop("tokenizer", None)
    stream = options.pop("stream", False)
    if is_packet_file(path):
        return send_packet(url, path.read_bytes(), question, **options)
    if tokenizer is None:
        raise ValueError(f"{path} is a video, so the edge pipeline needs tokenizer= (a tokenizer folder)")
    return send_video(url, path, question, tokenizer=tokenizer, stream=stream, **options)


def send_video(url: str, video: str | os.PathLike, question: str, *, tokenizer, stream: bool = False,
               params=None, **options) -> Reply:
    """Run the edge pipeline on a video, send its packet, and add the edge timings to the reply.

    stream feeds the frames one at a time through `EdgeStream`. The reply's timings gain
    edge (the pipeline's stage time) and edge_after_last_frame (from the last decoded frame
    to the packet), and `edge` contains the pipeline's summary.
    """
    from toau.edge.pipeline import run_edge, stream_video

    result = (stream_video if stream else run_edge)(video, tokenizer, params)
    reply = send_packet(url, result.packet, question, **options)
    reply.timings_ms["edge"] = result.timings_ms.total
    reply.timings_ms["edge_after_last_frame"] = result.after_last_frame_ms
    reply.edge = result.summary()
    return reply
