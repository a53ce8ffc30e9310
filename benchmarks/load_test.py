"""Load test of the HTTP service on loopback: concurrent clients, every request accounted for.

Usage: python benchmarks/load_test.py [--requests 2000] [--concurrency 64] [--tokenizer tiny]
           [--llm tiny] [--max-batch 8] [--max-queue 64] [--max-new-tokens 8] [--invalid-fraction 0.05]

Starts `toau serve` (python -m toau.cloud.commands serve) as a subprocess on 127.0.0.1 with a
free port, then `--concurrency` asyncio clients share `--requests` POST /v1/answer requests.
A fraction of the requests is invalid on purpose (half with a corrupted CRC, half with another
codebook hash), so the 4xx paths run under load too. Each request ends with an HTTP status
or a client-side error, and the run checks sent == 2xx + 4xx + 5xx with no client errors.

The packets hold `--indices` random indices (50 = a 10 s clip), made with the codebook hash
that /healthz reports. Untrained models give meaningless text with real compute times.
Writes the run under its name into results/load_test.json with provenance, keeping other runs.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from toau.channel.packet import MotionPacket, encode_packet
from toau.cloud.server import ServerProcess
from toau.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = ROOT / "results" / "load_test.json"
HOST = "127.0.0.1"
CLIENT_MARGIN_S = 30.0  # clients wait this long past the server's timeout, so the server's 504 arrives first


# ---------------------------------------------------------------- server process


def serve_args(args: argparse.Namespace) -> list[str]:
    serve = [
        "--host", HOST, "--port", "0", "--tokenizer", args.tokenizer, "--llm", args.llm, "--tokens-per", args.tokens_per,
        "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue),
        "--max-new-tokens", str(args.max_new_tokens), "--request-timeout-s", str(args.request_timeout_s),
    ]
    return serve + (["--threads", str(args.threads)] if args.threads else [])


# ---------------------------------------------------------------- requests


def request_plan(health: dict, args: argparse.Namespace, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Return (kind, packet bytes) per request: kind is valid, corrupt or foreign."""
    def packet(codebook_hash: bytes) -> bytes:
        indices = rng.integers(0, health["codebook_size"], args.indices)
        return encode_packet(MotionPacket(
            indices=indices, fps=20, frame_count=health["frames_per_index"] * args.indices,
            codebook_size=health["codebook_size"], codebook_hash=codebook_hash,
            frames_per_index=health["frames_per_index"],
        ))

    own_hash = bytes.fromhex(health["codebook_hash"])
    foreign_hash = bytes(byte ^ 0xFF for byte in own_hash)
    plan = []
    for _ in range(args.requests):
        draw = rng.random()
        if draw < args.invalid_fraction / 2:
            corrupt = bytearray(packet(own_hash))
            corrupt[-1] ^= 0xFF
            plan.append(("corrupt", bytes(corrupt)))
        elif draw < args.invalid_fraction:
            plan.append(("foreign", packet(foreign_hash)))
        else:
            plan.append(("valid", packet(own_hash)))
    return plan


async def run_clients(url: str, plan: list[tuple[str, bytes]], args: argparse.Namespace) -> list[dict]:
    """Send every planned request from `args.concurrency` concurrent clients; return one record per request."""
    pending = iter(enumerate(plan))
    records: list[dict] = []
    timeout = httpx.Timeout(args.request_timeout_s + CLIENT_MARGIN_S)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    async def client(client_id: int, session: httpx.AsyncClient) -> None:
        for number, (kind, data) in pending:
            record = {"number": number, "kind": kind, "client": client_id}
            started = time.perf_counter()
            try:
                response = await session.post(
                    url + "/v1/answer", params={"question": "what is the person doing?"}, content=data,
                    headers={"Content-Type": "application/octet-stream", "X-Request-ID": f"load-{number}"},
                )
                record["status"] = response.status_code
                if response.status_code == 200:
                    body = response.json()
                    record["batch_size"] = body["batch_size"]
                    record["server_ms"] = body["timings_ms"]
            except httpx.HTTPError as error:
                record["error"] = f"{type(error).__name__}: {error}"
            record["latency_ms"] = 1000 * (time.perf_counter() - started)
            records.append(record)

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as session:
        await asyncio.gather(*(client(i, session) for i in range(args.concurrency)))
    return records


# ---------------------------------------------------------------- summary


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    array = np.asarray(values)
    return {f"p{q}": float(np.percentile(array, q)) for q in (50, 90, 99)} | {"max": float(array.max())}


