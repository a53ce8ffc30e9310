"""The video baseline stage: motion packets against compressed video on the same questions.

For a subset of the test motions (`select_motions`) the stage
1. renders each motion once as RGB video (`toau.baselines.render`, 640x360 at 30 fps);
2. encodes the rendered video with every codec x size x CRF of the grid (`toau.baselines.codec`),
   recording payload bytes, encode and decode time and PSNR, and recovers the motion from the
   decoded video with the pixel pipeline (`toau.baselines.pixel`);
3. answers the questions about those motions with the cloud model (projector + LLM) from
   - the video of each setting (pixel pipeline motion),
   - packets of the motion-capture features (Table I's TOAU row),
   - packets that the edge pipeline makes from the uncompressed rendered video, MediaPipe
     included (Table II's TOAU row; `toau.edge.pipeline.run_edge`);
4. fine-tunes a copy of the projector on pixel-pipeline motion of rendered training clips at
   one setting and compares it with the original projector (the ablation, Table III).

A question about a motion whose video gives no usable pose (a detection failure) counts as
answered wrongly: it gets a wrong choice, never leaves the denominator.

Work files live in `work_dir` and are keyed by hashes of what made them, so a rerun after a
crash resumes where it stopped, and a changed parameter or module recomputes what it touches:
  render/<motion>-<key>.mp4 (+ .json)          rendered source videos
  settings/<setting>/<motion>-<key>.{mp4,json,npy}   encoded video, measurements, pixel features
  edge/<motion>-<key>.{json,npy}               edge packets from the rendered video
  answers/<name>-<key>.json                    predicted choices per question
  ablation/finetune-<key>/                     the fine-tuning run (resumable)

Result files in `results_dir`:
  video_sweep.{csv,json}           one row per setting (the json adds provenance and per-motion records)
  video_tables.{csv,json}          Table I and II rows, with a `table` column: the motion-packet row
                                   of that table, then the video rows (the same sweep in both)
  ablation.{csv,json}              Table III rows
  video_latency_inputs.json        edge compute, payload bytes and cloud compute per method, and
                                   `toau.channel.link.latency_breakdown` rows at `bandwidths_kBps`
  figures/rate_accuracy.png        accuracy against KB per clip
"""

from __future__ import annotations

import copy
import csv
import hashlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from toau.baselines import codec as codec_module
from toau.baselines import pixel as pixel_module
from toau.baselines import render as render_module
from toau.baselines.codec import CODECS, CodecSetting
from toau.baselines.pixel import PixelResult
from toau.baselines.render import RenderConfig
from toau.baselines.vlm import sample_frame_indices, visual_token_count
from toau.bench.questions import CATEGORIES, Question, build_benchmark, concatenate_clips, motion_features
from toau.bench.scoring import score
from toau.channel.codec import Tokenizer, decode_motion, load_tokenizer, packet_bytes
from toau.channel.link import DEFAULT_BANDWIDTHS_KBPS, latency_breakdown, tcp_overhead_bytes
from toau.cloud.llm import sha256_file
from toau.cloud.model import MotionLanguageModel, Sample
from toau.cloud.projector import WEIGHTS_FILE, load_projector
from toau.cloud.stage import decoded_features, load_trained_model, motion_name, normalise
from toau.cloud.train import train_projector
from toau.data.prepared import PreparedData
from toau.edge import pipeline as edge_module
from toau.edge.pipeline import EdgeParams, run_edge
from toau.motion import humanml3d as humanml3d_module
from toau.pose import mediapipe as mediapipe_module
from toau.pose.base import PoseEstimator, PoseQualityError, get_estimator
from toau.provenance import provenance

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- defaults

SWEEP_STEM = "video_sweep"
TABLES_STEM = "video_tables"
ABLATION_STEM = "ablation"
LATENCY_FILE = "video_latency_inputs.json"
FIGURE = Path("figures") / "rate_accuracy.png"
BYTES_PER_KB = 1000
FULL_GRID = "full"  # `grid` value for every codec x size x default CRF of toau.baselines.codec
QUESTION_CATEGORIES = CATEGORIES
# Columns of the Table I and II rows, shared by packet and video rows.
TABLE_COLUMNS = (
    "table", "method", "codec", "resolution", "crf", "clips", "kb_per_clip", "bytes_per_clip", "detection_rate",
    "failed_clips", "failed_questions",
    *(f"{kind}_{category}" for category in (*CATEGORIES, "overall") for kind in ("acc", "n")),
    "ci_low", "ci_high", "chance", "visual_tokens", "motion_tokens", "edge_ms", "cloud_ms",
)

