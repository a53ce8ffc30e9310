"""The 22-joint SMPL-order skeleton that every TOAU motion uses.

Conventions: metres, Y up, right-handed. A person facing +Z has their left side at +X.
Joint order, chains and rest directions follow the HumanML3D processing
(github.com/EricGuo5513/HumanML3D, `paramUtil.py`).
"""

import numpy as np

JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist",
)
NUM_JOINTS = len(JOINT_NAMES)
JOINT_INDEX = {name: i for i, name in enumerate(JOINT_NAMES)}

# Each chain starts at its root joint; the arms hang off spine3 (joint 9).
KINEMATIC_CHAINS = (
    (0, 2, 5, 8, 11),
    (0, 1, 4, 7, 10),
    (0, 3, 6, 9, 12, 15),
    (9, 14, 17, 19, 21),
    (9, 13, 16, 18, 20),
)

PARENTS = np.full(NUM_JOINTS, -1, dtype=np.int64)
for _chain in KINEMATIC_CHAINS:
    for _parent, _child in zip(_chain[:-1], _chain[1:]):
        PARENTS[_child] = _parent

# Unit direction of each joint's bone from its parent in the rest pose; row 0 (the root) is zero.
RAW_OFFSETS = np.array([
    [0, 0, 0],
    [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, -1, 0],
    [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0], [-1, 0, 0],
    [0, 0, 1], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
], dtype=np.float64)

# Facing is estimated from the hips and the shoulders.
LEFT_HIP, RIGHT_HIP = JOINT_INDEX["left_hip"], JOINT_INDEX["right_hip"]
LEFT_SHOULDER, RIGHT_SHOULDER = JOINT_INDEX["left_shoulder"], JOINT_INDEX["right_shoulder"]

# Foot contacts are detected on ankle and toe joints, left pair first.
LEFT_FOOT_JOINTS = (JOINT_INDEX["left_ankle"], JOINT_INDEX["left_foot"])
RIGHT_FOOT_JOINTS = (JOINT_INDEX["right_ankle"], JOINT_INDEX["right_foot"])

# Mirror map: index of the joint that takes each joint's place after a left/right flip.
MIRROR_INDEX = np.array([
    JOINT_INDEX[name.replace("left_", "@").replace("right_", "left_").replace("@", "right_")]
    for name in JOINT_NAMES
], dtype=np.int64)

# Joint groups used when MPJPE is reported per body part.
JOINT_GROUPS = {
    "torso": (0, 3, 6, 9, 12, 13, 14, 15),
    "legs": (1, 2, 4, 5, 7, 8, 10, 11),
    "arms": (16, 17, 18, 19, 20, 21),
}


def bone_lengths(joints: np.ndarray) -> np.ndarray:
    """Return the length of each joint's bone to its parent, (..., 22, 3) -> (..., 22); root is 0."""
    assert joints.shape[-2:] == (NUM_JOINTS, 3), f"expected (..., {NUM_JOINTS}, 3), got {joints.shape}"
    parents = np.where(PARENTS < 0, 0, PARENTS)
    return np.linalg.norm(joints - joints[..., parents, :], axis=-1)
