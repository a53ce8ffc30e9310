"""The `toau edge` subcommand: a video file in, a motion packet file out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toau.cli import check_input_file, check_output_file, positive_int

# The folder that the tokenizer stage writes; `toau encode` uses the same default.
DEFAULT_TOKENIZER = "build/tokenizer"
# torch threads for the VQ-VAE encoder. The encoder is small: with 2 threads on 2 shared
# CPU cores one chunk took 200 ms, with 1 thread 1 to 5 ms.
DEFAULT_THREADS = 1


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `edge` subcommand to the `toau` subparsers."""
    edge = commands.add_parser(
        "edge", help="turn a video of one person into a motion packet (pose, features, VQ-VAE indices)"
    )
    edge.add_argument("video", help="video file with one person in view")
    edge.add_argument("-o", "--output", required=True, help="packet file to write, e.g. clip.toau")
    edge.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help=f"tokenizer folder (default: {DEFAULT_TOKENIZER})")
    edge.add_argument("--entropy", action="store_true", help="range-code the indices instead of 9 bits each")
    edge.add_argument("--save-joints", metavar="NPY", help="also save the 20 fps joints (F, 22, 3) in metres as .npy")
    edge.add_argument("--preview", metavar="MP4", help="also write the video with the estimated skeleton (H.264)")
    edge.add_argument(
        "--stream", action="store_true",
        help="feed frames one at a time through EdgeStream; an index is encoded once about 4 s of later motion "
        "has arrived (the facing smoothing looks ahead), so a shorter clip is encoded at its end",
    )
    edge.add_argument("--max-side", type=int, default=None,
                      help="downscale decoded frames to this longer side in pixels (default: full size)")
    edge.add_argument("--estimator", default=None, help="registered pose estimator name (default: mediapipe)")
    edge.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS,
                      help=f"torch CPU threads for the tokenizer (default: {DEFAULT_THREADS})")
    edge.add_argument("--json", action="store_true", help="print the result summary as JSON instead of a table")
    edge.set_defaults(handler=run_command)


def _params(args: argparse.Namespace):
    from toau.edge.pipeline import EdgeParams

    options = {"entropy": args.entropy, "max_side": args.max_side}
    if args.estimator is not None:
        options.update(estimator=args.estimator, estimator_options={})
    return EdgeParams(**options)


def run_command(args: argparse.Namespace) -> int:
    """Run the edge pipeline on args.video and write the packet (and joints, preview)."""
    import numpy as np
    import torch

    from toau.edge.pipeline import run_edge, stream_video

    # Check the input and every output first, so that a typo does not cost a whole pipeline run.
    check_input_file("video", args.video)
    for option, path in (("-o", args.output), ("--save-joints", args.save_joints), ("--preview", args.preview)):
        if path:
            check_output_file(option, path)

    torch.set_num_threads(args.threads)
    params = _params(args)
    run = stream_video if args.stream else run_edge
    result = run(args.video, args.tokenizer, params)
    Path(args.output).write_bytes(result.packet)
    if args.save_joints:
        np.save(args.save_joints, result.joints)
    if args.preview:
        from toau.edge.preview import DEFAULT_FOCAL_LENGTH_RATIO, write_preview

        ratio = params.estimator_options.get("focal_length_ratio", DEFAULT_FOCAL_LENGTH_RATIO)
        write_preview(args.video, result.track, args.preview, focal_length_ratio=ratio)

    if args.json:
        print(json.dumps({"video": str(args.video), "packet": str(args.output), **result.summary()}, indent=2))
    else:
        print(format_report(result, args.output))
    return 0


def format_report(result, output: str | Path) -> str:
    """Return the per-stage timing table and the packet numbers of an EdgeResult as text."""
    summary = result.summary()
    per_stage_frames = {
        "decode": summary["frames_decoded"],
        "pose": summary["frames_posed"],
        "features": summary["motion_frames"],
        "tokenizer": summary["motion_frames"],
        "packing": summary["motion_frames"],
    }
    lines = [f"{'stage':<10} {'ms':>9} {'ms/frame':>9}  frames"]
    for stage, milliseconds in summary["timings_ms"].items():
        frames = per_stage_frames[stage]
        per_frame = milliseconds / frames if frames else float("nan")
        lines.append(f"{stage:<10} {milliseconds:9.1f} {per_frame:9.2f}  {frames}")
    lines.append(f"{'total':<10} {summary['total_ms']:9.1f}")
    lines.append(f"after the last frame: {summary['after_last_frame_ms']:.1f} ms")
    if result.stream is not None:
        stats = result.stream
        lines.append(
            f"streaming: {stats.emitted} of {stats.windows} indices encoded before the last frame, {stats.kept} kept"
        )
    lines.append(
        f"detection rate: {summary['detection_rate']:.2f} "
        f"({summary['frames_posed']} frames posed, {summary['motion_frames']} motion frames at 20 fps)"
    )
    lines.append(
        f"packet: {output}, {summary['packet_bytes']} bytes, {summary['indices']} indices, "
        f"{summary['bits_per_frame']:.2f} bits per frame"
    )
    return "\n".join(lines)