VIDEO_DEFAULTS = {
    "split": "test",
    "seed": 0,  # question building, as benchmark.seed, so the questions are the benchmark's
    "clips": 8,  # single clips picked across contents; a list names them; None takes every clip
    "pairs": 2,  # order-question pairs; None takes every one
    "max_clip_frames": 100,  # maximum clip length (joint frames at 20 fps) that the selection picks
    "render": {},  # RenderConfig fields
    "grid": FULL_GRID,  # FULL_GRID, or {codec: {"sizes": [[w, h], ...], "crfs": [...]}}
    "upscale_side": pixel_module.UPSCALE_SIDE,
    "interpolation": pixel_module.DEFAULT_INTERPOLATION,
    "requantize": False,  # send pixel-pipeline motion through the VQ-VAE before the projector
    "threads": 1,
    "device": "cpu",  # torch device of the LLM and projector
    "bandwidths_kBps": list(DEFAULT_BANDWIDTHS_KBPS),
    "ablation": {
        "setting": {"codec": "libx264", "width": 320, "height": 180, "crf": 33},
        "train_clips": 8,
        "sample_seed": 0,  # seed of the training questions, as cloud.sample_seed
        "steps": 20,
        "train": {"lr": 1.0e-3, "batch_size": 4, "checkpoint_every": 10, "seed": 0},
    },
}

# Modules whose code shapes the cached files; their source enters the cache keys.
RENDER_SOURCES = (render_module,)
MOTION_SOURCES = (render_module, codec_module, pixel_module, edge_module, mediapipe_module, humanml3d_module)


# ---------------------------------------------------------------- parameters


def video_params(params: dict) -> dict:
    """Return the `video` section of params.yaml with VIDEO_DEFAULTS filled in, rejecting unknown keys."""
    merged = {**VIDEO_DEFAULTS, **params}
    unknown = sorted(set(params) - set(VIDEO_DEFAULTS))
    unknown += [f"ablation.{key}" for key in sorted(set(params.get("ablation", {})) - set(VIDEO_DEFAULTS["ablation"]))]
    if unknown:
        raise ValueError(f"unknown keys {unknown} in the video parameters; known keys are {sorted(VIDEO_DEFAULTS)}, "
                         f"and under ablation {sorted(VIDEO_DEFAULTS['ablation'])}")
    merged["ablation"] = {**VIDEO_DEFAULTS["ablation"], **params.get("ablation", {})}
    return merged


def grid_settings(grid: str | dict) -> list[CodecSetting]:
    """Expand the `grid` parameter into codec settings, in codec, size, CRF order."""
    if grid == FULL_GRID:
        return codec_module.default_settings()
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid must be {FULL_GRID!r} or a mapping codec -> {{sizes, crfs}}, got {grid!r}")
    settings = []
    for name, spec in grid.items():
        sizes = spec.get("sizes", codec_module.SIZES)
        crfs = spec.get("crfs", CODECS[name].default_crfs if name in CODECS else None)
        if crfs is None:
            raise ValueError(f"codec {name!r} has no default CRFs; give grid.{name}.crfs")
        settings += [CodecSetting(name, int(w), int(h), int(crf)) for w, h in sizes for crf in crfs]
    return settings


def setting_label(setting: CodecSetting) -> str:
    return f"{setting.codec}_{setting.width}x{setting.height}_crf{setting.crf}"


def ablation_setting(params: dict) -> CodecSetting:
    spec = params["ablation"]["setting"]
    return CodecSetting(spec["codec"], int(spec["width"]), int(spec["height"]), int(spec["crf"]))


# ---------------------------------------------------------------- cache keys


def digest(*parts) -> str:
    """Return 12 hex digits of SHA-256 over JSON-encoded parts (dicts sorted by key)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def source_digest(modules: Iterable) -> str:
    """Return 12 hex digits of SHA-256 over the source files of modules."""
    hasher = hashlib.sha256()
    for module in modules:
        hasher.update(Path(inspect.getfile(module)).read_bytes())
    return hasher.hexdigest()[:12]


def array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:12]


def _write_atomic(path: Path, text: str) -> None:
    """Write text beside its final name and rename it, so a crash never leaves half a file."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(path)


def _save_array(path: Path, array: np.ndarray) -> None:
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")
    np.save(partial, array)
    partial.replace(path)


# ---------------------------------------------------------------- motions and questions


def motion_joints(spec: Sequence[str], prepared: PreparedData) -> np.ndarray:
    """Return the joints (F, 22, 3) of a motion spec: one clip, or an ordered pair played one after the other."""
    if len(spec) == 1:
        return prepared.joints(spec[0])
    if len(spec) == 2:
        return concatenate_clips(prepared.joints(spec[0]), prepared.joints(spec[1]))
    raise ValueError(f"a motion is one clip id or an ordered pair, got {len(spec)}: {list(spec)}")


def spread_clips(
    records: Sequence[dict], categories: dict[str, set], count: int, seed: int, max_frames: int | None
) -> list[str]:
    """Pick `count` clip ids that cover the question categories and as many contents as possible.

    The picks take turns over the categories in QUESTION_CATEGORIES order (order questions
    excluded, since they are about pairs). Each turn takes a clip with a question of that
    category, preferring a content not yet picked, in a seeded random order. Clips longer
    than `max_frames` are left out. `categories` maps clip id to its question categories.
    """
    rng = np.random.default_rng(seed)
    pool = [r for r in records if max_frames is None or r["frames"] <= max_frames]
    pool = [pool[i] for i in rng.permutation(len(pool))]
    turns = [c for c in QUESTION_CATEGORIES if c != "order"]
    chosen: list[str] = []
    contents: set[str] = set()
    turn = misses = 0
    while len(chosen) < count and pool and misses < len(turns):
        category = turns[turn % len(turns)]
        turn += 1
        candidates = [r for r in pool if category in categories.get(r["clip_id"], set())]
        if not candidates:
            misses += 1
            continue
        misses = 0
        fresh = [r for r in candidates if r["content"] not in contents]
        pick = (fresh or candidates)[0]
        chosen.append(pick["clip_id"])
        contents.add(pick["content"])
        pool.remove(pick)
    return chosen


