"""Decode video files into upright RGB frames with presentation timestamps (PyAV).

Frames come out as (H, W, 3) uint8 RGB arrays, rotated as the file's display matrix (or a
legacy `rotate` tag) specifies, so that a phone video recorded on its side comes out upright.
Timestamps are presentation times in seconds (pts * time_base), never frame index / fps,
so variable-frame-rate files keep their real timing. Resampling to a fixed rate is done
later, on the estimated joints (`toau.motion.resample.resample(..., timestamps=...)`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import av
import numpy as np

log = logging.getLogger(__name__)

# A display rotation this far (degrees) from a multiple of 90 is rounded with a warning.
ROTATION_TOLERANCE_DEG = 1.0
REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p OUTPUT.mp4`"


class VideoError(ValueError):
    """A video file that is missing, unreadable, or yields no frames."""


class Frame(NamedTuple):
    """One decoded frame: image (H, W, 3) uint8 RGB, upright, and its timestamp in seconds."""

    image: np.ndarray
    timestamp: float


@dataclass(frozen=True)
class VideoInfo:
    """Stream properties; width and height are the upright display size after rotation."""

    path: str
    width: int
    height: int
    fps: float  # average frame rate from the container; nominal for variable-rate files
    frame_count: int  # from the container header; 0 when the container does not store it
    duration: float  # seconds; 0.0 when the container does not store it
    codec: str
    rotation: int  # degrees counter-clockwise applied to each decoded frame: 0, 90, 180 or 270


@dataclass
class VideoClip:
    """A fully decoded clip: frames (F, H, W, 3) uint8 RGB and timestamps (F,) seconds."""

    frames: np.ndarray
    timestamps: np.ndarray
    info: VideoInfo

    def __len__(self) -> int:
        return len(self.frames)


def _open(path: str | os.PathLike) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video file {path} not found; check the path")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as error:
        raise VideoError(f"cannot open {path} as a video ({error}); {REENCODE_HINT}") from error
    if not container.streams.video:
        kinds = [stream.type for stream in container.streams] or ["none"]
        container.close()
        raise VideoError(f"{path} has no video stream (streams: {', '.join(kinds)}); pass a video file")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _tag_rotation(stream: av.video.stream.VideoStream) -> int:
    """Return the legacy `rotate` stream tag as counter-clockwise degrees, 0 when absent.

    The tag (written by FFmpeg before 6.0 for MP4 and by some tools into Matroska) counts
    degrees clockwise, the opposite sense of the display matrix.
    """
    for key, value in stream.metadata.items():
        if key.lower() == "rotate":
            try:
                return -int(round(float(value)))
            except ValueError:
                log.warning("ignoring unparsable rotate tag %r", value)
    return 0


def _quarter_turns(rotation_deg: float, path: str | os.PathLike) -> int:
    """Round a counter-clockwise display rotation to a whole number of quarter turns (0-3)."""
    turns = round(rotation_deg / 90.0)
    if abs(rotation_deg - 90.0 * turns) > ROTATION_TOLERANCE_DEG:
        log.warning("%s: display rotation %.1f deg rounded to %d deg", path, rotation_deg, 90 * turns)
    return turns % 4


def _frame_rotation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> float:
    # NOTE: only the rotation part of the display matrix is applied; a mirrored matrix
    # (rare, from front cameras) is not undone.
    return frame.rotation or _tag_rotation(stream)


def _display_size(frame: av.VideoFrame, stream: av.video.stream.VideoStream, max_side: int | None) -> tuple[int, int]:
    """Return the (width, height) to convert to: square pixels, longer side at most max_side."""
    width, height = frame.width, frame.height
    aspect = stream.sample_aspect_ratio
    if aspect is not None and aspect > 0 and aspect != 1:
        width = round(width * aspect)
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = round(width * scale), round(height * scale)
    return max(1, width), max(1, height)


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int], turns: int) -> np.ndarray:
    if size == (frame.width, frame.height):
        image = frame.to_ndarray(format="rgb24")
    else:
        image = frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()
    # np.rot90 turns counter-clockwise as displayed, the sense of the display matrix.
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def iter_frames(
    path: str | os.PathLike, max_frames: int | None = None, max_side: int | None = None
) -> Iterator[Frame]:
    """Decode a video lazily into upright RGB frames with timestamps in seconds.

    `max_side` downscales frames whose longer side exceeds it (None keeps the full size).
    Frames whose timestamp does not increase are dropped with a warning. A file without
    pts (a raw H.264 stream) gets timestamps from its nominal frame rate, with a warning.
    Raises VideoError when the file is missing, unreadable, has no video stream or yields
    no frame. A decoding error after the first frame ends the stream with a warning.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    container, stream = _open(path)
    nominal_fps = float(stream.average_rate or stream.guessed_rate or 0)
    count = dropped = 0
    last_time = -math.inf
    turns = size = None
    try:
        frames = container.decode(stream)
        while max_frames is None or count < max_frames:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.error.FFmpegError as error:
                if count == 0:
                    raise VideoError(f"no decodable video frames in {path} ({error}); {REENCODE_HINT}") from error
                log.warning("%s: decoding stopped after %d frames: %s", path, count, error)
                break

            if turns is None:
                turns = _quarter_turns(_frame_rotation(frame, stream), path)
                size = _display_size(frame, stream, max_side)
            if frame.pts is not None and frame.time_base is not None:
                time = float(frame.pts * frame.time_base)
            elif nominal_fps > 0:
                if count == 0:
                    log.warning("%s has no presentation timestamps; assuming %.3f fps", path, nominal_fps)
                time = (count + dropped) / nominal_fps
            else:
                raise VideoError(f"{path} has neither timestamps nor a frame rate; {REENCODE_HINT}")
            if time <= last_time:
                dropped += 1
                continue

            last_time = time
            count += 1
            yield Frame(_to_rgb(frame, size, turns), time)
    finally:
        container.close()
    if dropped:
        log.warning("%s: dropped %d frames whose timestamp did not increase", path, dropped)
    if count == 0:
        raise VideoError(f"no decodable video frames in {path}; the file may be empty or truncated, {REENCODE_HINT}")


