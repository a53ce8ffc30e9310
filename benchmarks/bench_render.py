"""Benchmark the motion renderer and the codec sweep on real Bandai clips.

Measures:
1. render speed on one core (BLAS pinned to one thread): fastest wall time and process
   CPU time of three runs, and the ratio to encoding as many blank frames with the same
   encoder in the same run;
2. how well MediaPipe Pose reads the rendered clips: detection rate, left/right swaps and
   MPJPE per joint group;
3. bytes, times and PSNR of H.264, H.265 and AV1 at every default size and CRF for one
   rendered clip.

Usage: python benchmarks/bench_render.py [--max-frames 200] [--skip-codecs]
Needs the prepared data (`toau prepare`). Writes results/bench_render.json.
"""

import os

# One BLAS thread, so that the render speed is per core (set before numpy loads BLAS).
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402

from toau.baselines import codec, render  # noqa: E402
from toau.config import PROJECT_ROOT  # noqa: E402
from toau.data.prepared import PreparedData  # noqa: E402
from toau.provenance import provenance  # noqa: E402

# Twenty varied clips: seventeen from the test split, and a dance, a kick and a punch from
# dataset 1, whose only takes of those contents fall in the train split.
CLIPS = (
    "dataset-1_bow_happy_001", "dataset-1_byebye_happy_001", "dataset-1_dash_happy_001",
    "dataset-1_guide_happy_001", "dataset-1_run_happy_001", "dataset-1_walk_angry_001",
    "dataset-1_walk-back_happy_001", "dataset-1_walk-left_happy_001",
    "dataset-2_raise-up-both-hands_normal_007", "dataset-2_raise-up-left-hand_youthful_005",
    "dataset-2_run_active_018", "dataset-2_walk_active_009", "dataset-2_walk-turn-left_active_002",
    "dataset-2_walk-turn-right_active_002", "dataset-2_wave-both-hands_active_001",
    "dataset-2_wave-left-hand_active_027", "dataset-2_wave-right-hand_active_010",
    "dataset-1_dance-short_normal_001", "dataset-1_kick_normal_001", "dataset-1_punch_normal_001",
)
SPEED_CLIP = "dataset-1_walk_angry_001"


REPEATS = 3  # speed runs. The fastest counts, because other processes can only slow a run down.


def encode_blank(frames: int, config: render.RenderConfig, path: Path) -> None:
    """Encode `frames` blank frames with the renderer's encoder settings."""
    blank = np.zeros((config.height, config.width, 3), dtype=np.uint8)
    container, stream = render.open_encoder(path, config)
    try:
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(blank, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()


def fastest(task) -> tuple[float, float]:
    """Return the lowest wall time and the lowest process CPU time (s) of REPEATS runs of task()."""
    walls, cpus = [], []
    for _ in range(REPEATS):
        wall, cpu = time.perf_counter(), time.process_time()
        task()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def measure_speed(prepared: PreparedData, config: render.RenderConfig, folder: Path) -> dict:
    joints = prepared.joints(SPEED_CLIP)
    renderer = render.clip_renderer(joints, config, SPEED_CLIP)
    frames = len(renderer)

    def render_all() -> None:
        for index in range(frames):
            renderer.frame(index)

    render_wall, render_cpu = fastest(render_all)
    blank_wall, _ = fastest(lambda: encode_blank(frames, config, folder / "blank.mp4"))
    stats = render.render_clip(joints, folder / "speed.mp4", config, SPEED_CLIP)
    return {
        "clip": SPEED_CLIP,
        "frames": frames,
        "repeats": REPEATS,
        "render_fps_wall": frames / render_wall,
        "render_fps_cpu": frames / render_cpu,
        "blank_encode_fps_wall": frames / blank_wall,
        "render_over_blank_encode_wall": render_wall / blank_wall,
        "render_and_encode_fps_wall_one_run": stats.frames / (stats.render_seconds + stats.encode_seconds),
        "video_bytes": stats.bytes,
    }


def codec_table(prepared: PreparedData, config: render.RenderConfig, folder: Path) -> list[dict]:
    path = folder / "codec_source.mp4"
    render.render_clip(prepared.joints(SPEED_CLIP), path, config, SPEED_CLIP)
    return codec.sweep(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-frames", type=int, default=200, help="joint frames (20 fps) rendered per clip")
    parser.add_argument("--skip-codecs", action="store_true", help="leave out the codec sweep")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    prepared = PreparedData()
    config = render.RenderConfig()
    with tempfile.TemporaryDirectory() as folder:
        speed = measure_speed(prepared, config, Path(folder))
        evaluation = render.evaluate_render(CLIPS, prepared, config, max_frames=args.max_frames)
        sweep = [] if args.skip_codecs else codec_table(prepared, config, Path(folder))

    splits = {record["clip_id"]: record["split"] for record in prepared.records()}
    for clip in evaluation["clips"]:
        clip["split"] = splits.get(clip["clip_id"], "unknown")
    result = {
        "speed": speed,
        "pose": evaluation,
        "codec_clip": SPEED_CLIP,
        "codec_sweep": sweep,
        "provenance": provenance(
            params={"render": asdict(config), "max_frames": args.max_frames, "codec_threads": codec.THREADS},
            estimator="mediapipe 0.10.21, model_complexity=1, left/right repair off",
            clips=list(CLIPS),
        ),
    }
    out_path = PROJECT_ROOT / "results" / "bench_render.json"
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    summary = {key: value for key, value in evaluation.items() if key != "clips"}
    print(json.dumps({"speed": speed, "pose": summary}, indent=2))
    for row in sweep:
        print(f"{row['codec']:11s} {row['width']:3d}x{row['height']:<3d} CRF {row['crf']:2d}: "
              f"{row['bytes']:7d} B (payload {row['payload_bytes']:7d}), {row['psnr_db']:5.2f} dB, "
              f"encode {row['encode_s']:.2f} s, decode {row['decode_s']:.2f} s")


if __name__ == "__main__":
    main()
