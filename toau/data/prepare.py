"""Data preparation stage: raw motion -> per-clip joints and features, splits, and statistics."""

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from toau.data import bandai
from toau.data.prepared import feature_statistics, stats_checksum

logger = logging.getLogger(__name__)


def _process(args: tuple[bandai.Clip, float]) -> tuple[str, dict | str]:
    clip, fps = args
    try:
        return clip.clip_id, bandai.process_clip(clip, fps=fps)
    except ValueError as error:
        return clip.clip_id, str(error)


def prepare_bandai(
    bandai_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fps: float = 20.0,
    split_seed: int = 0,
    split_fractions=(0.8, 0.1, 0.1),
    max_clips: int | None = None,
    workers: int | None = None,
) -> dict:
    """Process every Bandai clip into `out_dir` (layout in toau.data.prepared) and return a summary.

    `max_clips` keeps an evenly spaced subset of the sorted clips (smoke runs). Clips that fail to
    process (e.g. too short) are listed in the summary and left out, never silently dropped.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "features").mkdir(parents=True, exist_ok=True)
    (out_dir / "joints").mkdir(parents=True, exist_ok=True)

    clips = bandai.find_clips(bandai_root)
    if max_clips is not None and max_clips < len(clips):
        clips = [clips[i] for i in np.linspace(0, len(clips) - 1, max_clips).round().astype(int)]
    splits = bandai.assign_splits(clips, split_fractions, split_seed)

    records, failures, train_features = [], {}, []
    workers = workers or min(4, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_process, [(c, fps) for c in clips], chunksize=8)
        for clip, (clip_id, result) in tqdm(zip(clips, results), total=len(clips), desc="prepare", unit="clip"):
            if isinstance(result, str):
                failures[clip_id] = result
                logger.warning("skipped %s: %s", clip_id, result)
                continue
            np.save(out_dir / "features" / f"{clip_id}.npy", result["features"])
            np.save(out_dir / "joints" / f"{clip_id}.npy", result["joints"])
            record = bandai.clip_record(clip, splits[clip_id])
            record["frames"] = int(len(result["joints"]))
            records.append(record)
            if record["split"] == "train":
                train_features.append(result["features"])

    if not train_features:
        raise ValueError(f"no train clips were processed from {bandai_root}; failures: {failures}")
    mean, std = feature_statistics(train_features)
    np.save(out_dir / "Mean.npy", mean)
    np.save(out_dir / "Std.npy", std)
    (out_dir / "stats.json").write_text(json.dumps({
        "sha256": stats_checksum(mean, std),
        "split": "train",
        "clips": len(train_features),
        "rows": int(sum(len(f) for f in train_features)),
    }, indent=2))

    summary = {
        "source": "bandai",
        "fps": fps,
        "split_seed": split_seed,
        "split_fractions": list(split_fractions),
        "splits": {
            s: {"clips": sum(r["split"] == s for r in records),
                "frames": sum(r["frames"] for r in records if r["split"] == s)}
            for s in bandai.SPLITS
        },
        "failed": failures,
    }
    # The manifest leaves out the run time, so that an unchanged input gives a byte-identical output
    # and DVC does not rerun later stages.
    (out_dir / "clips.json").write_text(json.dumps({"summary": summary, "clips": records}, indent=1))
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"{'split':<6} {'clips':>6} {'frames':>8} {'minutes':>8}"]
    for split, counts in summary["splits"].items():
        minutes = counts["frames"] / summary["fps"] / 60
        lines.append(f"{split:<6} {counts['clips']:>6} {counts['frames']:>8} {minutes:>8.1f}")
    if summary["failed"]:
        lines.append(f"skipped {len(summary['failed'])} clips: {sorted(summary['failed'])[:5]} ...")
    if "seconds" in summary:
        lines.append(f"took {summary['seconds']} s")
    return "\n".join(lines)