def read_video(path: str | os.PathLike, max_frames: int | None = None, max_side: int | None = None) -> VideoClip:
    """Decode a whole video into memory: frames (F, H, W, 3) uint8, timestamps (F,) seconds.

    Memory is F * H * W * 3 bytes (100 frames of 1080x1920 take 622 MB); use
    `iter_frames` to stream long videos. Raises VideoError as `iter_frames` does.
    """
    info = probe_video(path)
    images, times = [], []
    for image, time in iter_frames(path, max_frames=max_frames, max_side=max_side):
        images.append(image)
        times.append(time)
    return VideoClip(np.stack(images), np.asarray(times, dtype=np.float64), info)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read stream properties and decode the first frame (for its rotation and size).

    Raises VideoError when the file is missing, unreadable, has no video stream or has no
    decodable frame.
    """
    container, stream = _open(path)
    try:
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        codec = stream.codec_context.name
        frame_count = int(stream.frames or 0)
        try:
            first = next(container.decode(stream))
        except (StopIteration, av.error.FFmpegError) as error:
            raise VideoError(f"no decodable video frames in {path} ({error!r}); {REENCODE_HINT}") from error
        rotation = 90 * _quarter_turns(_frame_rotation(first, stream), path)
        width, height = _display_size(first, stream, max_side=None)
    finally:
        container.close()
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(str(path), width, height, fps, frame_count, duration, codec, rotation)


def sample_frames(frames: Iterable[Frame], fps: float) -> Iterator[Frame]:
    """Keep the first frame at or after each tick of a `fps` grid, for streaming.

    The grid starts at the first frame's timestamp. The output has at most `fps` frames
    per second and never repeats a frame, so a 60 fps input keeps every third frame and a
    30 fps input keeps two of three (irregularly spaced). Callers resample the estimated
    joints to an exact rate by their timestamps afterwards.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    period = 1.0 / fps
    tolerance = 1e-6  # seconds; pts * time_base rounding
    start = None
    next_tick = 0
    for frame in frames:
        if start is None:
            start = frame.timestamp
        elapsed = frame.timestamp - start
        if elapsed + tolerance < next_tick * period:
            continue
        yield frame
        next_tick = math.floor((elapsed + tolerance) / period) + 1
