"""End-to-end latency of the motion-packet path at uplink bandwidths from 50 to 1000 KB/s.

Usage: python benchmarks/bench_latency.py [--bandwidths 50 100 200 500 1000] [--videos V ...]
           [--llm smollm2-135m-instruct] [--tokenizer build/tokenizer|random] [--max-new-tokens 32]

KB = 1000 bytes throughout. Per request the latency is

    edge compute + uplink wire bytes / bandwidth + cloud compute.

Edge: the edge pipeline (`toau.edge.pipeline`) on each video, offline (`run_edge`, stage time
summed) and streaming (`stream_video`, time from the last frame to the packet).
Cloud: the server's own timings (total minus body receive) on the same packets.
Wire bytes: the uplink bytes that the root-side veth counted during each request (TCP
handshake, HTTP request with the packet, ACKs of the response, Ethernet/IP/TCP headers).

Where the machine allows it (root, iproute2), the server runs inside a network namespace
behind a veth pair whose uplink a tc token bucket limits to each bandwidth in turn
(`toau.channel.link`). The measured transfer time is the client's round trip minus the
server's compute. A link calibration sends 1 KB, 10 KB and 100 KB blocks at each rate.
Otherwise the server runs on 127.0.0.1, the wire bytes are estimated with
`tcp_overhead_bytes`, and only the analytic transfer time is reported.

Writes results/latency_motion.json (provenance, every request, calibration, rows) and
results/latency_motion.csv (the rows of `latency_breakdown` with the measured columns).
"""

import argparse
import csv
import json
import logging
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import torch

from toau.channel.link import (
    DEFAULT_BANDWIDTHS_KBPS,
    DEFAULT_BURST_BYTES,
    RateLimitedLink,
    exit_on_signals,
    latency_breakdown,
    measure_upload,
    netns_support,
    remove_stale_namespaces,
    tcp_overhead_bytes,
)
from toau.cloud.server import ServerProcess
from toau.config import data_root
from toau.cloud.service import RANDOM_TOKENIZER, load_motion_tokenizer
from toau.edge.client import send_packet, server_compute_ms
from toau.provenance import provenance

log = logging.getLogger("bench_latency")

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = ROOT / "results" / "latency_motion.json"
RESULTS_CSV = ROOT / "results" / "latency_motion.csv"
DEFAULT_VIDEOS = [f"pose2sim/cam0{camera}.mp4" for camera in range(1, 5)] + ["sports2d/demo.mp4"]
QUESTION = "What is the person doing?"
CALIBRATION_BYTES = (1_000, 10_000, 100_000)
WARMUP_REQUESTS = 2  # the first generate calls of a fresh process are slower (allocator, kernels)


# ---------------------------------------------------------------- edge


def edge_runs(videos: list[Path], tokenizer, threads: int) -> list[dict]:
    """Run the offline and streaming edge pipeline on each video; skip videos it rejects."""
    from toau.edge.pipeline import run_edge, stream_video
    from toau.pose.base import PoseQualityError

    torch.set_num_threads(threads)
    video_root = data_root() / "videos"
    runs = []
    for video in videos:
        try:
            offline = run_edge(video, tokenizer)
            streaming = stream_video(video, tokenizer)
        except PoseQualityError as error:
            log.warning("skipping %s: %s", video, error)
            continue
        if streaming.packet != offline.packet:
            log.warning("%s: the streaming packet differs from the offline one", video)
        runs.append({
            "video": str(video.relative_to(video_root)) if video.is_relative_to(video_root) else str(video),
            "packet": offline.packet,
            "offline": offline.summary(),
            "stream": streaming.summary(),
        })
        log.info("%s: %d bytes, offline edge %.0f ms, streaming %.0f ms after the last frame",
                 video.name, len(offline.packet), offline.timings_ms.total, streaming.after_last_frame_ms)
    return runs


# ---------------------------------------------------------------- server


def serve_args(args: argparse.Namespace, host: str) -> list[str]:
    serve = [
        "--host", host, "--port", "0", "--tokenizer", args.tokenizer, "--llm", args.llm, "--tokens-per", args.tokens_per,
        "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads), "--seed", str(args.seed),
    ]
    return serve + (["--projector", args.projector] if args.projector else [])


