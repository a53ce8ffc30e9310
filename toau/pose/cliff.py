"""Adapter for CLIFF-style estimators: per-frame SMPL parameters -> 22 joints.

CLIFF (Li et al., ECCV 2022) and similar human mesh recovery networks predict, per frame,
SMPL pose (72 axis-angle values, global orientation first), shape (10 betas) and the body's
translation in the camera frame. TOAU ships no such network: the user supplies the
checkpoint and a factory that builds a predictor from it. This module checks the files,
runs the predictor and turns its SMPL output into joints with `toau.io.smpl`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from toau.pose.base import FramePose, PoseEstimator, camera_to_y_up
from toau.skeleton import NUM_JOINTS

log = logging.getLogger(__name__)

WEIGHTS_HINT = (
    "download a CLIFF checkpoint (e.g. hr48-PA43.0_MJE69.0_MVE81.2_3dpw.pt) from the links in "
    "https://github.com/huawei-noah/noah-research/tree/master/CLIFF and pass its path"
)


@dataclass(frozen=True)
class SmplPrediction:
    """One frame's SMPL estimate, in camera axes (x right, y down, z forward), as CLIFF outputs.

    pose (72,) axis-angle radians, global orientation first; betas (10,) or fewer;
    transl (3,) metres, body position in the camera frame; score in [0, 1], used as the
    confidence of every joint.
    """

    pose: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    score: float = 1.0


# A predictor maps one (H, W, 3) uint8 RGB frame to an SmplPrediction, or to None when it
# finds no person. A factory builds a predictor from a checkpoint path.
Predictor = Callable[[np.ndarray], Optional[SmplPrediction]]
PredictorFactory = Callable[[Path], Predictor]


def check_weights(weights_path: str | os.PathLike) -> Path:
    """Return the checkpoint path, or raise FileNotFoundError naming it and where to get one."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CLIFF weights {path} not found; {WEIGHTS_HINT}")
    return path


class CliffPoseEstimator(PoseEstimator):
    """Runs a user-supplied CLIFF-style predictor and converts its SMPL output to joints.

    weights_path: the predictor's checkpoint, checked before anything is built.
    predictor_factory: builds the predictor from the checkpoint path.
    smpl_model_dir, gender: SMPL body model files, loaded with `toau.io.smpl.load_smpl_model`;
    alternatively pass a loaded `smpl_model`.
    Each frame is estimated on its own, so `reset` has nothing to clear.
    """

    name = "cliff"

    def __init__(
        self,
        weights_path: str | os.PathLike,
        predictor_factory: PredictorFactory,
        smpl_model_dir: str | os.PathLike | None = None,
        gender: str = "neutral",
        smpl_model: Any = None,
    ) -> None:
        path = check_weights(weights_path)
        from toau.io import smpl  # imported here: it loads torch and smplx

        if smpl_model is None:
            if smpl_model_dir is None:
                raise ValueError(f"pass smpl_model_dir (or a loaded smpl_model); {smpl.SMPL_DOWNLOAD_HINT}")
            smpl_model = smpl.load_smpl_model(smpl_model_dir, gender)
        self._smpl_to_joints = smpl.smpl_to_joints
        self._smpl_model = smpl_model
        self._predictor = predictor_factory(path)
        log.info("CLIFF-style predictor built from %s", path)

    def process_frame(self, frame: np.ndarray, timestamp: float) -> FramePose:
        """Estimate the pose in one (H, W, 3) uint8 RGB frame."""
        prediction = self._predictor(frame)
        if prediction is None:
            return FramePose.missing()
        pose = np.asarray(prediction.pose, dtype=np.float32).reshape(1, 72)
        betas = np.asarray(prediction.betas, dtype=np.float32).reshape(1, -1)
        transl = np.asarray(prediction.transl, dtype=np.float32).reshape(1, 3)
        joints = self._smpl_to_joints(self._smpl_model, pose, betas, None, transl)[0]
        confidence = np.full(NUM_JOINTS, np.clip(prediction.score, 0.0, 1.0), dtype=np.float32)
        return FramePose(camera_to_y_up(joints).astype(np.float32), confidence, True)
