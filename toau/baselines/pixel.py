"""The pixel pipeline: the cloud half of the video baseline, from compressed video to motion features.

No vision-language model can be loaded offline, so the video baseline runs the same motion
model as TOAU. The edge sends compressed video. The cloud decodes it, upscales small
frames, estimates the pose per frame (MediaPipe by default), fills short gaps, resamples the
joints to 20 fps by timestamps and computes HumanML3D features (T, 263). Those go to the
projector and the LLM as any other motion does.

The motion rules (frame sampling, gap filling, the usable-fraction check, trimming, the
minimum length) are the edge pipeline's (`toau.edge.pipeline.motion_from_track` with
`EdgeParams`), so the video baseline and the motion packets differ only in what travels.

A clip whose video gives no usable motion (too few frames with a person, a long gap, too
short) is a detection failure: `PixelResult.features` is None and `failure` says why. The
benchmark counts every question about such a clip as answered wrongly.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from toau.cloud.projector import FRAMES_PER_INDEX
from toau.edge.pipeline import EdgeParams, FrameSampler, motion_from_track
from toau.io.video import read_video
from toau.motion.humanml3d import joints_to_features
from toau.pose.base import FramePose, PoseEstimator, PoseQualityError, PoseTrack

log = logging.getLogger(__name__)

# Frames whose longer side is below UPSCALE_SIDE are enlarged to it before pose estimation,
# because BlazePose misses small people: it finds the person with a detector, then crops the
# person's box for the landmark model. Measured with MediaPipe 0.10.21 (model_complexity 1) on
# rendered Bandai clips sent through libx264: a 4 s walk at 80x46 CRF 33 had a person in 13%
# of the sampled frames without upscaling and 99% with bilinear upscaling to 640. Over three
# other 5 s clips (a wave, a run and a bow) at 160x90 CRF 43 and 80x46 CRF 23, 33 and 43, the
# mean fraction was 0.27 without upscaling and 0.27, 0.47 and 0.39 with bilinear, bicubic and
# Lanczos upscaling. So bicubic is the default.
UPSCALE_SIDE = 640
INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
                  "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
DEFAULT_INTERPOLATION = "cubic"
STAGES = ("decode", "upscale", "pose", "features")


@dataclass
class PixelResult:
    """Motion that the cloud recovers from one video.

    features (T, 263) float32, not normalised, or None after a detection failure.
    detection_rate: fraction of the sampled frames in which the estimator found a person,
    before gap filling. sampled_frames: frames given to the estimator. failure: why no
    motion came out (the PoseQualityError message), None on success. timings_ms: wall time
    per stage in milliseconds (`STAGES`).
    """

    features: np.ndarray | None
    detection_rate: float
    sampled_frames: int
    failure: str | None = None
    timings_ms: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def ok(self) -> bool:
        return self.features is not None

    @property
    def total_ms(self) -> float:
        return float(sum(self.timings_ms.values()))

    def summary(self) -> dict:
        """Return the numbers of the result as a JSON-ready dict (no arrays)."""
        return {
            "ok": self.ok,
            "feature_rows": 0 if self.features is None else len(self.features),
            "detection_rate": self.detection_rate,
            "sampled_frames": self.sampled_frames,
            "failure": self.failure,
            "timings_ms": dict(self.timings_ms),
            "total_ms": self.total_ms,
        }


def upscale(frame: np.ndarray, side: int | None, interpolation: str = DEFAULT_INTERPOLATION) -> np.ndarray:
    """Enlarge an (H, W, 3) frame so that its longer side is `side` pixels; larger frames and None pass unchanged.

    The aspect ratio is kept, so the estimator's focal length over the longer side still holds.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {sorted(INTERPOLATIONS)}")
    height, width = frame.shape[:2]
    if side is None or max(height, width) >= side:
        return frame
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=INTERPOLATIONS[interpolation])


def _timed_ms(started: float) -> float:
    return 1000.0 * (time.perf_counter() - started)


def motion_from_frames(
    frames: np.ndarray,
    timestamps: np.ndarray,
    estimator: PoseEstimator,
    params: EdgeParams | None = None,
    *,
    upscale_side: int | None = UPSCALE_SIDE,
    interpolation: str = DEFAULT_INTERPOLATION,
    decode_ms: float = 0.0,
) -> PixelResult:
    """Turn decoded frames (F, H, W, 3) uint8 RGB with timestamps (F,) seconds into motion features.

    Frames are kept at `params.sample_fps` by timestamp, upscaled to `upscale_side`, and posed
    by `estimator`, which is reset first and left open. A PoseQualityError of the edge rules
    becomes a detection failure; the shortest usable motion covers one codebook index
    (FRAMES_PER_INDEX feature rows), as on the edge. `decode_ms` is recorded as the decode stage.
    """
    params = params or EdgeParams()
    if len(frames) != len(timestamps):
        raise ValueError(f"got {len(frames)} frames but {len(timestamps)} timestamps")
    timings = dict.fromkeys(STAGES, 0.0)
    timings["decode"] = decode_ms

    sampler = FrameSampler(params.sample_fps)
    poses: list[FramePose] = []
    stamps: list[float] = []
    estimator.reset()
    for frame, timestamp in zip(frames, timestamps):
        if not sampler.keep(float(timestamp)):
            continue
        started = time.perf_counter()
        image = upscale(frame, upscale_side, interpolation)
        timings["upscale"] += _timed_ms(started)
        started = time.perf_counter()
        poses.append(estimator.process_frame(image, float(timestamp)))
        timings["pose"] += _timed_ms(started)
        stamps.append(float(timestamp))
    track = PoseTrack.from_frames(poses, stamps)

    started = time.perf_counter()
    try:
        joints = motion_from_track(track, params, FRAMES_PER_INDEX)
    except PoseQualityError as error:
        timings["features"] = _timed_ms(started)
        log.info("detection failure: %s", error)
        return PixelResult(None, track.detection_rate, len(track), str(error), timings)
    features = joints_to_features(joints)
    timings["features"] = _timed_ms(started)
    return PixelResult(features, track.detection_rate, len(track), None, timings)


def pixel_pipeline(
    video: str | os.PathLike | bytes,
    estimator: PoseEstimator,
    params: EdgeParams | None = None,
    *,
    upscale_side: int | None = UPSCALE_SIDE,
    interpolation: str = DEFAULT_INTERPOLATION,
) -> PixelResult:
    """Decode a video (a file, or its bytes as received) and recover its motion; see `motion_from_frames`.

    Raises `toau.io.video.VideoError` for a file that cannot be decoded: a broken video is an
    error, not a detection failure.
    """
    if isinstance(video, (bytes, bytearray)):
        with tempfile.TemporaryDirectory(prefix="toau_pixel_") as folder:
            path = Path(folder) / "received.mp4"
            path.write_bytes(video)
            return pixel_pipeline(path, estimator, params, upscale_side=upscale_side, interpolation=interpolation)

    started = time.perf_counter()
    clip = read_video(video)
    decode_ms = _timed_ms(started)
    return motion_from_frames(
        clip.frames, clip.timestamps, estimator, params,
        upscale_side=upscale_side, interpolation=interpolation, decode_ms=decode_ms,
    )
