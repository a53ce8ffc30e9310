"""MediaPipe Pose (BlazePose, mediapipe 0.10.21 legacy solution) as a 22-joint estimator.

BlazePose returns 33 world landmarks per frame in metres, with the origin at the midpoint
of the hips and axes aligned with the camera: x right, y down, z away from the camera.
LEFT_* landmarks are the person's left side. Both facts were checked on the Pose2Sim
clips: facing the camera, the nose has a smaller z than the ears, and the arm the person
raises on the image's left comes out as RIGHT_*. Each of the 22 SMPL-order joints is a
fixed weighted sum of landmarks (`JOINT_MAP`). The result is turned to Y up with
`camera_to_y_up`, so a person facing the camera faces +Z with their left side at +X.

World landmarks carry no global position. The root translation is estimated per frame
from the 2D image landmarks with a pinhole camera (`_solve_translation`). Turn it off
with `root_translation=False` to get hip-centred joints.

NOTE: "up" is the camera's up, not gravity's. A camera tilted down by some angle tilts
the whole motion by that angle, and nothing here levels it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from toau.pose.base import FramePose, PoseEstimator, camera_to_y_up
from toau.skeleton import JOINT_NAMES, NUM_JOINTS

log = logging.getLogger(__name__)

# Landmark order of BlazePose (mediapipe.solutions.pose.PoseLandmark).
LANDMARK_NAMES = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)
NUM_LANDMARKS = len(LANDMARK_NAMES)
_LANDMARK_INDEX = {name: i for i, name in enumerate(LANDMARK_NAMES)}

# Landmark model file per model_complexity, relative to the mediapipe package.
# mediapipe 0.10.21 ships only the "full" model; for the others `Pose()` downloads the file.
MODEL_FILES = {
    0: "modules/pose_landmark/pose_landmark_lite.tflite",
    1: "modules/pose_landmark/pose_landmark_full.tflite",
    2: "modules/pose_landmark/pose_landmark_heavy.tflite",
}

DEFAULTS = {
    "model_complexity": 1,
    "min_detection_confidence": 0.5,
    "min_tracking_confidence": 0.5,
    "smooth_landmarks": True,
    "root_translation": True,
    # Focal length over the longer image side: a 26 mm (35 mm-equivalent) lens, typical
    # of phone main cameras, over a 36 mm frame width gives 26 / 36 = 0.72.
    "focal_length_ratio": 0.72,
    # Time constant (s) of the causal smoothing of the estimated camera distance.
    "depth_smoothing_s": 0.2,
}

# Landmarks used for the root translation: shoulders to feet, without the 11 face
# landmarks, which cluster in one small region. Only those with visibility above
# MIN_VISIBILITY enter the fit.
_TRANSLATION_LANDMARKS = np.arange(11, NUM_LANDMARKS)
MIN_VISIBILITY = 0.5


def _point(name: str) -> dict[str, float]:
    return {name: 1.0}


def _lerp(a: dict[str, float], b: dict[str, float], t: float) -> dict[str, float]:
    """Return the landmark weights of a + t (b - a)."""
    weights = {name: (1.0 - t) * weight for name, weight in a.items()}
    for name, weight in b.items():
        weights[name] = weights.get(name, 0.0) + t * weight
    return weights


_HIP_MID = _lerp(_point("left_hip"), _point("right_hip"), 0.5)
_SHOULDER_MID = _lerp(_point("left_shoulder"), _point("right_shoulder"), 0.5)
_EAR_MID = _lerp(_point("left_ear"), _point("right_ear"), 0.5)


def _trunk(t: float) -> dict[str, float]:
    """Return the point at fraction t from the hip midpoint to the shoulder midpoint."""
    return _lerp(_HIP_MID, _SHOULDER_MID, t)


# Fractions along the trunk (hip midpoint = 0, shoulder midpoint = 1), measured on
# HumanML3D's reference SMPL skeleton (clip 000021, first frame): pelvis 0.17, spine1
# 0.41, spine2 0.68, spine3 0.79, neck 1.21, collars 1.01.
# Hip joints: SMPL's are 0.118 m apart there, BlazePose hip landmarks a median 0.206 m
# on the Pose2Sim and Sports2D demo videos (they sit on the outside of the hip, as in
# COCO), so the hips are pulled toward their midpoint by 0.118 / 0.206 = 0.57.
HIP_NARROWING = 0.57

# (joint, landmark weights, reason). Rows are in toau.skeleton.JOINT_NAMES order.
JOINT_MAP = (
    ("pelvis", _trunk(0.17), "SMPL pelvis sits above the hip joints, 17% up the trunk"),
    ("left_hip", _lerp(_HIP_MID, _point("left_hip"), HIP_NARROWING), "hip joint centre inside the hip landmark"),
    ("right_hip", _lerp(_HIP_MID, _point("right_hip"), HIP_NARROWING), "hip joint centre inside the hip landmark"),
    ("spine1", _trunk(0.41), "SMPL spine1 fraction along the trunk"),
    ("left_knee", _point("left_knee"), "direct"),
    ("right_knee", _point("right_knee"), "direct"),
    ("spine2", _trunk(0.68), "SMPL spine2 fraction along the trunk"),
    ("left_ankle", _point("left_ankle"), "direct"),
    ("right_ankle", _point("right_ankle"), "direct"),
    ("spine3", _trunk(0.79), "SMPL spine3 fraction along the trunk"),
    ("left_foot", _lerp(_point("left_heel"), _point("left_foot_index"), 0.75),
     "SMPL's foot joint is at the ball of the foot, about 3/4 of the way from heel to toe tip"),
    ("right_foot", _lerp(_point("right_heel"), _point("right_foot_index"), 0.75),
     "SMPL's foot joint is at the ball of the foot, about 3/4 of the way from heel to toe tip"),
    ("neck", _trunk(1.21), "SMPL neck is above the shoulder line, 21% of the trunk length"),
    ("left_collar", _lerp(_trunk(1.01), _point("left_shoulder"), 0.4),
     "SMPL collar is at shoulder height, 40% of the way from the midline to the shoulder"),
    ("right_collar", _lerp(_trunk(1.01), _point("right_shoulder"), 0.4),
     "SMPL collar is at shoulder height, 40% of the way from the midline to the shoulder"),
    ("head", _lerp(_EAR_MID, _point("nose"), 0.25),
     "SMPL head joint is inside the skull near ear height, a little in front of the ears"),
    ("left_shoulder", _point("left_shoulder"), "direct"),
    ("right_shoulder", _point("right_shoulder"), "direct"),
    ("left_elbow", _point("left_elbow"), "direct"),
    ("right_elbow", _point("right_elbow"), "direct"),
    ("left_wrist", _point("left_wrist"), "direct"),
    ("right_wrist", _point("right_wrist"), "direct"),
)


def _weight_matrix() -> np.ndarray:
    """Return JOINT_MAP as a (22, 33) matrix: joints = matrix @ landmarks."""
    assert tuple(row[0] for row in JOINT_MAP) == JOINT_NAMES, "JOINT_MAP rows must follow JOINT_NAMES"
    matrix = np.zeros((NUM_JOINTS, NUM_LANDMARKS))
    for joint, (_, weights, _) in enumerate(JOINT_MAP):
        for name, weight in weights.items():
            matrix[joint, _LANDMARK_INDEX[name]] = weight
    assert np.allclose(matrix.sum(axis=1), 1.0), "each joint must be an affine mix of landmarks"
    return matrix


JOINT_WEIGHTS = _weight_matrix()


def landmarks_to_joints(landmarks: np.ndarray, visibility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map BlazePose landmarks (..., 33, 3) and visibility (..., 33) to joints and confidence.

    Returns joints (..., 22, 3) in the landmarks' axes and confidence (..., 22): the lowest
    visibility among the landmarks each joint is made of.
    """
    joints = np.einsum("jl,...lc->...jc", JOINT_WEIGHTS, landmarks)
    used = JOINT_WEIGHTS != 0
    confidence = np.where(used, visibility[..., None, :], np.inf).min(axis=-1)
    return joints, confidence


