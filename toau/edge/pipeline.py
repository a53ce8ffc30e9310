"""The edge pipeline: a video file in, a motion packet out.

The stages, each timed in milliseconds (`StageTimes`):

- decode: PyAV decoding and RGB conversion of every frame (`toau.io.video.iter_frames`).
- pose: the pose estimator on the frames kept at `EdgeParams.sample_fps`.
- features: swap fixing, gap filling, the usability check, trimming, resampling to
  20 fps by timestamps, and HumanML3D features (F-1, 263).
- tokenizer: normalisation with the tokenizer's mean/std, then the VQ-VAE encoder.
- packing: the packet bytes, fixed 9-bit or range-coded (`toau.channel.packet`).

`run_edge` decodes a file and estimates the pose frame by frame as frames are decoded,
then runs the later stages on the whole clip. `EdgeStream` takes frames one at a time
and also encodes each window of 4 feature rows once its input has stopped changing, so
that less work is left after the last frame. Both return an `EdgeResult` with the same
indices (see `EdgeStream`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, NamedTuple

import numpy as np
from torch import nn

from toau.channel.codec import Tokenizer, load_tokenizer, packet_bytes
from toau.io.video import iter_frames
from toau.motion.humanml3d import FACING_SMOOTHING_SIGMA, FPS, joints_to_features
from toau.motion.resample import resample
from toau.pose.base import (
    DEFAULT_ESTIMATOR,
    FramePose,
    PoseEstimator,
    PoseQualityError,
    PoseTrack,
    check_usable,
    fill_gaps,
    fix_left_right_swaps,
    get_estimator,
    trim_missing,
)
from toau.tokenizer.vqvae import Encoder, ResidualBlock, ResidualStack

log = logging.getLogger(__name__)

# Frames closer than this (s) to a tick of the sampling grid count as on it, because
# pts * time_base rounds. The same tolerance as `toau.io.video.sample_frames`.
SAMPLE_TOLERANCE_S = 1e-6
# Feature rows at the end of a growing clip that may still change when more frames come.
# `joints_to_features` smooths the facing direction with a Gaussian of sigma
# FACING_SMOOTHING_SIGMA frames, which scipy truncates at 4 sigma. Velocities and foot
# contacts read one more frame ahead.
FEATURE_LOOKAHEAD_ROWS = int(4.0 * FACING_SMOOTHING_SIGMA + 0.5) + 1
STAGES = ("decode", "pose", "features", "tokenizer", "packing")
# Tokenizer inputs that `resolve_tokenizer` accepts: a folder, a Tokenizer, or (model, mean (263,), std (263,)).
TokenizerSource = str | os.PathLike | Tokenizer | tuple


@dataclass(frozen=True)
class EdgeParams:
    """Settings of the edge pipeline. Every default of the pipeline is here."""

    # Frames per second kept for pose estimation by timestamps (None keeps every frame).
    # The joints are resampled to exactly 20 fps afterwards.
    sample_fps: float | None = 20.0
    # Maximum run of frames without a person (at sample_fps) that is filled by linear
    # interpolation. 10 frames at 20 fps are 0.5 s.
    max_gap_frames: int = 10
    # Minimum fraction of frames with a person, as in `toau.pose.base.check_usable`.
    min_fraction: float = 0.5
    # Range-code the indices with the tokenizer's IndexModel instead of 9 bits each.
    entropy: bool = False
    # Longer image side after decoding, in pixels (None keeps the full size). On the
    # Pose2Sim 1080x1920 clips, 640 saved no time (decode 31-38 ms per sampled frame
    # either way, 2 shared CPU cores) and moved the joints by about 1 cm.
    max_side: int | None = None
    estimator: str = DEFAULT_ESTIMATOR
    # model_complexity=1 is the only landmark model that the mediapipe 0.10.21 wheel ships.
    estimator_options: dict = field(default_factory=lambda: {"model_complexity": 1})
    # EdgeStream encodes a window once this many newer feature rows exist.
    stream_lookahead_rows: int = FEATURE_LOOKAHEAD_ROWS

    def __post_init__(self):
        if self.sample_fps is not None and not self.sample_fps > 0:
            raise ValueError(f"sample_fps must be positive or None, got {self.sample_fps}")
        if self.max_gap_frames < 0:
            raise ValueError(f"max_gap_frames must be non-negative, got {self.max_gap_frames}")
        if not 0.0 <= self.min_fraction <= 1.0:
            raise ValueError(f"min_fraction must be in [0, 1], got {self.min_fraction}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"max_side must be a positive number of pixels or None, got {self.max_side}")
        if self.stream_lookahead_rows < 0:
            raise ValueError(f"stream_lookahead_rows must be non-negative, got {self.stream_lookahead_rows}")


class ClipTooShortError(PoseQualityError):
    """Too few frames with a person for one codebook index."""


class PoseGapError(PoseQualityError):
    """A run of frames without a person longer than `EdgeParams.max_gap_frames`."""


@dataclass
class StageTimes:
    """Wall time per stage in milliseconds, summed over every call of the stage."""

    decode: float = 0.0
    pose: float = 0.0
    features: float = 0.0
    tokenizer: float = 0.0
    packing: float = 0.0

    @property
    def total(self) -> float:
        return sum(getattr(self, stage) for stage in STAGES)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@contextmanager
def timed(times: StageTimes, stage: str) -> Iterator[None]:
    """Add the wall time of the `with` body to `times.<stage>` in milliseconds."""
    started = time.perf_counter()
    try:
        yield
    finally:
        setattr(times, stage, getattr(times, stage) + 1000.0 * (time.perf_counter() - started))


@dataclass
class StreamStats:
    """How much of the encoding `EdgeStream` did before the last frame.

    windows: indices in the packet.
    emitted: indices encoded while frames were still coming.
    kept: emitted indices whose input rows were unchanged at the end, so they went into
    the packet as they were. `finish` encoded the others again.
    """

    windows: int
    emitted: int
    kept: int

    @property
    def kept_fraction(self) -> float:
        """Fraction of emitted indices kept, 1.0 when none was emitted."""
        return self.kept / self.emitted if self.emitted else 1.0


@dataclass(eq=False)
class EdgeResult:
    """Output of the edge pipeline for one clip.

    packet: the bytes to send. indices (N,) int64. joints (F, 22, 3) float32 at 20 fps,
    metres, Y up, in the camera-aligned frame: the input of the features.
    features (F-1, 263) float32, not normalised. track: the estimator's output per
    sampled frame, before gap filling. detection_rate: fraction of sampled frames with
    a person. after_last_frame_ms: wall time from the arrival of the last frame (end
    of its decoding) to the packet, including that frame's pose.
    """

    packet: bytes
    indices: np.ndarray
    joints: np.ndarray
    features: np.ndarray
    track: PoseTrack
    detection_rate: float
    timings_ms: StageTimes
    after_last_frame_ms: float
    frames_decoded: int
    frames_per_index: int
    stream: StreamStats | None = None

    @property
    def packet_size(self) -> int:
        """Packet length in bytes, header and CRC included."""
        return len(self.packet)

    @property
    def frames_covered(self) -> int:
        """20 fps feature frames that the indices cover: 4N."""
        return len(self.indices) * self.frames_per_index

    @property
    def bits_per_frame(self) -> float:
        """Packet bits per covered 20 fps frame, header and CRC included."""
        return 8.0 * self.packet_size / self.frames_covered

    def summary(self) -> dict:
        """Return the numbers of the result as a JSON-ready dict (no arrays)."""
        return {
            "frames_decoded": self.frames_decoded,
            "frames_posed": len(self.track),
            "motion_frames": len(self.joints),
            "detection_rate": self.detection_rate,
            "indices": len(self.indices),
            "packet_bytes": self.packet_size,
            "bits_per_frame": self.bits_per_frame,
            "timings_ms": self.timings_ms.as_dict(),
            "total_ms": self.timings_ms.total,
            "after_last_frame_ms": self.after_last_frame_ms,
            "stream": asdict(self.stream) if self.stream is not None else None,
        }


# ---------------------------------------------------------------- helpers


def resolve_tokenizer(source: TokenizerSource, entropy: bool = False) -> Tokenizer:
    """Return a Tokenizer from a folder, a Tokenizer, or a (model, mean, std) tuple.

    A folder is loaded with `toau.channel.codec.load_tokenizer`, which raises
    TokenizerNotFoundError when it lacks the model. With `entropy`, the tokenizer must
    have an IndexModel. The check runs here, so that it fails before any video work.
    """
    if isinstance(source, Tokenizer):
        tokenizer = source
    elif isinstance(source, (str, os.PathLike)):
        return load_tokenizer(source, require_index_model=entropy)
    elif isinstance(source, tuple) and len(source) == 3:
        model, mean, std = source
        tokenizer = Tokenizer(model, np.asarray(mean, np.float32), np.asarray(std, np.float32))
    else:
        raise TypeError(f"expected a tokenizer folder, a Tokenizer or (model, mean, std), got {type(source).__name__}")
    if entropy and tokenizer.index_model is None:
        raise ValueError(
            "entropy coding needs the tokenizer's IndexModel, but none was given. "
            "Load the tokenizer from its folder (with index_model.json) or turn entropy coding off"
        )
    return tokenizer


def make_estimator(params: EdgeParams) -> PoseEstimator:
    return get_estimator(params.estimator, **params.estimator_options)


class FrameSampler:
    """Keep the first frame at or after each tick of a `fps` grid, one frame at a time.

    The rule of `toau.io.video.sample_frames`, for frames that arrive one by one. The
    grid starts at the first frame, and `fps` None keeps every frame.
    """

    def __init__(self, fps: float | None):
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive or None, got {fps}")
        self.period = None if fps is None else 1.0 / fps
        self._start: float | None = None
        self._next_tick = 0

    def keep(self, timestamp: float) -> bool:
        """Return whether the frame at `timestamp` seconds is kept."""
        if self.period is None:
            return True
        if self._start is None:
            self._start = timestamp
        elapsed = timestamp - self._start
        if elapsed + SAMPLE_TOLERANCE_S < self._next_tick * self.period:
            return False
        self._next_tick = math.floor((elapsed + SAMPLE_TOLERANCE_S) / self.period) + 1
        return True


def _missing_runs(detected: np.ndarray) -> list[tuple[int, int]]:
    """Return [start, stop) pairs of the runs of False in a 1-D boolean mask."""
    padded = np.concatenate([[True], detected, [True]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


def _raise_on_gaps(track: PoseTrack, max_gap_frames: int) -> None:
    """Raise PoseGapError when a trimmed, gap-filled track still has frames without a person."""
    runs = _missing_runs(track.detected)
    if not runs:
        return
    start, stop = max(runs, key=lambda run: run[1] - run[0])
    times = track.timestamps
    raise PoseGapError(
        f"no person in {stop - start} consecutive frames ({times[start]:.2f} s to {times[stop - 1]:.2f} s), "
        f"more than max_gap_frames={max_gap_frames} can fill. Raise max_gap_frames or cut the clip at the gap"
    )


def _check_length(joints: np.ndarray, frames_per_index: int, timestamps: np.ndarray) -> None:
    minimum = frames_per_index + 1  # F joint frames give F - 1 feature rows, 4 rows per index
    if len(joints) < minimum:
        seconds = timestamps[-1] - timestamps[0] if len(timestamps) else 0.0
        raise ClipTooShortError(
            f"the person is in view for {seconds:.2f} s, which gives {len(joints)} frames at {FPS} fps, "
            f"but one codebook index needs at least {minimum} ({frames_per_index} feature rows). "
            f"Use a clip with at least {(minimum - 1) / FPS:.2f} s of the person in view"
        )


def clean_track(track: PoseTrack, max_gap_frames: int) -> PoseTrack:
    """Fix left/right swaps and fill short gaps. Frames without a person at the ends stay."""
    return fill_gaps(fix_left_right_swaps(track), max_gap_frames)


def resample_track(track: PoseTrack) -> np.ndarray:
    """Resample a trimmed track with no missing frames to joints (F, 22, 3) float32 at 20 fps."""
    return resample(track.joints, timestamps=track.timestamps, target_fps=FPS).astype(np.float32)


def motion_from_track(track: PoseTrack, params: EdgeParams, frames_per_index: int) -> np.ndarray:
    """Turn an estimated track into joints (F, 22, 3) at 20 fps, or raise why it cannot be.

    Raises:
        NoPersonError, PoseQualityError: too few frames with a person, counted over the
            whole clip after gap filling.
        PoseGapError: a gap longer than max_gap_frames between the first and the last
            frame with a person.
        ClipTooShortError: fewer than frames_per_index + 1 frames at 20 fps.
    """
    cleaned = clean_track(track, params.max_gap_frames)
    check_usable(cleaned, params.min_fraction)
    trimmed = trim_missing(cleaned)
    _raise_on_gaps(trimmed, params.max_gap_frames)
    joints = resample_track(trimmed)
    _check_length(joints, frames_per_index, trimmed.timestamps)
    return joints


def _input_range(module: nn.Module, low: int, high: int) -> tuple[int, int]:
    """Map output positions [low, high] of an encoder module to the input positions it reads."""
    if isinstance(module, nn.Conv1d):
        (kernel,), (stride,), (dilation,) = module.kernel_size, module.stride, module.dilation
        (padding,) = module.padding
        return low * stride - padding, high * stride - padding + dilation * (kernel - 1)
    if isinstance(module, nn.Sequential):
        for child in reversed(module):
            low, high = _input_range(child, low, high)
        return low, high
    if isinstance(module, ResidualBlock):
        inner_low, inner_high = _input_range(nn.Sequential(module.conv1, module.conv2), low, high)
        return min(inner_low, low), max(inner_high, high)
    if isinstance(module, (Encoder, ResidualStack)):
        return _input_range(module.model, low, high)
    if isinstance(module, nn.ReLU):
        return low, high
    raise TypeError(f"cannot compute the receptive field through a {type(module).__name__} layer")


def encoder_receptive_field(encoder: Encoder, frames_per_index: int) -> tuple[int, int]:
    """Return (left, right): feature rows before and after its own 4 that one index reads.

    Index j depends on rows 4j - left .. 4j + 3 + right and on nothing else. Both are 86
    for the T2M-GPT layout (depth 3, dilation growth 3, two downsamplings).
    """
    low, high = _input_range(encoder, 0, 0)
    return -low, high - (frames_per_index - 1)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _row_digests(rows: np.ndarray) -> list[bytes]:
    """Return a 16-byte BLAKE2b digest of each row of a (T, D) array."""
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in np.ascontiguousarray(rows)]


def _chunk_digest(row_digests: list[bytes]) -> bytes:
    return hashlib.blake2b(b"".join(row_digests), digest_size=16).digest()


def _packet(tokenizer: Tokenizer, indices: np.ndarray, features: np.ndarray, params: EdgeParams) -> bytes:
    return packet_bytes(tokenizer, indices, len(features), entropy=params.entropy)


# ---------------------------------------------------------------- offline


def encode_track(
    track: PoseTrack,
    tokenizer: Tokenizer,
    params: EdgeParams,
    times: StageTimes | None = None,
    *,
    frames_decoded: int | None = None,
    last_arrival: float | None = None,
    encode: Callable[[np.ndarray], tuple[np.ndarray, StreamStats | None]] | None = None,
) -> EdgeResult:
    """Run the stages after pose estimation on a whole track and return the result.

    times: the decode and pose times so far, which this adds to.
    last_arrival: the `time.perf_counter()` at which the last frame arrived (default: now).
    encode: maps the features (F-1, 263) to (indices (N,), stream statistics); the default runs
    the tokenizer on the whole clip. The streaming path passes one that reuses its chunks.
    """
    if times is None:
        times = StageTimes()
    last_arrival = time.perf_counter() if last_arrival is None else last_arrival
    with timed(times, "features"):
        joints = motion_from_track(track, params, tokenizer.frames_per_index)
        features = joints_to_features(joints)
    with timed(times, "tokenizer"):
        indices, stats = encode(features) if encode is not None else (tokenizer.encode(features), None)
    with timed(times, "packing"):
        packet = _packet(tokenizer, indices, features, params)
    return EdgeResult(
        packet=packet,
        indices=indices,
        joints=joints,
        features=features,
        track=track,
        detection_rate=track.detection_rate,
        timings_ms=times,
        after_last_frame_ms=1000.0 * (time.perf_counter() - last_arrival),
        frames_decoded=len(track) if frames_decoded is None else frames_decoded,
        frames_per_index=tokenizer.frames_per_index,
        stream=stats,
    )


def run_edge(
    video_path: str | os.PathLike,
    tokenizer: TokenizerSource,
    params: EdgeParams | None = None,
    *,
    estimator: PoseEstimator | None = None,
) -> EdgeResult:
    """Turn a video file into a motion packet; see the module docstring for the stages.

    tokenizer: a tokenizer folder, a `Tokenizer` or a (model, mean, std) tuple.
    estimator: a pose estimator to use, reset first and left open. By default one is
    made from `params` and closed afterwards.
    Raises VideoError for a missing or unreadable video, TokenizerNotFoundError for a
    folder without a tokenizer, NoPersonError when no frame has a person, and the other
    PoseQualityError subclasses of `motion_from_track`.
    """
    params = params or EdgeParams()
    tokenizer = resolve_tokenizer(tokenizer, params.entropy)
    owned = estimator is None
    estimator = estimator or make_estimator(params)
    times = StageTimes()
    sampler = FrameSampler(params.sample_fps)
    poses: list[FramePose] = []
    stamps: list[float] = []
    decoded = 0
    last_arrival = time.perf_counter()
    try:
        estimator.reset()
        frames = iter_frames(video_path, max_side=params.max_side)
        while True:
            with timed(times, "decode"):
                frame = next(frames, None)
            if frame is None:
                break
            last_arrival = time.perf_counter()
            decoded += 1
            if sampler.keep(frame.timestamp):
                with timed(times, "pose"):
                    poses.append(estimator.process_frame(frame.image, frame.timestamp))
                stamps.append(frame.timestamp)
        track = PoseTrack.from_frames(poses, stamps)
        result = encode_track(track, tokenizer, params, times, frames_decoded=decoded, last_arrival=last_arrival)
    finally:
        # Closed after the packet, so that after_last_frame_ms leaves out the estimator's teardown.
        if owned:
            estimator.close()
    log.info(
        "%s: %d frames, detection rate %.2f, %d indices in %d bytes",
        video_path, decoded, result.detection_rate, len(result.indices), result.packet_size,
    )
    return result


# ---------------------------------------------------------------- streaming


class _Batch(NamedTuple):
    """Indices of windows [first, stop) encoded from feature rows [row_start, row_stop)."""

    first: int
    stop: int
    row_start: int
    row_stop: int
    digest: bytes
    indices: np.ndarray


class EdgeStream:
    """The edge pipeline for frames that arrive one at a time.

    `push(frame, timestamp)` samples the frame at `params.sample_fps` and estimates its
    pose at once. When the 20 fps motion so far has enough rows, the features of the
    whole clip so far are computed again. Then each window of 4 rows is encoded once its
    receptive field (`encoder_receptive_field`) ends `params.stream_lookahead_rows`
    before the last row. It is encoded from a chunk of rows with its full left context.

    Features are not causal. The floor is the lowest point of the whole clip, the facing
    is smoothed over +-80 frames, and swap fixing and gap filling look at later frames.
    So `finish` computes the features of the whole clip, keeps each encoded chunk whose
    rows are bit-for-bit unchanged, and encodes the other windows again. The packet
    therefore has the indices that `run_edge` gives for the same frames. `StreamStats`
    records how many of the early indices were kept.
    NOTE: each window recomputes the features of the whole clip so far, so the work per
    window grows with the clip (about 32 ms for 1200 frames on one CPU core).
    """

    def __init__(
        self, tokenizer: TokenizerSource, params: EdgeParams | None = None, *, estimator: PoseEstimator | None = None
    ):
        self.params = params or EdgeParams()
        self.tokenizer = resolve_tokenizer(tokenizer, self.params.entropy)
        self._owned = estimator is None
        self._estimator = estimator or make_estimator(self.params)
        self._estimator.reset()
        self._sampler = FrameSampler(self.params.sample_fps)
        self.timings = StageTimes()
        self.frames_pushed = 0
        self._poses: list[FramePose] = []
        self._stamps: list[float] = []
        self._first_detected: float | None = None
        self._batches: list[_Batch] = []
        self._next_window = 0
        self._last_arrival = time.perf_counter()
        self._finished = False

        step = self.tokenizer.frames_per_index
        left, right = encoder_receptive_field(self.tokenizer.model.encoder, step)
        self._left = _round_up(left, step)
        self._right = _round_up(right, step)

    def push(self, frame: np.ndarray, timestamp: float) -> None:
        """Add one (H, W, 3) uint8 RGB frame taken at `timestamp` seconds."""
        self._last_arrival = time.perf_counter()
        self.frames_pushed += 1
        self._check_open(timestamp)
        if not self._sampler.keep(timestamp):
            return
        with timed(self.timings, "pose"):
            pose = self._estimator.process_frame(frame, timestamp)
        self._add(pose, timestamp)

    def push_pose(self, pose: FramePose, timestamp: float) -> None:
        """Add the pose of one frame estimated elsewhere. No sampling is applied."""
        self._last_arrival = time.perf_counter()
        self.frames_pushed += 1
        self._check_open(timestamp)
        self._add(pose, timestamp)

    def finish(self) -> EdgeResult:
        """Encode what is left and return the result for all frames pushed.

        Raises the errors of `motion_from_track` for the whole clip, and RuntimeError when
        called twice. The estimator made by the stream is closed here.
        """
        if self._finished:
            raise RuntimeError("EdgeStream.finish was already called; start a new stream")
        self._finished = True
        try:
            track = PoseTrack.from_frames(self._poses, self._stamps)
            return encode_track(
                track, self.tokenizer, self.params, self.timings,
                frames_decoded=self.frames_pushed, last_arrival=self._last_arrival, encode=self._reconcile,
            )
        finally:
            self.close()

    def close(self) -> None:
        """Release the estimator if the stream made it. `finish` calls this."""
        if self._owned:
            self._estimator.close()

    def _check_open(self, timestamp: float) -> None:
        if self._finished:
            raise RuntimeError("EdgeStream.finish was already called; start a new stream")
        if self._stamps and not timestamp > self._stamps[-1]:
            raise ValueError(
                f"timestamp {timestamp:.6f} s is not after the previous frame's {self._stamps[-1]:.6f} s. "
                "Push frames in presentation order and drop repeated timestamps"
            )

    def _add(self, pose: FramePose, timestamp: float) -> None:
        self._poses.append(pose)
        self._stamps.append(float(timestamp))
        if pose.detected and self._first_detected is None:
            self._first_detected = float(timestamp)
        if self._window_may_be_ready(timestamp):
            self._advance()

    def _ready_windows(self, rows: int) -> int:
        """Return the number of windows whose receptive field ends before the unstable rows."""
        stable = rows - self.params.stream_lookahead_rows
        return max(0, (stable - self._right) // self.tokenizer.frames_per_index)

    def _window_may_be_ready(self, timestamp: float) -> bool:
        """Cheap test before recomputing features: could the next window be encoded now?"""
        if self._first_detected is None:
            return False
        rows = math.floor((timestamp - self._first_detected) * FPS + 1e-6)  # joint frames - 1
        return self._ready_windows(rows) > self._next_window

    def _advance(self) -> None:
        """Recompute the features of the clip so far and encode the windows now ready."""
        with timed(self.timings, "features"):
            track = trim_missing(clean_track(PoseTrack.from_frames(self._poses, self._stamps), self.params.max_gap_frames))
            if not track.detected.all():
                return  # a gap that later frames may fill, or that finish reports
            joints = resample_track(track)
            if len(joints) < 2:
                return
            features = joints_to_features(joints)
        stop = self._ready_windows(len(features))
        if stop > self._next_window:
            with timed(self.timings, "tokenizer"):
                self._batches.append(self._encode_windows(features, self._next_window, stop, len(features)))
            self._next_window = stop

    def _encode_windows(self, features: np.ndarray, first: int, stop: int, rows_end: int) -> _Batch:
        """Encode windows [first, stop) from rows [4 first - left, min(4 stop + right, rows_end))."""
        step = self.tokenizer.frames_per_index
        row_start = max(0, first * step - self._left)
        row_stop = min(stop * step + self._right, rows_end)
        rows = features[row_start:row_stop]
        chunk = self.tokenizer.encode(rows)
        offset = row_start // step
        digest = _chunk_digest(_row_digests(rows))
        return _Batch(first, stop, row_start, row_stop, digest, chunk[first - offset : stop - offset])

    def _reconcile(self, features: np.ndarray) -> tuple[np.ndarray, StreamStats]:
        """Return the indices (N,) of the final features, reusing unchanged encoded chunks."""
        step = self.tokenizer.frames_per_index
        count = len(features) // step
        indices = np.zeros(count, dtype=np.int64)
        valid = np.zeros(count, dtype=bool)
        emitted = 0
        # Hashing each final row once keeps this linear in the rows, although chunks overlap.
        final_digests = _row_digests(features)
        for batch in self._batches:
            emitted += batch.stop - batch.first
            unchanged = _chunk_digest(final_digests[batch.row_start : batch.row_stop]) == batch.digest
            if batch.row_stop <= len(features) and unchanged:
                indices[batch.first : batch.stop] = batch.indices
                valid[batch.first : batch.stop] = True
        kept = int(valid.sum())
        for first, stop in _missing_runs(valid):
            indices[first:stop] = self._encode_windows(features, first, stop, count * step).indices
        return indices, StreamStats(windows=count, emitted=emitted, kept=kept)


def stream_video(
    video_path: str | os.PathLike,
    tokenizer: TokenizerSource,
    params: EdgeParams | None = None,
    *,
    estimator: PoseEstimator | None = None,
) -> EdgeResult:
    """Decode a video and feed its frames to an `EdgeStream` one by one; return the result.

    Decoding time is recorded as the stream's decode stage. Raises as `run_edge` does.
    """
    stream = EdgeStream(tokenizer, params, estimator=estimator)
    frames = iter_frames(video_path, max_side=stream.params.max_side)
    try:
        while True:
            with timed(stream.timings, "decode"):
                frame = next(frames, None)
            if frame is None:
                break
            stream.push(frame.image, frame.timestamp)
    except BaseException:
        stream.close()
        raise
    return stream.finish()

