"""Analytic latency model, and the rate-limited veth link where this machine allows namespaces."""

import os
import signal
import subprocess
import time

import pytest

from toau.channel.link import (
    NAMESPACE_PREFIX,
    RateLimitedLink,
    exit_on_signals,
    latency_breakdown,
    measure_upload,
    netns_support,
    remove_stale_namespaces,
    tcp_overhead_bytes,
    transfer_ms,
)

SUPPORTED, REASON = netns_support()
needs_netns = pytest.mark.skipif(not SUPPORTED, reason=f"network namespaces unavailable: {REASON}")


def namespaces() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


# ---------------------------------------------------------------- analytic model


def test_transfer_ms():
    assert transfer_ms(1000, 50) == 20.0


def test_transfer_ms_rejects_zero():
    with pytest.raises(ValueError, match="bandwidth is 0 KB/s"):
        transfer_ms(1000, 0)


def test_breakdown_rows():
    rows = latency_breakdown(12.0, 900, 100, 300.0, [50, 1000], method="motion")
    assert [row["bandwidth_kBps"] for row in rows] == [50, 1000]
    assert [row["transfer_ms"] for row in rows] == [20.0, 1.0]
    assert [row["total_ms"] for row in rows] == [332.0, 313.0]
    assert rows[0]["wire_bytes"] == 1000
    assert rows[0]["method"] == "motion"


def test_breakdown_default_bandwidths():
    rows = latency_breakdown(0.0, 1000, 0, 0.0)
    assert [row["bandwidth_kBps"] for row in rows] == [50, 100, 200, 500, 1000]


def test_tcp_overhead_one_segment():
    assert tcp_overhead_bytes(100) == 66 + 140
    assert tcp_overhead_bytes(100, new_connection=False) == 66


def test_tcp_overhead_two_segments():
    assert tcp_overhead_bytes(1449, new_connection=False) == 2 * 66


# ---------------------------------------------------------------- real link


@needs_netns
def test_link_created_and_removed():
    with RateLimitedLink(100) as link:
        assert link.exists()
        assert link.namespace in namespaces()
    assert not link.exists()
    assert link.namespace not in namespaces()


@needs_netns
def test_link_addresses_private():
    with RateLimitedLink(100) as link:
        assert link.host_ip.startswith("198.1")
        routes = subprocess.run(
            ["ip", "-n", link.namespace, "route"], capture_output=True, text=True, check=True
        ).stdout
    assert "default" not in routes


@needs_netns
def test_link_throughput_within_20_percent():
    with RateLimitedLink(500) as link:
        result = measure_upload(link, 200_000)
    # 200 KB payload plus ~5 % TCP/IP/Ethernet headers at 500 KB/s: about 0.42 s.
    assert 0.8 * 0.4 <= result["seconds"] <= 1.2 * 0.4
    assert 200_000 < result["wire_tx_bytes"] < 1.1 * 200_000


@needs_netns
def test_link_set_rate():
    with RateLimitedLink(1000) as link:
        link.set_rate(250)
        result = measure_upload(link, 100_000)
    assert 0.8 * 0.4 <= result["seconds"] <= 1.2 * 0.4


@needs_netns
def test_link_removed_on_sigterm():
    with pytest.raises(SystemExit):
        with exit_on_signals(), RateLimitedLink(100) as link:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert not link.exists()


@needs_netns
def test_stale_namespace_removed():
    exited = subprocess.Popen(["true"])  # its pid belongs to no running process afterwards
    exited.wait()
    name = f"{NAMESPACE_PREFIX}{exited.pid}-stale"
    subprocess.run(["ip", "netns", "add", name], check=True)
    assert name in remove_stale_namespaces()
    assert name not in namespaces()
