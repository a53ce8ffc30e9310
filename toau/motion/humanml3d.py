"""HumanML3D motion representation: 22 joints (F, 22, 3) <-> 263-dim features (F-1, 263).

Follows the public HumanML3D processing (github.com/EricGuo5513/HumanML3D, MIT licence,
`motion_representation.ipynb` and `common/skeleton.py`), including its quirks, so that features
computed here are interchangeable with the released `new_joint_vecs`:

1. scale the skeleton to the reference bone lengths, keeping every bone's direction;
2. floor at y = 0, first-frame pelvis at the XZ origin, first frame facing +Z;
3. foot contacts, inverse kinematics with a smoothed facing, root velocities and the features.

Feature layout per row t (F-1 rows for F frames at 20 fps):

| channels  | count | meaning                                                           |
|-----------|-------|-------------------------------------------------------------------|
| 0         | 1     | root yaw velocity: half the yaw change from t to t+1 (radians)    |
| 1:3       | 2     | root XZ velocity in the root frame of t+1 (metres per frame)      |
| 3         | 1     | root height (metres)                                              |
| 4:67      | 63    | joints 1..21 relative to the root, in the root frame              |
| 67:193    | 126   | local rotations of joints 1..21, continuous 6D                    |
| 193:259   | 66    | velocities of all 22 joints in the root frame of t (m per frame)  |
| 259:263   | 4     | foot contacts: left ankle, left toe, right ankle, right toe       |
"""

import numpy as np
from scipy.ndimage import gaussian_filter1d

from toau.motion.quaternion import qbetween, qinv, qmul, qrot, qyaw, quat_to_cont6d
from toau.skeleton import (
    KINEMATIC_CHAINS, LEFT_FOOT_JOINTS, LEFT_HIP, LEFT_SHOULDER, MIRROR_INDEX, NUM_JOINTS,
    RAW_OFFSETS, RIGHT_FOOT_JOINTS, RIGHT_HIP, RIGHT_SHOULDER, bone_lengths,
)

FEATURE_DIM = 263
FPS = 20

ROOT_YAW_VELOCITY = slice(0, 1)
ROOT_XZ_VELOCITY = slice(1, 3)
ROOT_HEIGHT = slice(3, 4)
RIC = slice(4, 67)
ROTATIONS = slice(67, 193)
VELOCITIES = slice(193, 259)
FOOT_CONTACTS = slice(259, 263)
FEATURE_GROUPS = {
    "root_yaw_velocity": ROOT_YAW_VELOCITY,
    "root_xz_velocity": ROOT_XZ_VELOCITY,
    "root_height": ROOT_HEIGHT,
    "ric": RIC,
    "rotations": ROTATIONS,
    "velocities": VELOCITIES,
    "foot_contacts": FOOT_CONTACTS,
}

# Bone lengths in metres of HumanML3D's reference skeleton (first frame of clip 000021, file
# `skeleton_example_h3d.npy`, first 22 joints); every motion is rescaled to these.
REFERENCE_BONE_LENGTHS = np.array([
    0.000000000, 0.103073968, 0.109883368, 0.131568243, 0.393623201, 0.390188226, 0.143190215,
    0.432433081, 0.425643345, 0.057364735, 0.143381819, 0.149419073, 0.219360053, 0.137486768,
    0.143382833, 0.103039219, 0.131614046, 0.122984378, 0.256840005, 0.263091744, 0.266011722,
    0.269876403,
])

# A foot joint is in contact when it moves less than this squared distance per frame (m^2 at 20 fps),
# i.e. under about 0.045 m per frame. HumanML3D applies no height test.
FOOT_CONTACT_THRESHOLD = 0.002

# Standard deviation, in frames, of the Gaussian that smooths the facing direction for the root rotation.
FACING_SMOOTHING_SIGMA = 20

# Leg length for the root scale: knee-to-hip plus ankle-to-knee bones of the right leg.
_LEG_JOINTS = (5, 8)

_UP = np.array([0.0, 1.0, 0.0])
_FORWARD = np.array([0.0, 0.0, 1.0])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _check_joints(joints: np.ndarray, min_frames: int) -> np.ndarray:
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"joints must have shape (frames, {NUM_JOINTS}, 3), got {joints.shape}")
    if len(joints) < min_frames:
        raise ValueError(
            f"a clip needs at least {min_frames} frames for HumanML3D features (one row per frame pair), "
            f"got {len(joints)}; pass a longer clip"
        )
    if not np.all(np.isfinite(joints)):
        bad = np.argwhere(~np.isfinite(joints).all(axis=(1, 2)))[:, 0]
        raise ValueError(f"joints contain NaN or inf in {len(bad)} frames (first: {bad[:5].tolist()}); fill gaps first")
    return joints


