"""The pose estimator interface: RGB frames in, 22 SMPL-order joints in metres out.

Every estimator returns joints in the `toau.skeleton` order and convention (metres, Y up,
right-handed; a person facing +Z has their left side at +X). Floor height, origin and
facing are not fixed here: `toau.motion.humanml3d.joints_to_features` canonicalises them.
"""

from __future__ import annotations

import importlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

import numpy as np

from toau.skeleton import JOINT_INDEX, MIRROR_INDEX, NUM_JOINTS

log = logging.getLogger(__name__)

DEFAULT_ESTIMATOR = "mediapipe"
# A frame is relabelled when its mean joint distance to the previous frame with left and
# right exchanged is below SWAP_MARGIN times the distance with its own labels. MediaPipe
# on the Pose2Sim cam02 clip at 20 fps gives ratios (exchanged / own) of 2.8 and more for
# correct frames and 0.56 and less for swapped ones.
SWAP_MARGIN = 1.0
# Frames further apart than this (s) are not compared for label swaps: the person may
# really have turned around in between.
SWAP_MAX_GAP_S = 0.25
# Registered estimators as "module:attribute", imported on first use so that importing
# this module never loads MediaPipe or torch.
_REGISTRY: dict[str, str | Callable[..., "PoseEstimator"]] = {
    "mediapipe": "toau.pose.mediapipe:MediaPipePoseEstimator",
    "cliff": "toau.pose.cliff:CliffPoseEstimator",
}


class PoseQualityError(ValueError):
    """Too few frames of a clip have a usable person for motion estimation."""


class NoPersonError(PoseQualityError):
    """No frame of a clip has a detected person."""


def camera_to_y_up(points: np.ndarray) -> np.ndarray:
    """Turn camera axes (x right, y down, z away from the camera) into Y up, right-handed.

    A half turn about X: the result has x right, y up, z toward the camera, so a person
    facing the camera faces +Z and has their left side at +X. Shape (..., 3) is kept.
    """
    return points * np.array([1.0, -1.0, -1.0], dtype=points.dtype)


class FramePose(NamedTuple):
    """One frame's estimate: joints (22, 3) metres, confidence (22,) in [0, 1], detected."""

    joints: np.ndarray
    confidence: np.ndarray
    detected: bool

    @classmethod
    def missing(cls) -> "FramePose":
        """Return the estimate for a frame without a person: NaN joints, zero confidence."""
        return cls(
            np.full((NUM_JOINTS, 3), np.nan, dtype=np.float32),
            np.zeros(NUM_JOINTS, dtype=np.float32),
            False,
        )


@dataclass
class PoseTrack:
    """Per-frame joints of one person.

    joints (F, 22, 3) float32 metres, NaN where no person was detected;
    confidence (F, 22) float32 in [0, 1], 0 where no person was detected;
    detected (F,) bool; timestamps (F,) float64 seconds, strictly increasing.
    """

    joints: np.ndarray
    confidence: np.ndarray
    detected: np.ndarray
    timestamps: np.ndarray

    def __post_init__(self) -> None:
        self.joints = np.asarray(self.joints, dtype=np.float32)
        self.confidence = np.asarray(self.confidence, dtype=np.float32)
        self.detected = np.asarray(self.detected, dtype=bool)
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        frames = len(self.timestamps)
        expected = {
            "joints": (frames, NUM_JOINTS, 3),
            "confidence": (frames, NUM_JOINTS),
            "detected": (frames,),
            "timestamps": (frames,),
        }
        for name, shape in expected.items():
            actual = getattr(self, name).shape
            if actual != shape:
                raise ValueError(f"PoseTrack.{name} has shape {actual}, expected {shape}")
        if frames > 1 and not np.all(np.diff(self.timestamps) > 0):
            raise ValueError("PoseTrack.timestamps must be strictly increasing")

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def detection_rate(self) -> float:
        """Fraction of frames with a detected person, 0.0 for an empty track."""
        return float(self.detected.mean()) if len(self) else 0.0

    def select(self, index: slice | np.ndarray) -> "PoseTrack":
        """Return the frames picked by a slice, an index array or a boolean mask."""
        return PoseTrack(self.joints[index], self.confidence[index], self.detected[index], self.timestamps[index])

    @classmethod
    def from_frames(cls, poses: Iterable[FramePose], timestamps: Iterable[float]) -> "PoseTrack":
        """Stack per-frame estimates into a track."""
        poses = list(poses)
        timestamps = np.asarray(list(timestamps), dtype=np.float64)
        if len(poses) != len(timestamps):
            raise ValueError(f"got {len(poses)} frame estimates but {len(timestamps)} timestamps")
        if not poses:
            return cls(np.zeros((0, NUM_JOINTS, 3)), np.zeros((0, NUM_JOINTS)), np.zeros(0, bool), timestamps)
        return cls(
            np.stack([pose.joints for pose in poses]),
            np.stack([pose.confidence for pose in poses]),
            np.array([pose.detected for pose in poses]),
            timestamps,
        )


