"""Time the data preparation of every Bandai clip, against the time to only read the BVH files.

Usage: TOAU_DATA_ROOT=../shared/data python benchmarks/bench_prepare.py [--workers N]
Writes results/bench_prepare.json.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from toau.config import PROJECT_ROOT, data_root
from toau.data.bandai import find_clips
from toau.data.prepare import prepare_bandai
from toau.io.bvh import read_bvh
from toau.provenance import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the preparation")
    args = parser.parse_args()
    bandai_root = data_root() / "bandai"

    # Baseline: decompress and parse every BVH file on one core, no kinematics or features.
    clips = find_clips(bandai_root)
    start = time.perf_counter()
    for clip in clips:
        read_bvh(clip.path)
    read_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = prepare_bandai(bandai_root, out, workers=args.workers)
        prepare_seconds = time.perf_counter() - start

    frames = sum(s["frames"] for s in summary["splits"].values())
    result = {
        "clips": len(clips),
        "frames_20fps": frames,
        "read_only_seconds_1_core": round(read_seconds, 2),
        "prepare_seconds": round(prepare_seconds, 2),
        "prepare_workers": args.workers,
        "prepare_over_read_ratio": round(prepare_seconds / read_seconds, 2),
        "frames_per_second": round(frames / prepare_seconds),
        "failed": summary["failed"],
        "provenance": provenance(),
    }
    out_path = PROJECT_ROOT / "results" / "bench_prepare.json"
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=2))


if __name__ == "__main__":
    main()
