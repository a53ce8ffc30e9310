"""Uplink models: the analytic latency breakdown, and a real rate-limited link inside this machine.

Bandwidths are in KB/s with KB = 1000 bytes, so a transfer of B bytes at R KB/s takes B / R
milliseconds. The analytic model is

    total = edge compute + wire bytes / uplink bandwidth + cloud compute,

where wire bytes are the payload plus its protocol overhead (HTTP, TCP/IP, Ethernet).

`RateLimitedLink` builds a Linux network namespace joined to the root namespace by a veth
pair. Traffic from the root namespace into the namespace passes a `tc` token bucket filter
(tbf) at the uplink rate. The pair gets a /30 from 198.18.0.0/15, the block reserved for
network benchmarks (RFC 2544). No route leads from that /30 anywhere else, and the namespace
has no default route, so nothing leaves the machine. Creating it needs root and the iproute2
tools `ip` and `tc`; `netns_support()` reports whether this machine allows it.

A token bucket lets up to `burst_bytes` through at line rate while the bucket is full, so a
transfer much smaller than the burst takes less time than size / rate. Tc's netem qdisc
would model per-packet serialisation, but it is not built into every kernel.
"""

import atexit
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

KB = 1000  # bytes in one KB of the bandwidths below
DEFAULT_BANDWIDTHS_KBPS = (50, 100, 200, 500, 1000)

# Per-segment overhead of TCP over IPv4 over Ethernet: 14 (Ethernet) + 20 (IPv4) + 32 (TCP with
# the timestamp option that Linux sends by default). The preamble and inter-frame gap are not counted.
TCP_SEGMENT_OVERHEAD = 66
TCP_MSS = 1448  # payload bytes per segment at MTU 1500 with TCP timestamps
TCP_HANDSHAKE_UPLINK = 74 + 66  # the client's SYN (with options) and its ACK of the SYN-ACK

NAMESPACE_PREFIX = "toau-"  # namespaces are named toau-<pid>-<hex>, so stale ones can be found
INTERFACE_PREFIX = "toau"  # veth names toau<hex>h (root side) and toau<hex>p (namespace side), <= 15 chars
BENCHMARK_NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
DEFAULT_BURST_BYTES = 1600  # one full Ethernet frame (1514 bytes) and some slack: the smallest tbf burst that passes it
DEFAULT_QUEUE_SECONDS = 0.5  # tbf queue length in seconds of traffic at the configured rate
MIN_QUEUE_BYTES = 64 * 1024
COMMAND_TIMEOUT_S = 10


# ---------------------------------------------------------------- analytic model


def transfer_ms(num_bytes: float, bandwidth_kBps: float) -> float:
    """Return the milliseconds that num_bytes take at bandwidth_kBps (KB = 1000 bytes)."""
    if bandwidth_kBps <= 0:
        raise ValueError(f"bandwidth is {bandwidth_kBps} KB/s; it must be positive")
    return num_bytes / bandwidth_kBps