class PoseEstimator(ABC):
    """Monocular 3D pose estimator for one person.

    Subclasses implement `process_frame` (streaming, keeps tracking state between calls)
    and may override `reset` to clear that state. `estimate` runs a whole clip from a
    fresh state.
    """

    name: str = "base"

    @abstractmethod
    def process_frame(self, frame: np.ndarray, timestamp: float) -> FramePose:
        """Estimate the pose in one (H, W, 3) uint8 RGB frame taken at `timestamp` seconds."""

    def reset(self) -> None:
        """Forget the tracking state, so that the next frame starts a new clip."""

    def close(self) -> None:
        """Release native resources; the estimator is unusable afterwards."""

    def __enter__(self) -> "PoseEstimator":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def estimate(self, frames: Iterable[np.ndarray], timestamps: np.ndarray, fix_swaps: bool = True) -> PoseTrack:
        """Estimate a clip: frames (F x (H, W, 3) uint8 RGB) and timestamps (F,) seconds.

        `frames` may be a generator. The estimator is reset first, so clips do not share
        tracking state. With `fix_swaps`, the track goes through `fix_left_right_swaps`.
        """
        timestamps = np.asarray(timestamps, dtype=np.float64)
        self.reset()
        poses = []
        for index, frame in enumerate(frames):
            if index >= len(timestamps):
                raise ValueError(f"more frames than the {len(timestamps)} timestamps given")
            poses.append(self.process_frame(frame, float(timestamps[index])))
        if len(poses) != len(timestamps):
            raise ValueError(f"got {len(poses)} frames but {len(timestamps)} timestamps")
        track = PoseTrack.from_frames(poses, timestamps)
        return fix_left_right_swaps(track) if fix_swaps else track


def estimate_video(
    path: str | os.PathLike,
    estimator: PoseEstimator | None = None,
    *,
    sample_fps: float | None = None,
    max_frames: int | None = None,
    max_side: int | None = None,
    fix_swaps: bool = True,
) -> PoseTrack:
    """Decode a video and estimate the pose in each frame (or in frames sampled at `sample_fps`).

    Sampling keeps the first frame at or after each tick of the `sample_fps` grid, which
    saves estimator time; resample the joints by their timestamps afterwards. With
    `fix_swaps`, the track goes through `fix_left_right_swaps`. Raises
    `toau.io.video.VideoError` for an unreadable file. The default estimator is
    `get_estimator()`, closed after use; a given estimator is left open.
    """
    from toau.io.video import iter_frames, sample_frames

    owned = estimator is None
    estimator = estimator or get_estimator()
    try:
        frames = iter_frames(path, max_frames=max_frames, max_side=max_side)
        if sample_fps is not None:
            frames = sample_frames(frames, sample_fps)
        estimator.reset()
        poses, timestamps = [], []
        for image, timestamp in frames:
            poses.append(estimator.process_frame(image, timestamp))
            timestamps.append(timestamp)
    finally:
        if owned:
            estimator.close()
    track = PoseTrack.from_frames(poses, timestamps)
    return fix_left_right_swaps(track) if fix_swaps else track


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Return [start, stop) index pairs of the runs of True in a 1-D boolean mask."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2], edges[1::2]))


