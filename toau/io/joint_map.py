"""Maps from a rig's joint names to the 22 SMPL-order joints.

A map gives, for each SMPL joint, either one source joint name, a list of names (their mean), or a
{name: weight} mapping (a weighted sum, weights summing to 1). Presets cover the Bandai-Namco rig,
CMU-style rigs and Mixamo; a user map is a YAML file with the same form, e.g.

    pelvis: Hips
    spine2: [Spine, Chest]        # midpoint
    neck: {Neck: 0.7, Head: 0.3}
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from toau.skeleton import JOINT_NAMES

Source = str | Sequence[str] | Mapping[str, float]

BANDAI = {
    "pelvis": "Hips", "spine1": "Spine", "spine2": ["Spine", "Chest"], "spine3": "Chest",
    "neck": "Neck", "head": "Head",
    "left_hip": "UpperLeg_L", "left_knee": "LowerLeg_L", "left_ankle": "Foot_L", "left_foot": "Toes_L",
    "right_hip": "UpperLeg_R", "right_knee": "LowerLeg_R", "right_ankle": "Foot_R", "right_foot": "Toes_R",
    "left_collar": "Shoulder_L", "left_shoulder": "UpperArm_L", "left_elbow": "LowerArm_L", "left_wrist": "Hand_L",
    "right_collar": "Shoulder_R", "right_shoulder": "UpperArm_R", "right_elbow": "LowerArm_R",
    "right_wrist": "Hand_R",
}

# CMU motion capture as converted to BVH (Hips, LHipJoint -> LeftUpLeg -> LeftLeg ..., LowerBack ->
# Spine -> Spine1 -> Neck -> Neck1 -> Head). LHipJoint sits at the pelvis, so the hip is LeftUpLeg.
CMU = {
    "pelvis": "Hips", "spine1": "Spine", "spine2": ["Spine", "Spine1"], "spine3": "Spine1",
    "neck": "Neck", "head": "Head",
    "left_hip": "LeftUpLeg", "left_knee": "LeftLeg", "left_ankle": "LeftFoot", "left_foot": "LeftToeBase",
    "right_hip": "RightUpLeg", "right_knee": "RightLeg", "right_ankle": "RightFoot", "right_foot": "RightToeBase",
    "left_collar": "LeftShoulder", "left_shoulder": "LeftArm", "left_elbow": "LeftForeArm", "left_wrist": "LeftHand",
    "right_collar": "RightShoulder", "right_shoulder": "RightArm", "right_elbow": "RightForeArm",
    "right_wrist": "RightHand",
}

MIXAMO = {
    smpl: f"mixamorig:{name}" for smpl, name in {
        "pelvis": "Hips", "spine1": "Spine", "spine2": "Spine1", "spine3": "Spine2",
        "neck": "Neck", "head": "Head",
        "left_hip": "LeftUpLeg", "left_knee": "LeftLeg", "left_ankle": "LeftFoot", "left_foot": "LeftToeBase",
        "right_hip": "RightUpLeg", "right_knee": "RightLeg", "right_ankle": "RightFoot",
        "right_foot": "RightToeBase",
        "left_collar": "LeftShoulder", "left_shoulder": "LeftArm", "left_elbow": "LeftForeArm",
        "left_wrist": "LeftHand",
        "right_collar": "RightShoulder", "right_shoulder": "RightArm", "right_elbow": "RightForeArm",
        "right_wrist": "RightHand",
    }.items()
}

PRESETS = {"bandai": BANDAI, "cmu": CMU, "mixamo": MIXAMO}


def _weights(source: Source) -> dict[str, float]:
    if isinstance(source, str):
        return {source: 1.0}
    if isinstance(source, Mapping):
        weights = {str(k): float(v) for k, v in source.items()}
    else:
        names = [str(n) for n in source]
        weights = {n: 1.0 / len(names) for n in names}
    if not weights or abs(sum(weights.values()) - 1.0) > 1e-6:
        raise ValueError(f"joint map weights must sum to 1, got {weights}")
    return weights


def _strip_namespace(name: str) -> str:
    return name.rsplit(":", 1)[-1]


class JointMap:
    """A validated map to the 22 SMPL joints, applied as one (22, J) weight matrix."""

    def __init__(self, mapping: Mapping[str, Source], name: str = "custom"):
        missing = [j for j in JOINT_NAMES if j not in mapping]
        unknown = [j for j in mapping if j not in JOINT_NAMES]
        if missing or unknown:
            raise ValueError(f"joint map {name!r}: missing SMPL joints {missing}, unknown keys {unknown}")
        self.name = name
        self.weights = {j: _weights(mapping[j]) for j in JOINT_NAMES}

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "JointMap":
        with open(path) as f:
            mapping = yaml.safe_load(f)
        if not isinstance(mapping, Mapping):
            raise ValueError(f"joint map file {path} must hold a mapping from SMPL joint names to source joints")
        return cls(mapping, name=Path(path).stem)

    @classmethod
    def get(cls, name_or_path: str | os.PathLike) -> "JointMap":
        """Load a preset by name ("bandai", "cmu", "mixamo") or a map from a YAML file path."""
        if str(name_or_path) in PRESETS:
            return cls(PRESETS[str(name_or_path)], name=str(name_or_path))
        if Path(name_or_path).is_file():
            return cls.from_yaml(name_or_path)
        raise ValueError(f"unknown joint map {name_or_path!r}: use one of {sorted(PRESETS)} or a YAML file path")

    def matrix(self, source_names: Sequence[str]) -> np.ndarray:
        """Build the (22, J) matrix that turns (F, J, 3) rig positions into (F, 22, 3) SMPL joints.

        Names match exactly, or else after dropping a namespace prefix such as "mixamorig1:".
        """
        exact = {n: i for i, n in enumerate(source_names)}
        loose = {_strip_namespace(n): i for i, n in enumerate(source_names)}
        matrix = np.zeros((len(JOINT_NAMES), len(source_names)))
        missing = []
        for row, joint in enumerate(JOINT_NAMES):
            for name, weight in self.weights[joint].items():
                column = exact.get(name, loose.get(_strip_namespace(name)))
                if column is None:
                    missing.append(name)
                else:
                    matrix[row, column] += weight
        if missing:
            raise ValueError(
                f"rig lacks joints needed by joint map {self.name!r}: {sorted(set(missing))}; "
                f"rig joints are {list(source_names)}"
            )
        return matrix

    def apply(self, positions: np.ndarray, source_names: Sequence[str]) -> np.ndarray:
        """(F, J, 3) positions of the rig's joints -> (F, 22, 3) SMPL-order joints."""
        return np.einsum("sj,fjc->fsc", self.matrix(source_names), positions)
