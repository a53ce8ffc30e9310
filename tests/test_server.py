"""The HTTP service on a loopback port with tiny random models: answers, every limit, batching and logs."""

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from toau.channel.codec import packet_bytes
from toau.cloud import commands
from toau.channel.packet import MotionPacket, encode_packet
from toau.cloud.server import DEFAULT_HOST, DEFAULT_PORT, REQUEST_ID_HEADER, ServerThread, create_app
from toau.cloud.service import (
    BatchWorker,
    Job,
    ModelBundle,
    ServiceLimits,
    ServiceStoppedError,
    random_tokenizer,
    tiny_bundle,
)
from toau.edge.client import ServiceRejected, http_request_bytes, send_packet

QUESTION = "what is the person doing?"
NEW_TOKENS = 4  # tiny-model generation costs ~30 ms per token on a loaded 2-core machine
SMALL = ServiceLimits(max_body_bytes=2048, max_indices=64, max_new_tokens=NEW_TOKENS, max_queue=16, max_batch=8)


class GatedBundle(ModelBundle):
    """A bundle whose model calls wait until `release` is set, so tests can hold the worker busy."""

    def __post_init__(self):
        super().__post_init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def _wait(self):
        self.entered.set()
        assert self.release.wait(20), "the test never released the gated bundle"

    def generate(self, *args, **kwargs):
        self._wait()
        return super().generate(*args, **kwargs)


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return tiny_bundle(seed=0)


@pytest.fixture(scope="module")
def server(bundle):
    with ServerThread(create_app(bundle, SMALL)) as running:
        yield running


@pytest.fixture
def gated(bundle):
    """A server with a gated bundle, a 1.5 s timeout and room for 2 queued requests."""
    gated_bundle = GatedBundle(bundle.tokenizer, bundle.model, bundle.llm_name)
    limits = ServiceLimits(max_new_tokens=NEW_TOKENS, request_timeout_s=1.5, max_queue=2, max_batch=8)
    running = ServerThread(create_app(gated_bundle, limits)).start()
    try:
        yield running, gated_bundle
    finally:
        gated_bundle.release.set()
        running.stop()


def make_packet(bundle, count=20, seed=0) -> bytes:
    indices = np.random.default_rng(seed).integers(0, bundle.tokenizer.codebook_size, count)
    return packet_bytes(bundle.tokenizer, indices, 4 * count)


def post(url, data, path="/v1/answer", **params) -> httpx.Response:
    params.setdefault("question", QUESTION)
    return httpx.post(url + path, params=params, content=data, timeout=30)