def tcp_overhead_bytes(app_bytes: int, *, new_connection: bool = True) -> int:
    """Estimate the uplink bytes that TCP/IP/Ethernet add to app_bytes sent from client to server.

    Counts one header per MSS-sized segment and, for a new connection, the SYN and the
    handshake ACK. ACKs of the response and the connection teardown are not counted.
    """
    segments = max(1, -(-app_bytes // TCP_MSS))
    return segments * TCP_SEGMENT_OVERHEAD + (TCP_HANDSHAKE_UPLINK if new_connection else 0)


def latency_breakdown(
    edge_ms: float,
    payload_bytes: int,
    overhead_bytes: int,
    cloud_ms: float,
    bandwidths_kBps: Iterable[float] = DEFAULT_BANDWIDTHS_KBPS,
    **labels,
) -> list[dict]:
    """Return one row per uplink bandwidth: edge compute + wire bytes / bandwidth + cloud compute.

    payload_bytes is what the method must send (a motion packet, an encoded video), and
    overhead_bytes what the protocols add to it. Each row contains `labels` (e.g. method=...)
    followed by bandwidth_kBps, edge_ms, payload_bytes, overhead_bytes, wire_bytes,
    transfer_ms, cloud_ms and total_ms.
    """
    rows = []
    wire_bytes = payload_bytes + overhead_bytes
    for bandwidth in bandwidths_kBps:
        transfer = transfer_ms(wire_bytes, bandwidth)
        rows.append(
            {
                **labels,
                "bandwidth_kBps": bandwidth,
                "edge_ms": edge_ms,
                "payload_bytes": payload_bytes,
                "overhead_bytes": overhead_bytes,
                "wire_bytes": wire_bytes,
                "transfer_ms": transfer,
                "cloud_ms": cloud_ms,
                "total_ms": edge_ms + transfer + cloud_ms,
            }
        )
    return rows


# ---------------------------------------------------------------- commands


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed with exit code {result.returncode}: {result.stderr.strip()}")
    return result


def netns_support() -> tuple[bool, str]:
    """Return (True, "") if this process can create namespaces, veth pairs and tc qdiscs, else (False, reason)."""
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return False, f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return False, "creating network namespaces needs root (euid 0)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return False, f"{' and '.join(missing)} not found on PATH; install the Debian package iproute2"
    probe = f"{NAMESPACE_PREFIX}{os.getpid()}-probe"
    created = _run(["ip", "netns", "add", probe], check=False)
    if created.returncode != 0:
        return False, f"`ip netns add` failed: {created.stderr.strip()}"
    _run(["ip", "netns", "del", probe], check=False)
    return True, ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> list[str]:
    """Delete toau-<pid>-* namespaces whose creating process is gone; return their names.

    Deleting a namespace destroys its veth end, which removes the root-side end too.
    """
    listed = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
    removed = []
    for line in listed:
        name = line.split(" ")[0]
        if not name.startswith(NAMESPACE_PREFIX):
            continue
        pid_text = name[len(NAMESPACE_PREFIX) :].split("-")[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    if removed:
        log.info("removed stale network namespaces %s", removed)
    return removed


def _used_networks() -> list[ipaddress.IPv4Network]:
    output = _run(["ip", "-4", "-o", "addr", "show"]).stdout
    networks = []
    for line in output.splitlines():
        fields = line.split()
        if "inet" in fields:
            networks.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    return networks


def _free_subnet() -> ipaddress.IPv4Network:
    """Pick a random /30 in BENCHMARK_NETWORK that no address of the root namespace overlaps."""
    used = _used_networks()
    for _ in range(100):
        offset = secrets.randbelow(BENCHMARK_NETWORK.num_addresses // 4) * 4
        subnet = ipaddress.IPv4Network((int(BENCHMARK_NETWORK.network_address) + offset, 30))
        if not any(subnet.overlaps(network) for network in used):
            return subnet
    raise RuntimeError(f"no free /30 found in {BENCHMARK_NETWORK}; remove stale links with remove_stale_namespaces()")


def _tbf_args(device: str, rate_kBps: float, burst_bytes: int) -> list[str]:
    rate_bytes = rate_kBps * KB
    queue_bytes = max(MIN_QUEUE_BYTES, int(rate_bytes * DEFAULT_QUEUE_SECONDS))
    rate_bits = int(round(rate_bytes * 8))
    return ["dev", device, "root", "tbf", "rate", f"{rate_bits}bit", "burst", str(burst_bytes), "limit", str(queue_bytes)]


# ---------------------------------------------------------------- rate-limited link

_open_links: set["RateLimitedLink"] = set()
_open_links_lock = threading.Lock()


class RateLimitedLink:
    """A veth pair between the root namespace and a new namespace, rate-limited towards the namespace.

    Use as a context manager, or call `create()` and `close()`. `host_ip` is the root side and
    `peer_ip` the namespace side. A server started with `exec_args` inside the namespace and
    listening on `peer_ip` receives its uplink traffic at `rate_kBps`. `downlink_kBps` also
    limits the other direction; None leaves it at veth speed.
    """

    def __init__(self, rate_kBps: float, *, downlink_kBps: float | None = None, burst_bytes: int = DEFAULT_BURST_BYTES):
        if rate_kBps <= 0:
            raise ValueError(f"rate_kBps is {rate_kBps}; it must be positive")
        tag = secrets.token_hex(3)
        self.rate_kBps = rate_kBps
        self.downlink_kBps = downlink_kBps
        self.burst_bytes = burst_bytes
        self.namespace = f"{NAMESPACE_PREFIX}{os.getpid()}-{tag}"
        self.host_device = f"{INTERFACE_PREFIX}{tag}h"
        self.peer_device = f"{INTERFACE_PREFIX}{tag}p"
        self.host_ip = ""
        self.peer_ip = ""
        self._created = False

    def create(self) -> "RateLimitedLink":
        """Create the namespace, the veth pair, the addresses and the tbf qdisc; undo all of it on failure."""
        with _open_links_lock:
            _open_links.add(self)
        self._created = True
        try:
            subnet = _free_subnet()
            host, peer = list(subnet.hosts())
            self.host_ip, self.peer_ip = str(host), str(peer)
            _run(["ip", "netns", "add", self.namespace])
            _run(["ip", "link", "add", self.host_device, "type", "veth", "peer", "name", self.peer_device])
            _run(["ip", "link", "set", self.peer_device, "netns", self.namespace])
            _run(["ip", "addr", "add", f"{host}/30", "dev", self.host_device])
            _run(["ip", "link", "set", self.host_device, "up"])
            _run(["ip", "-n", self.namespace, "addr", "add", f"{peer}/30", "dev", self.peer_device])
            _run(["ip", "-n", self.namespace, "link", "set", self.peer_device, "up"])
            _run(["ip", "-n", self.namespace, "link", "set", "lo", "up"])
            self.set_rate(self.rate_kBps, self.downlink_kBps)
        except BaseException:
            self.close()
            raise
        log.info(
            "created link %s <-> %s (namespace %s) at %s KB/s uplink",
            self.host_ip, self.peer_ip, self.namespace, self.rate_kBps,
        )
        return self

    def set_rate(self, rate_kBps: float, downlink_kBps: float | None = None) -> None:
        """Replace the uplink (and, if given, downlink) token bucket with a new rate in KB/s."""
        _run(["tc", "qdisc", "replace", *_tbf_args(self.host_device, rate_kBps, self.burst_bytes)])
        if downlink_kBps is not None:
            _run(["tc", "-n", self.namespace, "qdisc", "replace", *_tbf_args(self.peer_device, downlink_kBps, self.burst_bytes)])
        self.rate_kBps, self.downlink_kBps = rate_kBps, downlink_kBps

    def close(self) -> None:
        """Delete the veth pair and the namespace. Safe to call twice and after a failed create."""
        if not self._created:
            return
        _run(["ip", "link", "del", self.host_device], check=False)
        _run(["ip", "netns", "del", self.namespace], check=False)
        self._created = False
        with _open_links_lock:
            _open_links.discard(self)
        log.info("removed link namespace %s", self.namespace)

    def exists(self) -> bool:
        """Return whether the namespace and the root-side device exist."""
        names = _run(["ip", "netns", "list"], check=False).stdout.split()
        return self.namespace in names and Path(f"/sys/class/net/{self.host_device}").exists()

    def exec_args(self, command: Sequence[str]) -> list[str]:
        """Return the argv that runs command inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def counters(self) -> dict[str, int]:
        """Return the root-side byte counters: tx_bytes (uplink, with Ethernet headers) and rx_bytes (downlink)."""
        folder = Path(f"/sys/class/net/{self.host_device}/statistics")
        return {name: int((folder / name).read_text()) for name in ("tx_bytes", "rx_bytes", "tx_packets")}

    def __enter__(self) -> "RateLimitedLink":
        return self.create()

    def __exit__(self, *exc_info) -> None:
        self.close()


def close_all_links() -> None:
    """Close every link this process opened (registered with atexit)."""
    with _open_links_lock:
        links = list(_open_links)
    for link in links:
        link.close()


atexit.register(close_all_links)


@contextmanager
def exit_on_signals(signals: Iterable[int] = (signal.SIGTERM, signal.SIGHUP)):
    """Turn the given signals into SystemExit in the main thread, so `finally` blocks remove links.

    SIGINT already raises KeyboardInterrupt. The previous handlers come back on exit.
    """

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = {number: signal.signal(number, handler) for number in signals}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


# ---------------------------------------------------------------- throughput probe


def run_sink(host: str, port: int = 0) -> None:
    """Serve one TCP connection: read an 8-byte length and that many bytes, then reply b"k".

    Prints the listening port on stdout first, so a parent process can connect.
    """
    with socket.create_server((host, port)) as server:
        print(server.getsockname()[1], flush=True)
        connection, _ = server.accept()
        with connection:
            (expected,) = struct.unpack(">Q", _receive_exactly(connection, 8))
            remaining = expected
            while remaining:
                chunk = connection.recv(min(remaining, 1 << 16))
                if not chunk:
                    raise ConnectionError(f"connection closed with {remaining} of {expected} bytes unread")
                remaining -= len(chunk)
            connection.sendall(b"k")


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def measure_upload(link: RateLimitedLink, num_bytes: int, timeout_s: float = 60.0) -> dict:
    """Send num_bytes from the root namespace to a sink inside the link's namespace and time it.

    Returns seconds (connect to acknowledgement), the achieved rate in KB/s, and the uplink
    bytes the root-side interface counted (payload plus TCP/IP/Ethernet headers and ACKs).
    """
    sink = subprocess.Popen(
        link.exec_args([sys.executable, "-m", "toau.channel.link", "--sink", link.peer_ip]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(sink.stdout.readline())
        payload = struct.pack(">Q", num_bytes) + bytes(num_bytes)
        before = link.counters()
        started = time.perf_counter()
        with socket.create_connection((link.peer_ip, port), timeout=timeout_s) as connection:
            connection.sendall(payload)
            _receive_exactly(connection, 1)
        seconds = time.perf_counter() - started
        after = link.counters()
        sink.wait(timeout=timeout_s)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return {
        "bytes": num_bytes,
        "seconds": seconds,
        "rate_kBps": num_bytes / seconds / KB,
        "wire_tx_bytes": after["tx_bytes"] - before["tx_bytes"],
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Throughput sink for measure_upload (runs inside a link namespace).")
    parser.add_argument("--sink", required=True, metavar="HOST", help="address to listen on")
    run_sink(parser.parse_args().sink)