# ---------------------------------------------------------------- requests


def send_all(url: str, edges: list[dict], bandwidth: float | None, link: RateLimitedLink | None,
             max_new_tokens: int) -> list[dict]:
    """Send each edge packet once on a new connection; return one record per request."""
    records = []
    for edge in edges:
        before = link.counters() if link else None
        reply = send_packet(url, edge["packet"], QUESTION, max_new_tokens=max_new_tokens)
        after = link.counters() if link else None
        timings = reply.server_timings_ms
        record = {
            "video": edge["video"],
            "bandwidth_kBps": bandwidth,
            "payload_bytes": reply.payload_bytes,
            "http_request_bytes": reply.request_bytes,
            "round_trip_ms": reply.timings_ms["round_trip"],
            "network_ms": reply.timings_ms["network"],
            "cloud_ms": server_compute_ms(timings),
            "server_timings_ms": timings,
        }
        if link:
            record["wire_uplink_bytes"] = after["tx_bytes"] - before["tx_bytes"]
            record["wire_uplink_packets"] = after["tx_packets"] - before["tx_packets"]
        else:
            record["wire_uplink_bytes"] = reply.request_bytes + tcp_overhead_bytes(reply.request_bytes)
        records.append(record)
    return records


def calibrate(link: RateLimitedLink, bandwidth: float) -> list[dict]:
    rows = []
    for size in CALIBRATION_BYTES:
        result = measure_upload(link, size)
        rows.append({
            "bandwidth_kBps": bandwidth,
            "bytes": size,
            "measured_ms": 1000 * result["seconds"],
            "wire_tx_bytes": result["wire_tx_bytes"],
            "analytic_ms": result["wire_tx_bytes"] / bandwidth,
        })
    return rows


# ---------------------------------------------------------------- rows


def mean(values) -> float:
    return float(np.mean(list(values)))


def breakdown_rows(edges: list[dict], records: list[dict], bandwidths: list[float], measured: bool) -> list[dict]:
    """Return latency_breakdown rows for the offline and the streaming edge, with measured columns."""
    payload = mean(record["payload_bytes"] for record in records)
    overhead = mean(record["wire_uplink_bytes"] - record["payload_bytes"] for record in records)
    cloud = mean(record["cloud_ms"] for record in records)
    edge_ms = {
        "offline": mean(edge["offline"]["total_ms"] for edge in edges),
        "stream": mean(edge["stream"]["after_last_frame_ms"] for edge in edges),
    }
    rows = []
    for mode, edge in edge_ms.items():
        for row in latency_breakdown(edge, payload, overhead, cloud, bandwidths, method="motion-vq", edge_mode=mode):
            at_rate = [r for r in records if r["bandwidth_kBps"] == row["bandwidth_kBps"]]
            if measured and at_rate:
                row["measured_transfer_ms"] = mean(r["network_ms"] for r in at_rate)
                row["measured_total_ms"] = edge + row["measured_transfer_ms"] + mean(r["cloud_ms"] for r in at_rate)
            rows.append(row)
    return rows


def write_results(rows: list[dict], document: dict) -> None:
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(document, indent=2) + "\n")
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(RESULTS_CSV, "w", newline="") as f:
        f.write(f"# {json.dumps({key: document['provenance'][key] for key in ('created', 'git_commit')})}\n")
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{key: round(value, 3) if isinstance(value, float) else value for key, value in row.items()}
                          for row in rows])


