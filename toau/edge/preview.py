"""Preview video: the input video with the estimated skeleton drawn on it, encoded as H.264.

The skeleton is the estimator's 3D joints projected back into the image with the pinhole
camera that the MediaPipe estimator assumes when it solves the root translation (focal
length = focal_length_ratio x the longer image side, principal point at the centre).
Only joints with that translation have a depth; hip-centred joints
(`root_translation=False`) cannot be projected and are not drawn.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from toau.io.video import iter_frames, probe_video
from toau.pose.base import PoseTrack
from toau.skeleton import KINEMATIC_CHAINS

log = logging.getLogger(__name__)

# Default of toau.pose.mediapipe: a 26 mm (35 mm-equivalent) phone lens over a 36 mm frame.
DEFAULT_FOCAL_LENGTH_RATIO = 0.72
# Longer side of the preview in pixels; large enough to judge a pose, small enough to encode fast.
PREVIEW_MAX_SIDE = 720
PREVIEW_CRF = 23  # libx264 quality, its default
# Joints closer to the camera than this (metres) are not projected.
MIN_DEPTH_M = 0.1
# RGB colour per kinematic chain: right leg, left leg, spine, right arm, left arm.
CHAIN_COLOURS = ((230, 60, 60), (60, 120, 230), (240, 240, 240), (240, 150, 40), (60, 200, 220))
TIME_BASE = Fraction(1, 1000)  # output pts in milliseconds, so variable frame rates survive


def project_joints(joints: np.ndarray, size: tuple[int, int], focal_length_ratio: float) -> np.ndarray:
    """Project Y-up camera-aligned joints (..., 3) to pixels (..., 2) in an image of size (width, height).

    The estimator's frame is x right, y up, z toward the camera, so the camera looks along
    -z. Points with depth under MIN_DEPTH_M come out NaN.
    """
    width, height = size
    focal = focal_length_ratio * max(width, height)
    x, y, depth = joints[..., 0], -joints[..., 1], -joints[..., 2]
    valid = depth > MIN_DEPTH_M
    safe_depth = np.where(valid, depth, 1.0)
    pixels = np.stack([focal * x / safe_depth + width / 2, focal * y / safe_depth + height / 2], axis=-1)
    return np.where(valid[..., None], pixels, np.nan)


def draw_skeleton(image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Draw the 22-joint skeleton given pixels (22, 2) on an (H, W, 3) RGB image, in place."""
    thickness = max(2, round(max(image.shape[:2]) / 300))
    for chain, colour in zip(KINEMATIC_CHAINS, CHAIN_COLOURS):
        for parent, child in zip(chain[:-1], chain[1:]):
            a, b = pixels[parent], pixels[child]
            if np.isfinite(a).all() and np.isfinite(b).all():
                cv2.line(image, _point(a), _point(b), colour, thickness, cv2.LINE_AA)
    for point in pixels:
        if np.isfinite(point).all():
            cv2.circle(image, _point(point), thickness + 1, (255, 255, 255), -1, cv2.LINE_AA)
    return image


def _point(xy: np.ndarray) -> tuple[int, int]:
    # cv2 rejects coordinates beyond int32; a point far outside the image is clipped.
    limit = 1 << 20
    return int(np.clip(round(xy[0]), -limit, limit)), int(np.clip(round(xy[1]), -limit, limit))


def _even(value: int) -> int:
    """Round down to an even size, which yuv420p needs."""
    return max(2, value - value % 2)


def write_preview(
    video_path: str | os.PathLike,
    track: PoseTrack,
    output_path: str | os.PathLike,
    *,
    focal_length_ratio: float = DEFAULT_FOCAL_LENGTH_RATIO,
    max_side: int | None = PREVIEW_MAX_SIDE,
    crf: int = PREVIEW_CRF,
) -> int:
    """Write the video with the skeleton of `track` drawn on every frame; return the frames written.

    Each frame shows the pose of the latest track frame at or before its timestamp, as a
    live overlay would, so a track sampled at 20 fps keeps each pose for the frames
    between samples. Frames without a detected person are written without a skeleton.
    Output: H.264 (libx264, yuv420p) at the input's timestamps, longer side at most
    `max_side` pixels. Raises VideoError for an unreadable input.
    """
    output_path = Path(output_path)
    info = probe_video(video_path)
    if len(track) == 0:
        log.warning("the pose track of %s is empty, so the preview has no skeleton", video_path)
    elif track.detected.any() and not (track.joints[track.detected][..., 2] < -MIN_DEPTH_M).any():
        log.warning("the joints of %s have no camera depth (root_translation off?), so no skeleton is drawn", video_path)

    written = 0
    with av.open(str(output_path), "w") as container:
        stream = None
        for image, timestamp in iter_frames(video_path, max_side=max_side):
            if stream is None:
                width, height = _even(image.shape[1]), _even(image.shape[0])
                stream = container.add_stream("libx264", rate=Fraction(info.fps).limit_denominator(1001) or 30)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.codec_context.time_base = TIME_BASE
                stream.options = {"crf": str(crf)}
            image = np.ascontiguousarray(image[:height, :width])
            pose = _pose_at(track, timestamp)
            if pose is not None:
                draw_skeleton(image, project_joints(pose, (width, height), focal_length_ratio))
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(timestamp / TIME_BASE), TIME_BASE
            container.mux(stream.encode(frame))
            written += 1
        container.mux(stream.encode())
    log.info("wrote %d preview frames to %s", written, output_path)
    return written


def _pose_at(track: PoseTrack, timestamp: float) -> np.ndarray | None:
    """Return the joints (22, 3) of the latest track frame at or before `timestamp`, if detected."""
    position = int(np.searchsorted(track.timestamps, timestamp + 1e-6, side="right")) - 1
    if position < 0 or not track.detected[position]:
        return None
    return track.joints[position]