def wait_for(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ---------------------------------------------------------------- answers


def test_answer_matches_model(server, bundle):
    data = make_packet(bundle)
    response = post(server.url, data)
    assert response.status_code == 200
    features = bundle.features(bundle.parse(data, 64).indices)
    expected = bundle.generate([features], [QUESTION], NEW_TOKENS).texts[0]
    assert response.json()["answer"] == expected


def test_answer_fields(server, bundle):
    response = post(server.url, make_packet(bundle, count=20), max_new_tokens=2)
    body = response.json()
    assert body["index_count"] == 20
    assert body["frame_count"] == 80
    assert body["batch_size"] == 1
    assert response.headers["x-request-id"] == body["request_id"]


def test_answer_timings(server, bundle):
    timings = post(server.url, make_packet(bundle), max_new_tokens=2).json()["timings_ms"]
    parts = ("receive", "parse", "decode", "prefill", "generation", "queue_wait")
    assert all(timings[name] >= 0 for name in parts)
    assert timings["total"] >= sum(timings[name] for name in parts)


def test_request_id_echoed(server, bundle):
    response = httpx.post(
        server.url + "/v1/answer", params={"question": QUESTION, "max_new_tokens": 1},
        content=make_packet(bundle), headers={"X-Request-ID": "edge-7.clip_3"},
    )
    assert response.json()["request_id"] == "edge-7.clip_3"


def test_choose_matches_model(server, bundle):
    data = make_packet(bundle, seed=1)
    choices = ["walks", "runs", "waves with the right hand"]
    body = post(server.url, data, "/v1/choose", choice=choices).json()
    expected = bundle.score(bundle.features(bundle.parse(data, 64).indices), QUESTION, choices)
    np.testing.assert_allclose(body["scores"], expected, rtol=1e-5)
    assert body["choice"] == int(np.argmax(expected))


def test_choose_needs_two_choices(server, bundle):
    assert post(server.url, make_packet(bundle), "/v1/choose", choice=["walks"]).status_code == 422


def test_client_reply(server, bundle):
    data = make_packet(bundle)
    reply = send_packet(server.url, data, QUESTION, max_new_tokens=1)
    assert reply.payload_bytes == len(data)
    assert reply.request_bytes > len(data)
    assert 0 <= reply.timings_ms["network"] <= reply.timings_ms["round_trip"]


# ---------------------------------------------------------------- limits


def test_body_too_large(server, bundle):
    response = post(server.url, bytes(SMALL.max_body_bytes + 1))
    assert response.status_code == 413
    assert "2049 bytes" in response.json()["detail"]


def test_streamed_body_too_large(server):
    chunks = (bytes(1000) for _ in range(3))  # no Content-Length: sent chunked, so the server counts
    response = httpx.post(server.url + "/v1/answer", params={"question": QUESTION}, content=chunks)
    assert response.status_code == 413
    assert "exceeds the limit of 2048 bytes" in response.json()["detail"]


def test_too_many_indices(server, bundle):
    response = post(server.url, make_packet(bundle, count=SMALL.max_indices + 1))
    assert response.status_code == 413
    assert response.json()["field"] == "index_count"


def test_prompt_too_long(gated, bundle):
    running, gated_bundle = gated
    gated_bundle.release.set()
    response = post(running.url, make_packet(bundle, count=600))  # 600 motion tokens > the tiny LLM's 512
    assert response.status_code == 413
    assert "max_length is 512" in response.json()["detail"]


def test_malformed_checksum(server, bundle):
    data = bytearray(make_packet(bundle))
    data[-5] ^= 0xFF
    response = post(server.url, bytes(data))
    assert response.status_code == 400
    assert response.json()["field"] == "crc32"


def test_malformed_magic(server, bundle):
    response = post(server.url, b"JUNK" + make_packet(bundle)[4:])
    assert response.status_code == 400
    assert response.json()["field"] == "magic"


def test_empty_body(server):
    response = post(server.url, b"")
    assert response.status_code == 400
    assert response.json()["field"] == "header"


def test_codebook_mismatch(server, bundle):
    other = random_tokenizer(seed=1)
    response = post(server.url, packet_bytes(other, np.arange(8), 32))
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert other.hash.hex() in detail
    assert bundle.codebook_hash.hex() in detail


@pytest.mark.parametrize("field, value", [("codebook_size", 1024), ("fps", 30)])
def test_header_field_mismatch(server, bundle, field, value):
    # The right codebook hash with another K or fps: what a broken or forged sender produces.
    header = {"fps": 20, "codebook_size": bundle.tokenizer.codebook_size, field: value}
    packet = MotionPacket(np.arange(8), frame_count=32, codebook_hash=bundle.codebook_hash, **header)
    response = post(server.url, encode_packet(packet))
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert f"{field} is {value}" in response.json()["detail"]


def test_empty_question(server, bundle):
    assert post(server.url, make_packet(bundle), question="").status_code == 422


def test_blank_question(server, bundle):
    response = post(server.url, make_packet(bundle), question="   ")
    assert response.status_code == 422
    assert response.json()["field"] == "question"


def test_validation_error_format(server, bundle):
    response = post(server.url, make_packet(bundle), question="x" * 3000)
    body = response.json()
    assert response.status_code == 422
    assert body["field"] == "question"
    assert "2000 characters" in body["detail"]
    assert body["request_id"] == response.headers[REQUEST_ID_HEADER]
    assert "xxxx" not in body["detail"]


@pytest.mark.parametrize("choice", ["  ", "x" * (ServiceLimits().max_choice_chars + 1)])
def test_choice_rejected(server, bundle, choice):
    response = post(server.url, make_packet(bundle), "/v1/choose", choice=["walks", choice])
    assert response.status_code == 422
    assert response.json()["field"] == "choice"


def test_unknown_path_has_request_id(server):
    response = httpx.get(server.url + "/v2/answer")
    assert response.status_code == 404
    assert REQUEST_ID_HEADER in response.headers


def test_max_new_tokens_above_limit(server, bundle):
    assert post(server.url, make_packet(bundle), max_new_tokens=NEW_TOKENS + 1).status_code == 422


def test_timeout(gated, bundle):
    running, _ = gated
    started = time.perf_counter()
    response = post(running.url, make_packet(bundle))
    assert response.status_code == 504
    assert "timed out after 1.5 s" in response.json()["detail"]
    assert time.perf_counter() - started < 5


def test_queue_full(gated, bundle):
    running, gated_bundle = gated
    data = make_packet(bundle)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, running.url, data)
        assert gated_bundle.entered.wait(10)  # the worker is running the first request
        queued = [pool.submit(post, running.url, data) for _ in range(2)]
        wait_for(lambda: running.server.config.app.state.worker.queue_depth == 2)
        rejected = post(running.url, data)
        gated_bundle.release.set()
        statuses = [first.result().status_code] + [future.result().status_code for future in queued]
    assert rejected.status_code == 503
    assert rejected.headers["retry-after"] == "1"
    assert statuses == [200, 200, 200]