def question_categories(questions: Iterable[Question]) -> dict[str, set]:
    """Map each single clip id to the categories of its questions."""
    result: dict[str, set] = {}
    for question in questions:
        if len(question.clip_ids) == 1:
            result.setdefault(question.clip_ids[0], set()).add(question.category)
    return result


def select_motions(
    questions: Sequence[Question], prepared: PreparedData, split: str, clips: int | list | None,
    pairs: int | None, max_frames: int | None, seed: int,
) -> list[tuple[str, ...]]:
    """Choose the motion specs of the stage: single clips (`spread_clips`), then order pairs.

    clips: a count, a list of clip ids, or None for every clip of the split. pairs: a count of
    order questions drawn (seeded) among those whose clips are at most `max_frames` long, or
    None for every order question.
    """
    records = prepared.records(split)
    if clips is None:
        singles = [r["clip_id"] for r in records]
    elif isinstance(clips, list):
        known = {r["clip_id"] for r in records}
        missing = [c for c in clips if c not in known]
        if missing:
            raise ValueError(f"clips {missing} are not in the {split} split of {prepared.folder}")
        singles = list(clips)
    else:
        singles = spread_clips(records, question_categories(questions), int(clips), seed, max_frames)

    order = [q for q in questions if q.category == "order"]
    if pairs is None:
        chosen_pairs = list(dict.fromkeys(q.clip_ids for q in order))
    else:
        frames = {r["clip_id"]: r["frames"] for r in records}
        short = [q.clip_ids for q in order if max_frames is None or max(frames[c] for c in q.clip_ids) <= max_frames]
        short = list(dict.fromkeys(short))
        rng = np.random.default_rng([seed, 1])
        chosen_pairs = [short[i] for i in sorted(rng.choice(len(short), min(int(pairs), len(short)), replace=False))]
    return [(clip,) for clip in singles] + chosen_pairs


def questions_about(questions: Sequence[Question], specs: Iterable[Sequence[str]]) -> list[Question]:
    """Keep the questions whose motion is one of the specs."""
    kept = {tuple(spec) for spec in specs}
    return [q for q in questions if tuple(q.clip_ids) in kept]


def wrong_choice(question: Question) -> int:
    """Return a choice index that is not the answer: the prediction recorded after a detection failure."""
    return (question.answer + 1) % len(question.choices)


# ---------------------------------------------------------------- rendering


