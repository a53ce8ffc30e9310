"""Time packet encoding and decoding for both payload kinds, and report bits per index.

Usage: python benchmarks/bench_packet.py [--count 10000] [--repeats 5] [--seed 0]

Indices are synthetic (uniform, and Zipf with exponent 1.1, over K = 512), not the
output of a trained VQ-VAE, so the range-coded sizes only show how the coder behaves
on a skewed stream. Prints a table and writes results/bench_packet.json with the
machine, package versions and parameters. Writes nothing else.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from toau.channel import entropy
from toau.channel.entropy import IndexModel
from toau.channel.packet import (
    MotionPacket,
    PayloadKind,
    bits_per_index,
    decode_packet,
    encode_packet,
    pack_indices,
    packet_overhead,
    unpack_indices,
)
from toau.provenance import provenance

CODEBOOK_SIZE = 512
ZIPF_EXPONENT = 1.1
TRAIN_COUNT = 50_000  # indices the prior model is fitted on
RESULTS_FILE = Path(__file__).resolve().parent.parent / "results" / "bench_packet.json"
FAKE_HASH = bytes(8)


def best_time(function, repeats: int) -> float:
    """Return the fastest of `repeats` runs of function() in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def sample_streams(count: int, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return {name: (training indices, test indices (count,))} for each synthetic distribution."""
    ranks = np.arange(1, CODEBOOK_SIZE + 1)
    zipf = 1.0 / ranks**ZIPF_EXPONENT
    distributions = {"uniform": None, f"zipf{ZIPF_EXPONENT}": zipf / zipf.sum()}
    return {
        name: (rng.choice(CODEBOOK_SIZE, TRAIN_COUNT, p=p), rng.choice(CODEBOOK_SIZE, count, p=p))
        for name, p in distributions.items()
    }


def empirical_entropy(indices: np.ndarray) -> float:
    frequencies = np.bincount(indices, minlength=CODEBOOK_SIZE) / indices.size
    frequencies = frequencies[frequencies > 0]
    return float(-(frequencies * np.log2(frequencies)).sum())


def measure_stream(train: np.ndarray, indices: np.ndarray, repeats: int) -> dict:
    """Time both payload kinds on one stream and return sizes and times in seconds."""
    bits = bits_per_index(CODEBOOK_SIZE)
    model = IndexModel.fit([train], CODEBOOK_SIZE)
    packed = pack_indices(indices, bits)
    coded = entropy.encode(indices, model)
    row = {
        "count": int(indices.size),
        "empirical_entropy_bits_per_index": empirical_entropy(indices),
        "fixed_bits_per_index": 8 * len(packed) / indices.size,
        "entropy_bits_per_index": 8 * len(coded) / indices.size,
        "pack_s": best_time(lambda: pack_indices(indices, bits), repeats),
        "unpack_s": best_time(lambda: unpack_indices(packed, indices.size, bits), repeats),
        "range_encode_s": best_time(lambda: entropy.encode(indices, model), repeats),
        "range_decode_s": best_time(lambda: entropy.decode(coded, indices.size, model), repeats),
    }
    for kind in PayloadKind:
        packet = MotionPacket(indices, 20, 4 * indices.size, CODEBOOK_SIZE, FAKE_HASH, payload_kind=kind)
        data = encode_packet(packet, model=model)
        name = kind.name.lower()
        row[f"{name}_packet_bytes"] = len(data)
        row[f"{name}_encode_packet_s"] = best_time(lambda: encode_packet(packet, model=model), repeats)
        row[f"{name}_decode_packet_s"] = best_time(
            lambda: decode_packet(data, model=model, max_indices=indices.size), repeats
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="number of indices in each synthetic stream")
    parser.add_argument("--repeats", type=int, default=5, help="number of timed runs per step, of which the fastest is reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic index streams")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    rows = {}
    for name, (train, indices) in sample_streams(args.count, rng).items():
        rows[name] = measure_stream(train, indices, args.repeats)

    print(f"{args.count} indices, K = {CODEBOOK_SIZE}, best of {args.repeats} runs")
    print(f"{'stream':<10} {'H':>6} {'fixed':>6} {'range':>6}  {'pack':>8} {'unpack':>8} {'r-enc':>8} {'r-dec':>8}")
    for name, row in rows.items():
        print(
            f"{name:<10} {row['empirical_entropy_bits_per_index']:6.3f} {row['fixed_bits_per_index']:6.3f} "
            f"{row['entropy_bits_per_index']:6.3f}  {1e3 * row['pack_s']:6.2f}ms {1e3 * row['unpack_s']:6.2f}ms "
            f"{1e3 * row['range_encode_s']:6.1f}ms {1e3 * row['range_decode_s']:6.1f}ms"
        )
    print(
        "H, fixed, range: bits per index. Packet overhead in bytes: "
        f"fixed {packet_overhead('fixed')}, entropy {packet_overhead('entropy')}"
    )

    record = {
        "benchmark": "bench_packet",
        "parameters": {
            "count": args.count,
            "repeats": args.repeats,
            "seed": args.seed,
            "codebook_size": CODEBOOK_SIZE,
            "zipf_exponent": ZIPF_EXPONENT,
            "train_count": TRAIN_COUNT,
            "coder": {
                "version": entropy.CODER_VERSION,
                "prior_total": entropy.PRIOR_TOTAL,
                "adaptive_increment": entropy.ADAPTIVE_INCREMENT,
                "adaptive_limit": entropy.ADAPTIVE_LIMIT,
            },
        },
        "overhead_bytes": {kind.name.lower(): packet_overhead(kind) for kind in PayloadKind},
        "streams": rows,
        "provenance": provenance(),
    }
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS_FILE}")


if __name__ == "__main__":
    main()