def print_rows(rows: list[dict]) -> None:
    print(f"{'edge':8} {'KB/s':>6} {'edge ms':>8} {'wire B':>7} {'xfer ms':>8} {'meas ms':>8} {'cloud ms':>9} {'total ms':>9}")
    for row in rows:
        measured = row.get("measured_transfer_ms")
        print(
            f"{row['edge_mode']:8} {row['bandwidth_kBps']:>6} {row['edge_ms']:>8.0f} {row['wire_bytes']:>7.0f} "
            f"{row['transfer_ms']:>8.1f} {measured if measured is not None else float('nan'):>8.1f} "
            f"{row['cloud_ms']:>9.0f} {row['total_ms']:>9.0f}"
        )


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bandwidths", type=float, nargs="+", default=list(DEFAULT_BANDWIDTHS_KBPS),
                        help="uplink bandwidths in KB/s, KB = 1000 bytes (default: 50 100 200 500 1000)")
    parser.add_argument("--videos", nargs="+", default=None,
                        help="video files (default: the Pose2Sim cameras and the Sports2D demo under $TOAU_DATA_ROOT/videos)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder, or 'random' for an untrained one of the params.yaml architecture "
                        "(default: build/tokenizer if it exists, else random)")
    parser.add_argument("--projector", default=None, help="trained projector folder (default: an untrained one)")
    parser.add_argument("--tokens-per", choices=["frame", "index"], default="frame",
                        help="motion tokens of an untrained projector (default: frame)")
    parser.add_argument("--llm", default="smollm2-135m-instruct", help="LLM of the server (default: SmolLM2-135M)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="generated tokens per answer (default: 32)")
    parser.add_argument("--repeats", type=int, default=1, help="requests per video and bandwidth (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of edge and server (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of untrained models (default: 0)")
    parser.add_argument("--no-netns", action="store_true", help="skip the real link even where it is possible")
    return parser.parse_args()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    if args.tokenizer is None:
        args.tokenizer = "build/tokenizer" if (ROOT / "build" / "tokenizer" / "model.safetensors").is_file() else RANDOM_TOKENIZER
    videos = [Path(video) for video in args.videos] if args.videos else [data_root() / "videos" / name for name in DEFAULT_VIDEOS]

    # The edge builds the same tokenizer as the server: an equal seed gives an equal codebook hash.
    tokenizer = load_motion_tokenizer(args.tokenizer, seed=args.seed)
    edges = edge_runs(videos, tokenizer, args.threads)
    if not edges:
        raise RuntimeError(f"the edge pipeline rejected every video in {videos}")

    supported, reason = (False, "--no-netns given") if args.no_netns else netns_support()
    if supported:
        remove_stale_namespaces()
    else:
        log.warning("no rate-limited link (%s): reporting the analytic transfer time only", reason)
    records, calibration = [], []
    with tempfile.TemporaryDirectory() as folder, exit_on_signals():
        link = RateLimitedLink(args.bandwidths[0]).create() if supported else None
        host, wrapper = (link.peer_ip, link.exec_args([])) if link else ("127.0.0.1", [])
        try:
            with ServerProcess(serve_args(args, host), Path(folder) / "server.log", wrapper=wrapper, cwd=ROOT) as server:
                health = httpx.get(server.url + "/healthz").json()
                if health["codebook_hash"] != tokenizer.hash.hex():
                    raise RuntimeError(
                        f"the server's codebook hash {health['codebook_hash']} differs from the edge's {tokenizer.hash.hex()}"
                    )
                send_all(server.url, edges[:WARMUP_REQUESTS], None, None, args.max_new_tokens)
                for bandwidth in args.bandwidths if link else [None]:
                    if link:
                        link.set_rate(bandwidth)
                        calibration += calibrate(link, bandwidth)
                    for _ in range(args.repeats):
                        records += send_all(server.url, edges, bandwidth, link, args.max_new_tokens)
                    log.info("bandwidth %s KB/s done", bandwidth)
        finally:
            if link:
                link.close()

    rows = breakdown_rows(edges, records, args.bandwidths, measured=link is not None)
    document = {
        "provenance": provenance(params=vars(args), health=health, kilobyte_bytes=1000),
        "link": {"measured": link is not None, "reason": reason,
                 "shaper": f"tc tbf on a veth pair, burst {DEFAULT_BURST_BYTES} bytes" if link else None},
        "edge": [{key: value for key, value in edge.items() if key != "packet"} for edge in edges],
        "requests": records,
        "calibration": calibration,
        "rows": rows,
    }
    write_results(rows, document)
    print_rows(rows)
    for row in calibration:
        print(f"calibration {row['bandwidth_kBps']:>6} KB/s {row['bytes']:>7} B: "
              f"measured {row['measured_ms']:.1f} ms, analytic {row['analytic_ms']:.1f} ms")
    print(f"wrote {RESULTS_JSON} and {RESULTS_CSV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