def facing_direction(joints: np.ndarray) -> np.ndarray:
    """Horizontal unit vector a body faces, from hips and shoulders: (..., 22, 3) -> (..., 3).

    A person standing upright with their left side at +X faces +Z.
    """
    across = (joints[..., RIGHT_HIP, :] - joints[..., LEFT_HIP, :]) + (
        joints[..., RIGHT_SHOULDER, :] - joints[..., LEFT_SHOULDER, :])
    return _unit(np.cross(_UP, _unit(across)))


def rescale_skeleton(joints: np.ndarray, target_lengths: np.ndarray = REFERENCE_BONE_LENGTHS) -> np.ndarray:
    """Give every bone its target length while keeping its direction in every frame, (F, 22, 3).

    Equivalent to HumanML3D's inverse kinematics against the source skeleton followed by forward
    kinematics with the target offsets. The root trajectory is scaled by the ratio of leg lengths,
    measured on the first frame.
    """
    source_lengths = bone_lengths(joints[0])
    scale = target_lengths[list(_LEG_JOINTS)].sum() / source_lengths[list(_LEG_JOINTS)].sum()
    out = np.empty_like(joints)
    out[:, 0] = joints[:, 0] * scale
    for chain in KINEMATIC_CHAINS:
        for parent, child in zip(chain[:-1], chain[1:]):
            direction = _unit(joints[:, child] - joints[:, parent])
            out[:, child] = out[:, parent] + direction * target_lengths[child]
    return out


def canonicalize(joints: np.ndarray) -> np.ndarray:
    """Rescale, put the floor at y = 0, the first pelvis at the XZ origin and the first frame facing +Z.

    joints (F, 22, 3) in metres, Y up -> (F, 22, 3): the "global positions" of HumanML3D.
    """
    joints = _check_joints(joints, min_frames=1)
    positions = rescale_skeleton(joints)
    positions[..., 1] -= positions[..., 1].min()
    positions -= positions[0, 0] * np.array([1.0, 0.0, 1.0])
    to_forward = qbetween(facing_direction(positions[0]), _FORWARD)
    return qrot(np.broadcast_to(to_forward, positions.shape[:-1] + (4,)), positions)


def foot_contacts(positions: np.ndarray, threshold: float = FOOT_CONTACT_THRESHOLD) -> np.ndarray:
    """Contact flags (F-1, 4) for (left ankle, left toe, right ankle, right toe) from positions (F, 22, 3)."""
    feet = list(LEFT_FOOT_JOINTS + RIGHT_FOOT_JOINTS)
    squared_step = ((positions[1:, feet] - positions[:-1, feet]) ** 2).sum(-1)
    return (squared_step < threshold).astype(np.float32)


def inverse_kinematics(positions: np.ndarray, smooth_facing: bool = True) -> np.ndarray:
    """Local joint rotations (F, 22, 4) whose rest directions (RAW_OFFSETS) point along the bones.

    Row 0 of each frame is the root rotation, which turns the (smoothed) facing to +Z; frame 0's
    root rotation is the identity, as in HumanML3D. HumanML3D computes the facing here with the
    hip term reversed (left minus right hip, right minus left shoulder), so the shoulders dominate;
    that quirk is kept because the released features contain it.
    """
    across = _unit((positions[:, LEFT_HIP] - positions[:, RIGHT_HIP])
                   + (positions[:, RIGHT_SHOULDER] - positions[:, LEFT_SHOULDER]))
    forward = np.cross(_UP, across)
    if smooth_facing:
        forward = gaussian_filter1d(forward, FACING_SMOOTHING_SIGMA, axis=0, mode="nearest")
    forward = _unit(forward)

    frames = len(positions)
    rotations = np.zeros((frames, NUM_JOINTS, 4))
    root = qbetween(forward, np.broadcast_to(_FORWARD, forward.shape))
    root[0] = (1.0, 0.0, 0.0, 0.0)
    rotations[:, 0] = root

    for chain in KINEMATIC_CHAINS:
        accumulated = root
        for parent, child in zip(chain[:-1], chain[1:]):
            rest = np.broadcast_to(RAW_OFFSETS[child], (frames, 3))
            bone = _unit(positions[:, child] - positions[:, parent])
            local = qmul(qinv(accumulated), qbetween(rest, bone))
            rotations[:, child] = local
            accumulated = qmul(accumulated, local)
    return rotations