def summarise(records: list[dict], seconds: float) -> dict:
    statuses = Counter(record.get("status") for record in records if "status" in record)
    by_class = Counter(f"{status // 100}xx" for status in statuses.elements())
    errors = [record for record in records if "error" in record]
    answered = [record for record in records if record.get("status") == 200]
    server_parts = ("receive", "parse", "decode", "prefill", "generation", "queue_wait", "total")
    return {
        "sent": len(records),
        "status_counts": {str(status): count for status, count in sorted(statuses.items())},
        "status_classes": dict(sorted(by_class.items())),
        "client_errors": len(errors),
        "client_error_examples": [record["error"] for record in errors[:5]],
        "accounted": len(records) == sum(by_class.values()) + len(errors),
        "wall_s": seconds,
        "throughput_rps": len(records) / seconds,
        "answered_rps": len(answered) / seconds,
        "latency_ms_all": percentiles([record["latency_ms"] for record in records]),
        "latency_ms_answered": percentiles([record["latency_ms"] for record in answered]),
        "kinds": dict(Counter(record["kind"] for record in records)),
        "status_by_kind": {
            kind: dict(Counter(str(r.get("status", "error")) for r in records if r["kind"] == kind))
            for kind in sorted({record["kind"] for record in records})
        },
        "batch_size_counts": {str(size): count for size, count in sorted(Counter(r["batch_size"] for r in answered).items())},
        "server_total_ms": percentiles([r["server_ms"]["total"] for r in answered]),
        "server_queue_wait_ms": percentiles([r["server_ms"]["queue_wait"] for r in answered]),
        # Client latency that the server's handler did not see: connection handling, HTTP parsing, event loops.
        "outside_handler_ms": percentiles([r["latency_ms"] - r["server_ms"]["total"] for r in answered]),
        "server_mean_ms": {
            part: float(np.mean([r["server_ms"][part] for r in answered])) if answered else None for part in server_parts
        },
    }


def write_run(name: str, run: dict) -> None:
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.is_file() else {}
    runs = existing.get("runs", {})
    runs[name] = run
    RESULTS_FILE.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests in total (default: 2000)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients (default: 64)")
    parser.add_argument("--tokenizer", default="tiny", help="tokenizer for `toau serve` (default: tiny)")
    parser.add_argument("--llm", default="tiny", help="LLM for `toau serve` (default: tiny)")
    parser.add_argument("--tokens-per", default="index", choices=["frame", "index"],
                        help="motion tokens of the untrained projector (default: index)")
    parser.add_argument("--max-batch", type=int, default=8, help="server max_batch (default: 8)")
    parser.add_argument("--max-queue", type=int, default=64, help="server max_queue (default: 64)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="generated tokens per answer (default: 8)")
    parser.add_argument("--request-timeout-s", type=float, default=120.0, help="server request timeout (default: 120)")
    parser.add_argument("--threads", type=int, default=1, help="server torch threads; 0 is torch's choice (default: 1)")
    parser.add_argument("--indices", type=int, default=50, help="indices per packet (default: 50, a 10 s clip)")
    parser.add_argument("--invalid-fraction", type=float, default=0.05, help="share of invalid packets (default: 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the packets (default: 0)")
    parser.add_argument("--name", default=None, help="run name in the results file (default: from the options)")
    args = parser.parse_args()
    name = args.name or (
        f"{args.llm}-{args.tokens_per}-batch{args.max_batch}-queue{args.max_queue}-c{args.concurrency}-n{args.requests}"
    )

    with tempfile.TemporaryDirectory() as folder:
        with ServerProcess(serve_args(args), Path(folder) / "server.log", cwd=ROOT) as server:
            health = httpx.get(server.url + "/healthz").json()
            plan = request_plan(health, args, np.random.default_rng(args.seed))
            started = time.perf_counter()
            records = asyncio.run(run_clients(server.url, plan, args))
            seconds = time.perf_counter() - started
        server_log = server.log_text()

    summary = summarise(records, seconds)
    run = {
        "provenance": provenance(params=vars(args), health=health),
        "summary": summary,
        "server_log_warnings": sum("WARNING" in line for line in server_log.splitlines()),
        "server_log_errors": sum(" ERROR " in line for line in server_log.splitlines()),
    }
    write_run(name, run)
    print(json.dumps(summary, indent=2))
    print(f"wrote run {name!r} to {RESULTS_FILE}")
    return 0 if summary["accounted"] and summary["client_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