def model_path(model_complexity: int) -> Path:
    """Return the landmark model file that `model_complexity` needs, or raise.

    Raises ValueError for a complexity other than 0, 1 or 2, and FileNotFoundError when
    the file is not installed, because mediapipe would then download it at run time.
    """
    if model_complexity not in MODEL_FILES:
        raise ValueError(f"model_complexity must be 0, 1 or 2, got {model_complexity!r}")
    import mediapipe

    path = Path(mediapipe.__file__).parent / MODEL_FILES[model_complexity]
    if not path.is_file():
        raise FileNotFoundError(
            f"MediaPipe Pose model_complexity={model_complexity} needs {path}, which is not installed "
            f"(the mediapipe 0.10.21 wheel ships only model_complexity=1) and would be downloaded at run time; "
            f"use model_complexity=1 or place the file there yourself"
        )
    return path


def _solve_translation(
    world: np.ndarray, image: np.ndarray, visibility: np.ndarray, size: tuple[int, int], focal: float,
    depth: float | None = None,
) -> np.ndarray | None:
    """Find the camera-frame position t of the world-landmark origin by least squares.

    world (33, 3) metres in camera axes; image (33, 2) normalised image coordinates;
    size (width, height) pixels; focal length in pixels, principal point at the centre.
    A landmark projects to u = f (X + tx) / (Z + tz), which is linear in t once multiplied
    out. With `depth` given, tz is fixed to it and only tx, ty are solved. Returns t (3,)
    metres, or None when fewer than 4 landmarks are visible or the fit is degenerate.
    """
    keep = _TRANSLATION_LANDMARKS[visibility[_TRANSLATION_LANDMARKS] > MIN_VISIBILITY]
    if len(keep) < 4:
        return None
    width, height = size
    u = image[keep, 0] * width - width / 2
    v = image[keep, 1] * height - height / 2
    x, y, z = world[keep, 0], world[keep, 1], world[keep, 2]
    if depth is not None:
        return np.array([np.mean(u * (z + depth) / focal - x), np.mean(v * (z + depth) / focal - y), depth])

    zeros = np.zeros_like(u)
    rows = np.concatenate([
        np.stack([np.full_like(u, focal), zeros, -u], axis=1),
        np.stack([zeros, np.full_like(v, focal), -v], axis=1),
    ])
    targets = np.concatenate([u * z - focal * x, v * z - focal * y])
    translation, _, rank, _ = np.linalg.lstsq(rows, targets, rcond=None)
    if rank < 3 or translation[2] <= 0:
        return None
    return translation