def joints_to_features(joints: np.ndarray) -> np.ndarray:
    """HumanML3D features of a clip: joints (F, 22, 3), metres, Y up, 20 fps -> (F-1, 263) float32."""
    joints = _check_joints(joints, min_frames=2)
    positions = canonicalize(joints)
    contacts = foot_contacts(positions)

    rotations = inverse_kinematics(positions)
    root_rotation = rotations[:, 0]                                    # (F, 4)
    per_joint_root = np.repeat(root_rotation[:, None], NUM_JOINTS, axis=1)

    # Root motion: velocity expressed in the root frame of the next frame; yaw as half-angle sine.
    root_velocity = qrot(root_rotation[1:], positions[1:, 0] - positions[:-1, 0])
    yaw_step = qmul(root_rotation[1:], qinv(root_rotation[:-1]))
    root_yaw_velocity = np.arcsin(np.clip(yaw_step[:, 2], -1.0, 1.0))

    # Root-relative positions ("ric"), then velocities rotated by the root of the earlier frame.
    relative = positions - positions[:, :1] * np.array([1.0, 0.0, 1.0])
    ric = qrot(per_joint_root, relative)
    velocities = qrot(per_joint_root[:-1], positions[1:] - positions[:-1])

    cont6d = quat_to_cont6d(rotations)
    rows = len(joints) - 1
    features = np.concatenate([
        root_yaw_velocity[:, None],
        root_velocity[:, [0, 2]],
        positions[:-1, 0, 1:2],
        ric[:-1, 1:].reshape(rows, -1),
        cont6d[:-1, 1:].reshape(rows, -1),
        velocities.reshape(rows, -1),
        contacts,
    ], axis=-1)
    assert features.shape == (rows, FEATURE_DIM), features.shape
    return features.astype(np.float32)


def recover_root(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integrate the root channels: features (..., T, 263) -> rotation (..., T, 4), position (..., T, 3)."""
    yaw_velocity = features[..., 0]
    angle = np.zeros_like(yaw_velocity, dtype=np.float64)
    angle[..., 1:] = np.cumsum(yaw_velocity[..., :-1], axis=-1)
    # The feature is a half-angle, which is what a quaternion's (cos, sin) pair takes.
    rotation = qyaw(2.0 * angle)

    step = np.zeros(features.shape[:-1] + (3,))
    step[..., 1:, 0] = features[..., :-1, 1]
    step[..., 1:, 2] = features[..., :-1, 2]
    position = np.cumsum(qrot(qinv(rotation), step), axis=-2)
    position[..., 1] = features[..., 3]
    return rotation, position


def features_to_joints(features: np.ndarray) -> np.ndarray:
    """Joints from the root channels and root-relative positions: (..., T, 263) -> (..., T, 22, 3)."""
    features = np.asarray(features)
    if features.shape[-1] != FEATURE_DIM:
        raise ValueError(f"features must end in {FEATURE_DIM} channels, got shape {features.shape}")
    rotation, position = recover_root(features)

    ric = features[..., RIC].reshape(features.shape[:-1] + (NUM_JOINTS - 1, 3)).astype(np.float64)
    inverse = np.repeat(qinv(rotation)[..., None, :], NUM_JOINTS - 1, axis=-2)
    joints = qrot(inverse, ric)
    joints[..., 0] += position[..., None, 0]
    joints[..., 2] += position[..., None, 2]
    joints = np.concatenate([position[..., None, :], joints], axis=-2)
    return joints.astype(features.dtype if np.issubdtype(features.dtype, np.floating) else np.float64)


# --- Mirroring --------------------------------------------------------------------------------

# Rotation mirror: M' = S M S with S = diag(-1, 1, 1). The 6D form stores columns 0 and 1 of M,
# which become -S col0 and S col1.
_MIRROR_6D_SIGNS = np.array([1.0, -1.0, -1.0, -1.0, 1.0, 1.0])
_MIRROR_X = np.array([-1.0, 1.0, 1.0])


def mirror_joints(joints: np.ndarray) -> np.ndarray:
    """Left/right mirror image: negate X and swap left and right joints, (..., 22, 3)."""
    return joints[..., MIRROR_INDEX, :] * _MIRROR_X


def mirror_features(features: np.ndarray) -> np.ndarray:
    """Features of the mirrored motion, (..., 263); equals joints_to_features(mirror_joints(j))."""
    out = np.array(features, copy=True)
    lead = features.shape[:-1]
    swap_rest = MIRROR_INDEX[1:] - 1                                   # joints 1..21 only

    out[..., 0] = -features[..., 0]
    out[..., 1] = -features[..., 1]

    ric = features[..., RIC].reshape(lead + (NUM_JOINTS - 1, 3))
    out[..., RIC] = (ric[..., swap_rest, :] * _MIRROR_X).reshape(lead + (-1,))

    rot = features[..., ROTATIONS].reshape(lead + (NUM_JOINTS - 1, 6))
    out[..., ROTATIONS] = (rot[..., swap_rest, :] * _MIRROR_6D_SIGNS).reshape(lead + (-1,))

    vel = features[..., VELOCITIES].reshape(lead + (NUM_JOINTS, 3))
    out[..., VELOCITIES] = (vel[..., MIRROR_INDEX, :] * _MIRROR_X).reshape(lead + (-1,))

    contacts = features[..., FOOT_CONTACTS]
    out[..., FOOT_CONTACTS] = contacts[..., [2, 3, 0, 1]]
    return out

