"""Time the edge pipeline stage by stage on the four Pose2Sim views, offline and streaming.

Usage: python benchmarks/bench_edge.py [--tokenizer build/tokenizer] [--threads 1]
                                       [--repeats 3] [--long-seconds 30]

For each view (100 frames, 1080x1920, 60 fps) it runs `run_edge` and then `stream_video`
with MediaPipe, `--repeats` times, and reports medians over the runs. Per stage, it
reports the milliseconds per clip and per frame and the ratio to the decode time of the
same run. Per view, it reports the packet size against the video file size and the time
from the last frame to the packet in both modes. The views last
1.65 s, shorter than the rows a streamed window must wait for, so a second measurement
replays the cam01 poses forward and backward for `--long-seconds` to show where
streaming leaves less work after the last frame, with the tokenizer and with an
untrained VQ-VAE of the release width 512.

Without a trained tokenizer folder, the VQ-VAE is randomly initialised with the
architecture in params.yaml: its timings and fixed-width packet sizes hold, its indices
mean nothing. Writes results/bench_edge.json with provenance; writes nothing else.
"""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from toau.channel.codec import Tokenizer, load_tokenizer
from toau.config import PROJECT_ROOT, data_root, load_params
from toau.edge.pipeline import STAGES, EdgeParams, EdgeStream, encode_track, run_edge, stream_video
from toau.pose.base import FramePose, PoseEstimator, PoseTrack
from toau.provenance import provenance
from toau.tokenizer.checkpoint import MODEL_FILE
from toau.tokenizer.vqvae import VQVAE, VQVAEConfig

VIEWS = ("cam01", "cam02", "cam03", "cam04")
RESULTS_FILE = PROJECT_ROOT / "results" / "bench_edge.json"
DEFAULT_TOKENIZER = PROJECT_ROOT / "build" / "tokenizer"


class PosesOnly(PoseEstimator):
    """Placeholder estimator for a stream that receives poses through push_pose."""

    def process_frame(self, frame, timestamp):
        raise RuntimeError("this stream takes poses, not frames")


def untrained_tokenizer(config: VQVAEConfig) -> Tokenizer:
    """Return a randomly initialised tokenizer with HumanML3D's feature statistics."""
    torch.manual_seed(0)
    reference = data_root() / "humanml3d_reference"
    mean, std = np.load(reference / "Mean.npy"), np.load(reference / "Std.npy")
    return Tokenizer(VQVAE(config).eval(), mean.astype(np.float32), std.astype(np.float32))


def tokenizer_for(folder: Path) -> tuple[Tokenizer, str]:
    """Load the tokenizer folder, or build an untrained one with the params.yaml architecture."""
    if (folder / MODEL_FILE).is_file():
        return load_tokenizer(folder), f"trained: {folder}"
    config = VQVAEConfig.from_dict(load_params(section="tokenizer")["model"])
    return untrained_tokenizer(config), f"untrained, params.yaml architecture {config.to_dict()}: timings only"


def stage_table(result) -> dict:
    """Return per-stage ms per clip, ms per frame and ratio to decode for one EdgeResult."""
    summary = result.summary()
    frames = {
        "decode": summary["frames_decoded"],
        "pose": summary["frames_posed"],
        "features": summary["motion_frames"],
        "tokenizer": summary["motion_frames"],
        "packing": summary["motion_frames"],
    }
    decode = summary["timings_ms"]["decode"]
    return {
        stage: {
            "ms_per_clip": milliseconds,
            "frames": frames[stage],
            "ms_per_frame": milliseconds / frames[stage],
            "ratio_to_decode": milliseconds / decode,
        }
        for stage, milliseconds in summary["timings_ms"].items()
    }


def median_of(rows: list):
    """Return the element-wise median of equally shaped nested dicts; values equal in all rows are kept as they are."""
    first = rows[0]
    if isinstance(first, dict):
        return {key: median_of([row[key] for row in rows]) for key in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool) and any(row != first for row in rows):
        return float(np.median(rows))
    return first


def measure_view(video: Path, tokenizer: Tokenizer, params: EdgeParams, repeats: int) -> tuple[dict, PoseTrack]:
    runs = [measure_view_once(video, tokenizer, params) for _ in range(repeats)]
    row = median_of([row for row, _ in runs])
    row["stream_equals_offline"] = all(run["stream_equals_offline"] for run, _ in runs)
    row["repeats"] = repeats
    return row, runs[0][1]


def measure_view_once(video: Path, tokenizer: Tokenizer, params: EdgeParams) -> tuple[dict, PoseTrack]:
    offline = run_edge(video, tokenizer, params)
    streamed = stream_video(video, tokenizer, params)
    video_bytes = video.stat().st_size
    row = {
        "video_bytes": video_bytes,
        "packet_bytes": offline.packet_size,
        "video_to_packet_ratio": video_bytes / offline.packet_size,
        "bits_per_frame": offline.bits_per_frame,
        "detection_rate": offline.detection_rate,
        "indices": len(offline.indices),
        "stages": stage_table(offline),
        "total_ms": offline.timings_ms.total,
        "after_last_frame_ms": {"offline": offline.after_last_frame_ms, "stream": streamed.after_last_frame_ms},
        "stream_stages": stage_table(streamed),
        "stream_stats": asdict(streamed.stream),
        "stream_equals_offline": bool(np.array_equal(streamed.indices, offline.indices)),
    }
    return row, offline.track