class MediaPipePoseEstimator(PoseEstimator):
    """BlazePose (mediapipe 0.10.21 `solutions.pose.Pose`) in video mode, mapped to 22 joints.

    Video mode tracks one person: after the first detection, each frame's landmarks come
    from the region of the previous frame's person, and detection runs again only when
    tracking is lost. With several people in view the track can jump to another person
    at such a re-detection.
    NOTE: the legacy solution API stamps frames 33.3 ms apart whatever their real
    timestamps, so its landmark smoothing assumes 30 fps.
    """

    name = "mediapipe"

    def __init__(self, **options) -> None:
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown MediaPipe options {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
        self.options = {**DEFAULTS, **options}
        model_path(self.options["model_complexity"])  # fail before mediapipe can download
        self._pose = None
        self._depth: float | None = None
        self._translation: np.ndarray | None = None
        self._last_time: float | None = None
        self.reset()

    def _make_pose(self):
        import mediapipe

        return mediapipe.solutions.pose.Pose(
            static_image_mode=False,
            model_complexity=self.options["model_complexity"],
            smooth_landmarks=self.options["smooth_landmarks"],
            min_detection_confidence=self.options["min_detection_confidence"],
            min_tracking_confidence=self.options["min_tracking_confidence"],
        )

    def reset(self) -> None:
        self.close()
        self._pose = self._make_pose()
        self._depth = None
        self._translation = None
        self._last_time = None

    def close(self) -> None:
        if self._pose is not None:
            self._pose.close()
            self._pose = None

    def process_frame(self, frame: np.ndarray, timestamp: float) -> FramePose:
        """Estimate the pose in one (H, W, 3) uint8 RGB frame; see the class docstring."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.dtype} {frame.shape}")
        if self._pose is None:
            raise RuntimeError("estimator is closed; create a new one")
        result = self._pose.process(np.ascontiguousarray(frame))
        if result.pose_world_landmarks is None:
            self._depth = None
            return FramePose.missing()

        world = np.array([[p.x, p.y, p.z] for p in result.pose_world_landmarks.landmark])
        visibility = np.array([p.visibility for p in result.pose_world_landmarks.landmark])
        joints, confidence = landmarks_to_joints(world, visibility)
        if self.options["root_translation"]:
            image = np.array([[p.x, p.y] for p in result.pose_landmarks.landmark])
            translation = self._track_translation(world, image, visibility, frame.shape, timestamp)
            if translation is not None:
                joints = joints + translation
        self._last_time = timestamp
        joints = camera_to_y_up(joints).astype(np.float32)
        return FramePose(joints, np.clip(confidence, 0.0, 1.0).astype(np.float32), True)

    def _track_translation(self, world, image, visibility, shape, timestamp) -> np.ndarray | None:
        """Return the root translation in camera axes, with the depth smoothed over time.

        Depth (camera distance) is the noisy part of the fit: its frame-to-frame changes
        have a standard deviation of 2 to 8 cm on the Pose2Sim clips at 60 fps, against
        under 1 cm sideways. So depth goes through an exponential moving average, and x
        and y are solved again at the smoothed depth. A frame where
        the fit fails keeps the previous translation.
        """
        height, width = shape[:2]
        focal = self.options["focal_length_ratio"] * max(width, height)
        translation = _solve_translation(world, image, visibility, (width, height), focal)
        if translation is None:
            return self._translation

        time_constant = self.options["depth_smoothing_s"]
        if self._depth is None or self._last_time is None or time_constant <= 0:
            self._depth = float(translation[2])
        else:
            step = max(timestamp - self._last_time, 0.0)
            self._depth += (1.0 - math.exp(-step / time_constant)) * (float(translation[2]) - self._depth)
        self._translation = _solve_translation(world, image, visibility, (width, height), focal, depth=self._depth)
        return self._translation