# ---------------------------------------------------------------- concurrency


def test_concurrent_requests_batched(gated, bundle):
    running, gated_bundle = gated
    data = make_packet(bundle)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(post, running.url, data)
        assert gated_bundle.entered.wait(10)
        rest = [pool.submit(post, running.url, make_packet(bundle, seed=seed)) for seed in range(2)]
        wait_for(lambda: running.server.config.app.state.worker.queue_depth == 2)
        gated_bundle.release.set()
        responses = [first.result()] + [future.result() for future in rest]
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert [response.json()["batch_size"] for response in responses] == [1, 2, 2]


def test_concurrent_requests_answered(server, bundle):
    packets = [make_packet(bundle, seed=seed) for seed in range(12)]
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda data: post(server.url, data, max_new_tokens=2), packets))
    assert [response.status_code for response in responses] == [200] * 12
    assert len({response.json()["request_id"] for response in responses}) == 12


def test_worker_stop_fails_queued(bundle):
    gated_bundle = GatedBundle(bundle.tokenizer, bundle.model, bundle.llm_name)
    worker = BatchWorker(gated_bundle, ServiceLimits(max_new_tokens=NEW_TOKENS, max_batch=1))
    worker.start()
    indices = bundle.parse(make_packet(bundle), 64).indices
    running = worker.submit(Job("running", indices, QUESTION, max_new_tokens=1))
    assert gated_bundle.entered.wait(10)
    queued = worker.submit(Job("queued", indices, QUESTION, max_new_tokens=1))
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    wait_for(queued.done)
    gated_bundle.release.set()
    stopper.join(10)
    assert isinstance(queued.exception(), ServiceStoppedError)
    assert isinstance(running.result().answer, str)
    with pytest.raises(ServiceStoppedError):
        worker.submit(Job("late", indices, QUESTION))


# ---------------------------------------------------------------- health, schema, logs, client


def test_healthz(server, bundle):
    body = httpx.get(server.url + "/healthz").json()
    assert body["status"] == "ok"
    assert body["codebook_hash"] == bundle.codebook_hash.hex()
    assert body["max_queue"] == SMALL.max_queue


def test_openapi_lists_endpoints(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    assert set(schema["paths"]) == {"/v1/answer", "/v1/choose", "/healthz"}
    body = schema["paths"]["/v1/answer"]["post"]["requestBody"]["content"]
    assert "application/octet-stream" in body


def test_rejection_logged(server, bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="toau.cloud.server"):
        response = post(server.url, b"JUNK")
    request_id = response.headers["x-request-id"]
    assert any(request_id in record.getMessage() and "400" in record.getMessage() for record in caplog.records)


def test_client_raises_rejection(server):
    with pytest.raises(ServiceRejected) as caught:
        send_packet(server.url, b"JUNK", QUESTION)
    assert caught.value.status == 400


def test_request_bytes_counted(bundle):
    """http_request_bytes equals the bytes a raw TCP server receives for the request."""
    received = []
    with socket.create_server((DEFAULT_HOST, 0)) as listener:
        port = listener.getsockname()[1]

        def serve_one():
            connection, _ = listener.accept()
            with connection:
                data = b""
                while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + len(packet):
                    data += connection.recv(65536)
                received.append(len(data))
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        packet = make_packet(bundle, count=50)
        thread = threading.Thread(target=serve_one)
        thread.start()
        with httpx.Client() as client:
            request = client.build_request(
                "POST", f"http://{DEFAULT_HOST}:{port}/v1/answer", params={"question": "qué hace?"}, content=packet
            )
            client.send(request)
        thread.join(5)
    assert received == [http_request_bytes(request)]


def test_cli_defaults_match_server():
    assert (commands.DEFAULT_HOST, commands.DEFAULT_PORT) == (DEFAULT_HOST, DEFAULT_PORT)


def test_send_cli_prints_answer(server, bundle, tmp_path, capsys):
    path = tmp_path / "clip.toau"
    path.write_bytes(make_packet(bundle))
    code = commands.main(["send", str(path), "--url", server.url, "--question", QUESTION, "--max-new-tokens", "1"])
    assert code == 0
    assert "sent 54 packet bytes" in capsys.readouterr().out


def test_send_cli_reports_rejection(server, tmp_path, capsys):
    path = tmp_path / "foreign.toau"
    path.write_bytes(packet_bytes(random_tokenizer(seed=2), np.arange(8), 32))
    code = commands.main(["send", str(path), "--url", server.url, "--question", QUESTION])
    assert code == commands.EXIT_REJECTED
    assert "409: codebook_hash is" in capsys.readouterr().err