def ping_pong(track: PoseTrack, seconds: float) -> PoseTrack:
    """Play a 20 fps track forward and backward until it lasts `seconds`, with 20 fps timestamps."""
    order = np.concatenate([np.arange(len(track)), np.arange(len(track) - 2, 0, -1)])
    frames = int(seconds * 20)
    order = np.resize(order, frames)
    return PoseTrack(track.joints[order], track.confidence[order], track.detected[order], np.arange(frames) / 20)


def measure_long(track: PoseTrack, tokenizer: Tokenizer, params: EdgeParams, repeats: int) -> dict:
    runs = [measure_long_once(track, tokenizer, params) for _ in range(repeats)]
    row = median_of(runs)
    row["stream_equals_offline"] = all(run["stream_equals_offline"] for run in runs)
    row["repeats"] = repeats
    return row


def measure_long_once(track: PoseTrack, tokenizer: Tokenizer, params: EdgeParams) -> dict:
    """Measure the work after the last frame, offline and streaming, on a track of given poses."""
    offline = encode_track(track, tokenizer, params)
    stream = EdgeStream(tokenizer, params, estimator=PosesOnly())
    for joints, confidence, detected, timestamp in zip(track.joints, track.confidence, track.detected, track.timestamps):
        stream.push_pose(FramePose(joints, confidence, bool(detected)), timestamp)
    streamed = stream.finish()
    return {
        "seconds": float(track.timestamps[-1] - track.timestamps[0]),
        "motion_frames": len(offline.joints),
        "after_last_frame_ms": {"offline": offline.after_last_frame_ms, "stream": streamed.after_last_frame_ms},
        "offline_ms": {stage: getattr(offline.timings_ms, stage) for stage in ("features", "tokenizer", "packing")},
        "stream_ms": {stage: getattr(streamed.timings_ms, stage) for stage in ("features", "tokenizer", "packing")},
        "stream_stats": asdict(streamed.stream),
        "stream_equals_offline": bool(np.array_equal(streamed.indices, offline.indices)),
    }


def print_report(views: dict, long: dict) -> None:
    print(f"{'view':<6} {'stage':<10} {'ms/clip':>9} {'ms/frame':>9} {'x decode':>9}")
    for view, row in views.items():
        for stage in STAGES:
            cell = row["stages"][stage]
            print(f"{view:<6} {stage:<10} {cell['ms_per_clip']:9.1f} {cell['ms_per_frame']:9.2f} {cell['ratio_to_decode']:9.3f}")
    print()
    print(f"{'view':<6} {'video B':>9} {'packet B':>9} {'ratio':>8} {'bits/frame':>10} {'detect':>7} "
          f"{'after last: offline ms':>23} {'stream ms':>10} {'equal':>6}")
    for view, row in views.items():
        after = row["after_last_frame_ms"]
        print(f"{view:<6} {row['video_bytes']:9d} {row['packet_bytes']:9d} {row['video_to_packet_ratio']:8.0f} "
              f"{row['bits_per_frame']:10.2f} {row['detection_rate']:7.2f} {after['offline']:23.1f} "
              f"{after['stream']:10.1f} {str(row['stream_equals_offline']):>6}")
    print()
    print(f"{'replay, tokenizer':<28} {'after last: offline ms':>22} {'stream ms':>10} {'early/kept/all':>15} "
          f"{'stream features+tokenizer ms':>29} {'offline ms':>11}")
    for name, row in long.items():
        after, stats, stream, offline = row["after_last_frame_ms"], row["stream_stats"], row["stream_ms"], row["offline_ms"]
        label = f"{row['seconds']:.0f} s, {name}"
        counts = f"{stats['emitted']}/{stats['kept']}/{stats['windows']}"
        print(f"{label:<28} {after['offline']:22.1f} {after['stream']:10.1f} {counts:>15} "
              f"{stream['features'] + stream['tokenizer']:29.0f} {offline['features'] + offline['tokenizer']:11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="tokenizer folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement, reported as medians (default: 3)")
    parser.add_argument("--long-seconds", type=float, default=30.0, help="length of the replayed stream in seconds (default: 30)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tokenizer, tokenizer_description = tokenizer_for(args.tokenizer)
    params = EdgeParams()
    folder = data_root() / "videos" / "pose2sim"
    views, tracks = {}, {}
    for view in VIEWS:
        views[view], tracks[view] = measure_view(folder / f"{view}.mp4", tokenizer, params, args.repeats)
    replay = ping_pong(tracks["cam01"], args.long_seconds)
    long = {
        "tokenizer": measure_long(replay, tokenizer, params, args.repeats),
        "untrained_width_512": measure_long(replay, untrained_tokenizer(VQVAEConfig()), params, args.repeats),
    }
    print_report(views, long)

    record = provenance(
        benchmark="edge",
        params={**asdict(params), "threads": args.threads, "repeats": args.repeats, "long_seconds": args.long_seconds},
        tokenizer=tokenizer_description,
        data="videos/pose2sim cam01-cam04: 100 frames, 1080x1920, 60 fps",
        views=views,
        long_stream=long,
    )
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS_FILE}")


if __name__ == "__main__":
    main()