def render_motion(spec: Sequence[str], prepared: PreparedData, config: RenderConfig, folder: Path) -> dict:
    """Render a motion spec once (cached) and return its record: path, frames, fps, seconds, bytes.

    The render seed is the motion's name, so the figure's colours are fixed per motion.
    """
    name = motion_name(spec)
    joints = motion_joints(spec, prepared)
    key = digest(asdict(config), array_digest(joints), source_digest(RENDER_SOURCES))
    path = folder / f"{name}-{key}.mp4"
    record_path = path.with_suffix(".json")
    if record_path.is_file() and path.is_file():
        return json.loads(record_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    stats = render_module.render_clip(joints, path, config, seed=name)
    record = {
        "motion": name, "path": str(path), "key": key, "frames": stats.frames, "fps": stats.fps,
        "seconds": stats.frames / stats.fps, "bytes": stats.bytes,
        "render_seconds": stats.render_seconds, "encode_seconds": stats.encode_seconds,
    }
    _write_atomic(record_path, json.dumps(record, indent=1))
    log.info("rendered %s: %d frames in %.1f s", name, stats.frames, stats.render_seconds)
    return record


# ---------------------------------------------------------------- video settings


def pixel_options(params: dict) -> dict:
    return {"upscale_side": params["upscale_side"], "interpolation": params["interpolation"]}


def measure_motion(
    setting: CodecSetting, source: dict, folder: Path, estimator: PoseEstimator, options: dict, edge: EdgeParams
) -> tuple[dict, np.ndarray | None]:
    """Encode one rendered motion with one setting and recover its motion from the decoded video (cached).

    Returns the record (bytes, payload_bytes, encode_s, decode_s, psnr_db, pixel pipeline
    summary) and the features (T, 263), or None after a detection failure.
    """
    key = digest(source["key"], asdict(setting), options, asdict(edge), estimator.name,
                 getattr(estimator, "options", None), source_digest(MOTION_SOURCES))
    stem = folder / f"{source['motion']}-{key}"
    record_path, features_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        return record, np.load(features_path) if record["pixel"]["ok"] else None

    folder.mkdir(parents=True, exist_ok=True)
    video_path = stem.with_suffix(codec_module.CONTAINER)
    reference = codec_module.reference_frames(source["path"], setting.width, setting.height)
    encode_s = codec_module.encode(reference, video_path, setting.codec, setting.crf, source["fps"])
    frames, timestamps, decode_s = codec_module.decode(video_path)
    if frames.shape != reference.shape:
        raise RuntimeError(f"{video_path} decoded to {frames.shape}, expected {reference.shape}")
    result: PixelResult = pixel_module.motion_from_frames(
        frames, timestamps, estimator, edge, decode_ms=1000.0 * decode_s, **options
    )
    record = {
        "motion": source["motion"], **asdict(setting), "frames": len(frames),
        "bytes": video_path.stat().st_size, "payload_bytes": codec_module.payload_bytes(video_path),
        "encode_s": encode_s, "decode_s": decode_s, "psnr_db": codec_module.psnr(reference, frames),
        "pixel": result.summary(),
    }
    if result.ok:
        _save_array(features_path, result.features)
    _write_atomic(record_path, json.dumps(record, indent=1))
    return record, result.features


def measure_setting(
    setting: CodecSetting, sources: Sequence[dict], work_dir: Path, estimator: PoseEstimator, options: dict,
    edge: EdgeParams,
) -> tuple[list[dict], dict[str, np.ndarray | None]]:
    """Run `measure_motion` over every rendered motion; return the records and features by motion name."""
    folder = work_dir / "settings" / setting_label(setting)
    records, features = [], {}
    for source in sources:
        record, motion = measure_motion(setting, source, folder, estimator, options, edge)
        records.append(record)
        features[source["motion"]] = motion
    failures = sum(not r["pixel"]["ok"] for r in records)
    log.info("%s: %d motions, %d detection failures", setting_label(setting), len(records), failures)
    return records, features


# ---------------------------------------------------------------- packets


def mocap_packets(
    specs: Sequence[Sequence[str]], prepared: PreparedData, tokenizer: Tokenizer
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Send the motion-capture features of each spec through a fixed-width packet.

    Returns per-motion records (packet bytes, edge ms = tokenizer + packing, cloud decode ms)
    and the normalised decoded features (4N, 263) by motion name.
    """
    records, motions = [], {}
    for spec in specs:
        features = motion_features(spec, prepared)
        started = time.perf_counter()
        data = packet_bytes(tokenizer, tokenizer.encode(features), len(features))
        edge_ms = 1000.0 * (time.perf_counter() - started)
        started = time.perf_counter()
        decoded, _ = decode_motion(tokenizer, data)
        decode_ms = 1000.0 * (time.perf_counter() - started)
        name = motion_name(spec)
        motions[name] = normalise(decoded, tokenizer)
        records.append({"motion": name, "packet_bytes": len(data), "edge_ms": edge_ms, "decode_ms": decode_ms, "ok": True})
    return records, motions


def edge_packets(
    sources: Sequence[dict], tokenizer: Tokenizer, estimator: PoseEstimator, edge: EdgeParams, folder: Path
) -> tuple[list[dict], dict[str, np.ndarray | None]]:
    """Run the edge pipeline on each uncompressed rendered video and decode its packet as the cloud does (cached).

    Returns per-motion records (packet bytes, detection rate, edge stage times, cloud decode
    ms, failure) and the normalised decoded features by motion name, None after a failure.
    """
    folder.mkdir(parents=True, exist_ok=True)
    records, motions = [], {}
    for source in sources:
        key = digest(source["key"], asdict(edge), tokenizer.hash.hex(), estimator.name,
                     getattr(estimator, "options", None), source_digest(MOTION_SOURCES))
        stem = folder / f"{source['motion']}-{key}"
        if stem.with_suffix(".json").is_file():
            record = json.loads(stem.with_suffix(".json").read_text())
        else:
            record = {"motion": source["motion"]}
            try:
                result = run_edge(source["path"], tokenizer, edge, estimator=estimator)
            except PoseQualityError as error:
                record.update(ok=False, failure=str(error), packet_bytes=0, edge_ms=None, decode_ms=None,
                              detection_rate=None)
            else:
                started = time.perf_counter()
                decoded, _ = decode_motion(tokenizer, result.packet)
                decode_ms = 1000.0 * (time.perf_counter() - started)
                _save_array(stem.with_suffix(".npy"), decoded)
                record.update(ok=True, failure=None, packet_bytes=result.packet_size, edge_ms=result.timings_ms.total,
                              decode_ms=decode_ms, detection_rate=result.detection_rate,
                              edge_timings_ms=result.timings_ms.as_dict())
            _write_atomic(stem.with_suffix(".json"), json.dumps(record, indent=1))
        records.append(record)
        motions[source["motion"]] = normalise(np.load(stem.with_suffix(".npy")), tokenizer) if record["ok"] else None
    return records, motions


# ---------------------------------------------------------------- answering


def cloud_motion(features: np.ndarray | None, tokenizer: Tokenizer, requantize: bool) -> np.ndarray | None:
    """Return what the projector reads from raw pixel-pipeline features (T, 263): normalised, optionally through the VQ-VAE."""
    if features is None:
        return None
    return decoded_features(tokenizer, features) if requantize else normalise(features, tokenizer)


def answer_questions(
    model: MotionLanguageModel, questions: Sequence[Question], motions: dict[str, np.ndarray | None]
) -> dict:
    """Answer each question from its motion; a question whose motion is None gets `wrong_choice`.

    Returns {"ids", "predictions", "llm_ms" (None after a failure), "motion_tokens" (0 after a
    failure), "failed": number of questions without motion}.
    """
    model.eval()
    result = {"ids": [], "predictions": [], "llm_ms": [], "motion_tokens": [], "failed": 0}
    for question in questions:
        motion = motions[motion_name(question.clip_ids)]
        result["ids"].append(question.id)
        if motion is None:
            result["predictions"].append(wrong_choice(question))
            result["llm_ms"].append(None)
            result["motion_tokens"].append(0)
            result["failed"] += 1
            continue
        started = time.perf_counter()
        scores = model.score_choices(motion, question.question, question.choices)
        result["llm_ms"].append(1000.0 * (time.perf_counter() - started))
        result["predictions"].append(int(np.argmax(scores)))
        result["motion_tokens"].append(model.projector.num_tokens(len(motion)))
    return result


def cached_answers(
    folder: Path, name: str, model_key: str, model: MotionLanguageModel, questions: Sequence[Question],
    motions: dict[str, np.ndarray | None],
) -> dict:
    """Return `answer_questions`, cached under the model, the questions and the exact motions."""
    motion_keys = {name: None if m is None else array_digest(m) for name, m in sorted(motions.items())}
    key = digest(model_key, [q.to_dict() for q in questions], motion_keys)
    path = folder / f"{name}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    result = answer_questions(model, questions, motions)
    _write_atomic(path, json.dumps(result))
    return result


# ---------------------------------------------------------------- rows


def _mean(values: Iterable) -> float | None:
    picked = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(picked)) if picked else None


def accuracy_columns(predictions: Sequence[int], questions: Sequence[Question]) -> dict:
    """Return acc_<category>, n_<category> for every category (None where it has no question), overall and its 95 % CI."""
    result = score(predictions, questions)
    columns = {}
    for category in QUESTION_CATEGORIES:
        entry = result["categories"].get(category)
        columns[f"acc_{category}"] = entry["accuracy"] if entry else None
        columns[f"n_{category}"] = entry["n"] if entry else 0
    overall = result["overall"]
    columns.update(acc_overall=overall["accuracy"], n_overall=overall["n"], ci_low=overall["ci_low"],
                   ci_high=overall["ci_high"], chance=overall["chance"])
    return columns


def visual_tokens(sources: Sequence[dict], width: int, height: int) -> float:
    """Mean Qwen3-VL video tokens per motion at width x height, frames sampled as its processor does."""
    counts = []
    for source in sources:
        frames = len(sample_frame_indices(int(source["frames"]), float(source["fps"])))
        counts.append(visual_token_count(frames, height, width).visual_tokens)
    return float(np.mean(counts))


def _motion_tokens(answers: dict) -> float | None:
    return _mean(tokens for tokens in answers["motion_tokens"] if tokens)


def video_row(
    setting: CodecSetting, records: Sequence[dict], answers: dict, questions: Sequence[Question], sources: Sequence[dict]
) -> dict:
    """Summarise one setting: size, times and PSNR per clip, detection, accuracy and tokens."""
    spec = CODECS.get(setting.codec)
    pixel = [r["pixel"] for r in records]
    stage_ms = {stage: _mean(p["timings_ms"][stage] for p in pixel) for stage in pixel_module.STAGES}
    llm_ms = _mean(answers["llm_ms"])
    payload = _mean(r["payload_bytes"] for r in records)
    return {
        "method": "video",
        "codec": setting.codec,
        "resolution": f"{setting.width}x{setting.height}",
        "width": setting.width,
        "height": setting.height,
        "crf": setting.crf,
        "crf_scale": f"{spec.crf_range[0]}-{spec.crf_range[1]}" if spec else "unknown",
        "clips": len(records),
        "bytes_per_clip": payload,
        "kb_per_clip": payload / BYTES_PER_KB,
        "file_bytes_per_clip": _mean(r["bytes"] for r in records),
        "encode_ms": 1000.0 * _mean(r["encode_s"] for r in records),
        "edge_ms": 1000.0 * _mean(r["encode_s"] for r in records),  # encoding is the edge's only compute
        "decode_ms": 1000.0 * _mean(r["decode_s"] for r in records),
        "psnr_db": _mean(r["psnr_db"] for r in records),
        "detection_rate": _mean(p["detection_rate"] for p in pixel),
        "failed_clips": sum(not p["ok"] for p in pixel),
        "failed_questions": answers["failed"],
        **accuracy_columns(answers["predictions"], questions),
        "visual_tokens": visual_tokens(sources, setting.width, setting.height),
        "motion_tokens": _motion_tokens(answers),
        "upscale_ms": stage_ms["upscale"],
        "pose_ms": stage_ms["pose"],
        "features_ms": stage_ms["features"],
        "llm_ms": llm_ms,
        "cloud_ms": sum(stage_ms.values()) + (llm_ms or 0.0),
    }


def packet_row(method: str, records: Sequence[dict], answers: dict, questions: Sequence[Question]) -> dict:
    """Summarise motion packets: KB per clip, edge and cloud compute, accuracy and motion tokens."""
    sent = [r for r in records if r["ok"]]
    payload = _mean(r["packet_bytes"] for r in sent) or 0.0
    llm_ms = _mean(answers["llm_ms"])
    decode_ms = _mean(r["decode_ms"] for r in sent) or 0.0
    return {
        "method": method,
        "codec": "toau-vqvae",
        "resolution": None,
        "crf": None,
        "clips": len(records),
        "bytes_per_clip": payload,
        "kb_per_clip": payload / BYTES_PER_KB,
        "detection_rate": _mean(r.get("detection_rate") for r in records),  # None for motion capture
        "failed_clips": len(records) - len(sent),
        "failed_questions": answers["failed"],
        **accuracy_columns(answers["predictions"], questions),
        "visual_tokens": None,
        "motion_tokens": _motion_tokens(answers),
        "edge_ms": _mean(r["edge_ms"] for r in sent),
        "decode_ms": decode_ms,
        "llm_ms": llm_ms,
        "cloud_ms": decode_ms + (llm_ms or 0.0),
    }


def latency_inputs(video_rows: Sequence[dict], packet_rows: Sequence[dict], bandwidths: Sequence[float]) -> dict:
    """Collect edge ms, payload bytes and cloud ms per method, and their `latency_breakdown` rows.

    Video: edge = encoding (the render is the camera, not edge compute, and the downscale to the
    setting's size is not timed); cloud = decode + upscale + pose + features + one question's LLM
    scoring. Packets: edge = what the edge runs (mocap: tokenizer and packing; estimated: the
    whole edge pipeline); cloud = packet decoding + one question's LLM scoring.
    """
    inputs = []
    for row in video_rows:
        inputs.append({
            "method": "video", "codec": row["codec"], "resolution": row["resolution"], "crf": row["crf"],
            "edge_ms": row["edge_ms"], "payload_bytes": round(row["bytes_per_clip"]), "cloud_ms": row["cloud_ms"],
            "cloud_parts_ms": {name: row[name] for name in ("decode_ms", "upscale_ms", "pose_ms", "features_ms", "llm_ms")},
        })
    for row in packet_rows:
        inputs.append({
            "method": row["method"], "codec": row["codec"], "resolution": None, "crf": None,
            "edge_ms": row["edge_ms"], "payload_bytes": round(row["bytes_per_clip"]), "cloud_ms": row["cloud_ms"],
            "cloud_parts_ms": {"decode_ms": row["decode_ms"], "llm_ms": row["llm_ms"]},
        })
    rows = []
    for entry in inputs:
        if entry["edge_ms"] is None:
            continue
        labels = {name: entry[name] for name in ("method", "codec", "resolution", "crf")}
        rows += latency_breakdown(entry["edge_ms"], entry["payload_bytes"], tcp_overhead_bytes(entry["payload_bytes"]),
                                  entry["cloud_ms"], bandwidths, **labels)
    return {"inputs": inputs, "rows": rows}


# ---------------------------------------------------------------- files


def write_rows(rows: Sequence[dict], stem: Path, extra: dict) -> None:
    """Write rows to stem.csv and {**extra, "rows": rows} to stem.json."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(name for row in rows for name in row))
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    stem.with_suffix(".json").write_text(json.dumps({**extra, "rows": list(rows)}, indent=2) + "\n")


def plot_rate_accuracy(video_rows: Sequence[dict], packet_rows: Sequence[dict], path: Path) -> None:
    """Plot overall accuracy against KB per clip (log x): one line per codec and size over CRF, packets as stars."""
    import pandas as pd
    import seaborn as sns
    from matplotlib.figure import Figure  # no pyplot, so a notebook's plotting backend stays as it is

    frame = pd.DataFrame(video_rows).sort_values(["codec", "width", "kb_per_clip"])
    sizes = frame.sort_values("width", ascending=False)["resolution"].unique()
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    sns.lineplot(data=frame, x="kb_per_clip", y="acc_overall", hue="codec", style="resolution", style_order=sizes,
                 markers=True, estimator=None, ax=ax)
    for row, colour in zip(packet_rows, ("black", "dimgray", "gray")):
        source = row["method"].removeprefix("packets-")
        ax.scatter(row["kb_per_clip"], row["acc_overall"], marker="*", s=220, color=colour, zorder=5,
                   label=f"motion packets ({source})")
    chance = (video_rows or packet_rows)[0]["chance"]
    ax.axhline(chance, color="black", linestyle=":", linewidth=1, label=f"chance ({chance:.2f})")
    ax.set_xscale("log")
    ax.set(xlabel="transmitted KB per clip (log scale)", ylabel="overall accuracy", ylim=(0, 1),
           title="Accuracy against transmitted size")
    ax.legend(fontsize=7, ncols=2, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------- ablation


def finetune_projector(
    model: MotionLanguageModel, cloud_dir: Path, samples: Sequence[Sample], params: dict, run_dir: Path,
) -> tuple[MotionLanguageModel, list[dict], float]:
    """Fine-tune a copy of the cloud projector on samples for params["steps"] steps (resumable in run_dir).

    The LLM is shared with `model` and stays frozen. Returns the fine-tuned model, the loss
    history and the seconds this call trained.
    """
    projector = load_projector(cloud_dir).to(model.device)
    tuned = MotionLanguageModel(model.llm, model.tokenizer, projector, model.max_length)
    started = time.perf_counter()
    history = train_projector(tuned, [("video-qa", list(samples), int(params["steps"]))], params["train"], run_dir)
    return tuned.eval(), history, time.perf_counter() - started


def ablation_rows(rows: dict[str, tuple[dict, Sequence[Question]]]) -> list[dict]:
    """Turn {label: (answers, questions)} into Table III rows."""
    return [{"model": label, **accuracy_columns(answers["predictions"], questions), "failed_questions": answers["failed"]}
            for label, (answers, questions) in rows.items()]


# ---------------------------------------------------------------- stage


def make_estimator(config: RenderConfig) -> PoseEstimator:
    """MediaPipe with the renderer's focal length, so its root-translation fit uses the rendering camera."""
    return get_estimator("mediapipe", model_complexity=1, focal_length_ratio=config.focal_length_ratio)


def run_video_stage(
    prepared_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    cloud_dir: str | os.PathLike,
    params: dict,
    work_dir: str | os.PathLike,
    results_dir: str | os.PathLike,
    *,
    backbone: tuple | None = None,
    estimator: PoseEstimator | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the video baseline stage (see the module docstring) and write its result files.

    params: the `video` section of params.yaml. backbone: a loaded (LLM, text tokenizer) used in
    place of the LLM named in cloud_dir/cloud.json. estimator: a pose estimator in place of
    `make_estimator` (left open). progress: called with a line after each step. Returns the
    sweep, table, ablation and latency records written.
    """
    params = video_params(params)
    cloud_dir, work_dir, results_dir = Path(cloud_dir), Path(work_dir), Path(results_dir)
    torch.set_num_threads(int(params["threads"]))
    say = progress or log.info
    started = time.perf_counter()

    prepared = PreparedData(prepared_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    model, llm_name, _ = load_trained_model(Path(cloud_dir), tokenizer, backbone, params["device"])
    projector_sha = sha256_file(cloud_dir / WEIGHTS_FILE)
    model_key = digest(projector_sha, llm_name, tokenizer.hash.hex())
    video_key = digest(model_key, params["requantize"])
    config = RenderConfig(**params["render"])
    edge = EdgeParams()
    options = pixel_options(params)

    questions = build_benchmark(prepared, split=params["split"], seed=params["seed"])
    specs = select_motions(questions, prepared, params["split"], params["clips"], params["pairs"],
                           params["max_clip_frames"], params["seed"])
    questions = questions_about(questions, specs)
    say(f"{len(specs)} motions, {len(questions)} questions")

    sources = [render_motion(spec, prepared, config, work_dir / "render") for spec in specs]
    say(f"rendered {len(sources)} motions ({sum(s['frames'] for s in sources)} frames)")

    owned = estimator is None
    estimator = estimator or make_estimator(config)
    answers_dir = work_dir / "answers"
    try:
        mocap_records, mocap_motions = mocap_packets(specs, prepared, tokenizer)
        mocap_answers = cached_answers(answers_dir, "packets-mocap", model_key, model, questions, mocap_motions)
        edge_records, edge_motions = edge_packets(sources, tokenizer, estimator, edge, work_dir / "edge")
        edge_answers = cached_answers(answers_dir, "packets-estimated", model_key, model, questions, edge_motions)
        packet_rows = [packet_row("packets-mocap", mocap_records, mocap_answers, questions),
                       packet_row("packets-estimated", edge_records, edge_answers, questions)]
        say(f"packets: mocap {packet_rows[0]['acc_overall']:.3f}, estimated {packet_rows[1]['acc_overall']:.3f}")

        settings = grid_settings(params["grid"])
        chosen = ablation_setting(params)
        video_rows, per_motion, setting_answers = [], {}, {}
        for setting in dict.fromkeys([*settings, chosen]):
            records, features = measure_setting(setting, sources, work_dir, estimator, options, edge)
            motions = {name: cloud_motion(f, tokenizer, params["requantize"]) for name, f in features.items()}
            label = setting_label(setting)
            answers = cached_answers(answers_dir, label, video_key, model, questions, motions)
            setting_answers[setting] = (answers, motions)
            if setting in settings:
                video_rows.append(video_row(setting, records, answers, questions, sources))
                per_motion[label] = records
                say(f"{label}: {video_rows[-1]['kb_per_clip']:.2f} KB, accuracy {video_rows[-1]['acc_overall']:.3f}, "
                    f"{video_rows[-1]['failed_clips']} failed clips")

        ablation = run_ablation(params, prepared, tokenizer, model, cloud_dir, chosen, config, estimator, options, edge,
                                work_dir, questions, setting_answers[chosen], mocap_answers, edge_answers,
                                digest(video_key, params["ablation"]), say)
    finally:
        if owned:
            estimator.close()

    record = provenance(
        params=params, seed=params["seed"], split=params["split"], llm=llm_name, projector_sha256=projector_sha,
        codebook_hash=tokenizer.hash.hex(), prepared_dir=str(prepared_dir), render=asdict(config),
        edge=asdict(edge), estimator={"name": estimator.name, "options": getattr(estimator, "options", None)},
        motions=[motion_name(spec) for spec in specs], questions=[q.id for q in questions],
        sizes="bytes_per_clip is the video stream without the MP4 container (sum of packet sizes)",
    )
    write_results(results_dir, record, video_rows, packet_rows, per_motion, mocap_records, edge_records, ablation,
                  params["bandwidths_kBps"])
    say(f"video stage done in {time.perf_counter() - started:.0f} s")
    return {"video_rows": video_rows, "packet_rows": packet_rows, "ablation": ablation}


def run_ablation(
    params: dict, prepared: PreparedData, tokenizer: Tokenizer, model: MotionLanguageModel, cloud_dir: Path,
    setting: CodecSetting, config: RenderConfig, estimator: PoseEstimator, options: dict, edge: EdgeParams,
    work_dir: Path, questions: Sequence[Question], video: tuple[dict, dict], mocap_answers: dict, edge_answers: dict,
    key: str, say: Callable[[str], None],
) -> dict:
    """Fine-tune the projector on pixel-pipeline motion of rendered train clips at `setting`; return Table III.

    Training samples are the benchmark questions of the train split (seeded by
    ablation.sample_seed, as the projector's own QA samples) about the chosen clips, answered
    with the correct choice's text. Clips whose video fails detection give no sample.
    """
    settings = params["ablation"]
    train_questions = build_benchmark(prepared, split="train", seed=settings["sample_seed"])
    clips = spread_clips(prepared.records("train"), question_categories(train_questions), int(settings["train_clips"]),
                         settings["sample_seed"], params["max_clip_frames"])
    sources = [render_motion((clip,), prepared, config, work_dir / "render") for clip in clips]
    _, features = measure_setting(setting, sources, work_dir, estimator, options, edge)
    motions = {name: cloud_motion(f, tokenizer, params["requantize"]) for name, f in features.items()}
    samples = [Sample(motions[q.clip_ids[0]], q.question, q.answer_text)
               for q in questions_about(train_questions, [(clip,) for clip in clips]) if motions[q.clip_ids[0]] is not None]
    if not samples:
        raise ValueError(f"no training sample: every one of the {len(clips)} train clips failed detection at "
                         f"{setting_label(setting)}; choose another ablation setting or more train_clips")
    say(f"ablation: {len(samples)} samples from {len(clips)} train clips at {setting_label(setting)}")

    run_dir = work_dir / "ablation" / f"finetune-{digest(key, clips, [array_digest(s.features) for s in samples])}"
    tuned, history, seconds = finetune_projector(model, cloud_dir, samples, settings, run_dir)
    video_answers, video_motions = video
    tuned_answers = cached_answers(work_dir / "answers", f"finetuned-{setting_label(setting)}",
                                   digest(key, sha256_file(run_dir / WEIGHTS_FILE)), tuned, questions, video_motions)
    label = setting_label(setting)
    rows = ablation_rows({
        f"mocap-trained projector, video {label}": (video_answers, questions),
        f"video-finetuned projector, video {label}": (tuned_answers, questions),
        "mocap-trained projector, packets from mocap": (mocap_answers, questions),
        "mocap-trained projector, packets from rendered video": (edge_answers, questions),
    })
    say(f"ablation: original {rows[0]['acc_overall']:.3f}, fine-tuned {rows[1]['acc_overall']:.3f}")
    return {
        "setting": asdict(setting),
        "train_clips": clips,
        "samples": len(samples),
        "training": {"steps": len(history), "seconds_this_run": seconds, "loss": [entry["loss"] for entry in history]},
        "rows": rows,
    }


def write_results(
    results_dir: Path, record: dict, video_rows: list[dict], packet_rows: list[dict], per_motion: dict,
    mocap_records: list[dict], edge_records: list[dict], ablation: dict, bandwidths: Sequence[float],
) -> None:
    """Write the sweep, tables, ablation, latency inputs and the rate-accuracy figure."""
    write_rows(video_rows, results_dir / SWEEP_STEM, {"provenance": record, "per_motion": per_motion})
    tables = [{name: {"table": table, **row}.get(name) for name in TABLE_COLUMNS}
              for table, packet in (("I", packet_rows[0]), ("II", packet_rows[1])) for row in [packet, *video_rows]]
    write_rows(tables, results_dir / TABLES_STEM, {
        "provenance": record,
        "tables": {"I": "motion packets from motion capture against video", "II": "motion packets that the edge "
                   "pipeline estimates from the uncompressed rendered video against video"},
        "packets": {"mocap": mocap_records, "estimated": edge_records},
    })
    ablation = copy.deepcopy(ablation)
    write_rows(ablation.pop("rows"), results_dir / ABLATION_STEM, {"provenance": record, **ablation})
    latency = latency_inputs(video_rows, packet_rows, bandwidths)
    (results_dir / LATENCY_FILE).write_text(json.dumps({"provenance": record, **latency}, indent=2) + "\n")
    plot_rate_accuracy(video_rows, packet_rows, results_dir / FIGURE)