def fill_gaps(track: PoseTrack, max_gap_frames: int) -> PoseTrack:
    """Fill interior runs of at most `max_gap_frames` frames without a person.

    Joints are interpolated linearly in time between the frames that bound the run, the
    confidence of each filled joint is the lower of its two bounding values, and filled
    frames count as detected. Runs at the start or end of the track stay missing.
    """
    if max_gap_frames < 0:
        raise ValueError(f"max_gap_frames must be non-negative, got {max_gap_frames}")
    joints = track.joints.copy()
    confidence = track.confidence.copy()
    detected = track.detected.copy()
    times = track.timestamps
    for start, stop in _runs(~track.detected):
        if start == 0 or stop == len(track) or stop - start > max_gap_frames:
            continue
        before, after = start - 1, stop
        weight = ((times[start:stop] - times[before]) / (times[after] - times[before]))[:, None, None]
        joints[start:stop] = (1 - weight) * joints[before] + weight * joints[after]
        confidence[start:stop] = np.minimum(confidence[before], confidence[after])
        detected[start:stop] = True
    return PoseTrack(joints, confidence, detected, times.copy())


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b, axis=-1).mean())


def fix_left_right_swaps(track: PoseTrack, margin: float = SWAP_MARGIN) -> PoseTrack:
    """Undo frames whose left and right labels the estimator swapped.

    Monocular estimators sometimes mistake a person's front for their back for a few
    frames, which swaps every left/right pair. Detected frames are split into segments at
    gaps over SWAP_MAX_GAP_S. Within a segment, each frame is compared, root-centred, with
    the previous one, and it is relabelled when its mirrored labelling is closer by the
    factor `margin`. If that relabels most of a segment, the first frame's labels were the
    wrong ones, so the relabelling of the whole segment is inverted.
    """
    joints = track.joints.copy()
    confidence = track.confidence.copy()
    root = JOINT_INDEX["pelvis"]
    detected = np.flatnonzero(track.detected)
    breaks = np.flatnonzero(np.diff(track.timestamps[detected]) > SWAP_MAX_GAP_S) + 1
    for segment in np.split(detected, breaks):
        swapped = np.zeros(len(segment), dtype=bool)
        previous = None
        for position, frame in enumerate(segment):
            current = joints[frame] - joints[frame, root]
            if previous is not None:
                direct = _mean_distance(current, previous)
                mirrored = _mean_distance(current[MIRROR_INDEX], previous)
                swapped[position] = mirrored < margin * direct
            if swapped[position]:
                current = current[MIRROR_INDEX]
            previous = current
        if swapped.sum() * 2 > len(segment):
            swapped = ~swapped
        relabel = segment[swapped]
        joints[relabel] = joints[relabel][:, MIRROR_INDEX]
        confidence[relabel] = confidence[relabel][:, MIRROR_INDEX]
        if len(relabel):
            log.info("relabelled left/right in %d of %d frames", len(relabel), len(segment))
    return PoseTrack(joints, confidence, track.detected.copy(), track.timestamps.copy())


def trim_missing(track: PoseTrack) -> PoseTrack:
    """Drop the frames without a person at the start and end of a track."""
    found = np.flatnonzero(track.detected)
    if len(found) == 0:
        return track.select(slice(0, 0))
    return track.select(slice(found[0], found[-1] + 1))


def check_usable(track: PoseTrack, min_fraction: float = 0.5) -> None:
    """Raise unless at least `min_fraction` of the frames have a detected person.

    Raises NoPersonError when no frame has a person and PoseQualityError when some but too
    few do. Both messages give the detected fraction and the threshold.
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    fraction = track.detection_rate
    counts = f"{int(track.detected.sum())} of {len(track)} frames"
    if not track.detected.any():
        raise NoPersonError(
            f"no person detected in any frame ({counts}, fraction 0.00 < required {min_fraction:.2f}); "
            "check that one person is fully visible and well lit"
        )
    if fraction < min_fraction:
        raise PoseQualityError(
            f"person detected in only {counts} (fraction {fraction:.2f} < required {min_fraction:.2f}); "
            "use a clip where the person stays in view, or lower min_fraction"
        )


def register_estimator(name: str, factory: str | Callable[..., PoseEstimator]) -> None:
    """Register an estimator factory (a callable or "module:attribute") under `name`."""
    _REGISTRY[name] = factory


def available_estimators() -> tuple[str, ...]:
    """Return the registered estimator names."""
    return tuple(sorted(_REGISTRY))


def get_estimator(name: str = DEFAULT_ESTIMATOR, **options) -> PoseEstimator:
    """Construct a registered estimator, passing `options` to its constructor."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown pose estimator {name!r}; available: {', '.join(available_estimators())}")
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module_name, attribute = factory.split(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    return factory(**options)
