import gzip

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from toau.io.bvh import BVHError, parse_bvh, read_bvh
from toau.io.joint_map import JointMap
from toau.motion.quaternion import euler_to_matrix
from toau.skeleton import JOINT_NAMES

# Root with six channels, a child with three rotation channels in another order, and an End Site.
SMALL_BVH = """HIERARCHY
ROOT Base
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT Arm
  {
    OFFSET 0 10 0
    CHANNELS 3 Xrotation Yrotation Zrotation
    End Site
    {
      OFFSET 0 0 5
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.0333333
1 2 3 90 0 0 90 0 0
0 0 0 0 0 0 0 0 0
"""


def test_forward_kinematics_by_hand():
    motion = parse_bvh(SMALL_BVH)
    positions = motion.positions(unit_scale=1.0, include_end_sites=True)
    assert positions.shape == (2, 3, 3)
    # Frame 0: root at (1, 2, 3) turned 90 degrees about Z; the arm turns a further 90 about X.
    np.testing.assert_allclose(positions[0], [[1, 2, 3], [-9, 2, 3], [-4, 2, 3]], atol=1e-9)
    np.testing.assert_allclose(positions[1], [[0, 0, 0], [0, 10, 0], [0, 10, 5]], atol=1e-9)


def test_end_sites_excluded_by_default():
    motion = parse_bvh(SMALL_BVH)
    assert motion.names == ["Base", "Arm"]
    assert motion.positions().shape == (2, 2, 3)


def test_unit_scale_applies():
    motion = parse_bvh(SMALL_BVH)
    np.testing.assert_allclose(motion.positions(unit_scale=0.01)[1, 1], [0, 0.1, 0], atol=1e-12)


@pytest.mark.parametrize("order", ["XYZ", "ZXY", "YXZ", "ZYX"])
def test_euler_order_matches_scipy(order):
    angles = np.array([0.3, -1.1, 2.0])
    expected = Rotation.from_euler(order, angles).as_matrix()   # upper case: intrinsic
    np.testing.assert_allclose(euler_to_matrix(angles, order), expected, atol=1e-12)


def test_gzip_and_plain_read_alike(tmp_path):
    plain = tmp_path / "clip.bvh"
    plain.write_text(SMALL_BVH)
    packed = tmp_path / "clip.bvh.gz"
    packed.write_bytes(gzip.compress(SMALL_BVH.encode()))
    np.testing.assert_array_equal(read_bvh(plain).values, read_bvh(packed).values)


def test_frame_time_gives_fps():
    assert parse_bvh(SMALL_BVH).fps == pytest.approx(30.0, rel=1e-5)


@pytest.mark.parametrize("text, message", [
    (SMALL_BVH.replace("Frames: 2", "Frames: 3"), "truncated"),
    (SMALL_BVH.replace("CHANNELS 3 Xrotation", "CHANNELS 4 Xrotation"), "declares 4 channels"),
    (SMALL_BVH.replace("Zrotation Xrotation Yrotation", "Zrotation Xrotation Wrotation"), "unknown channel"),
    (SMALL_BVH.split("MOTION")[0], "no MOTION"),
    (SMALL_BVH.replace("  }\n}\nMOTION", "  }\nMOTION"), "braces"),
    (SMALL_BVH.replace("Frame Time", "Frametime"), "Frame Time"),
])
def test_malformed_bvh_raises(text, message):
    with pytest.raises(BVHError, match=message):
        parse_bvh(text)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bvh"):
        read_bvh(tmp_path / "nope.bvh")


def test_bandai_clip_in_metres(bandai_dir):
    path = next((bandai_dir / "Bandai-Namco-Research-Motiondataset-1" / "data").glob("*walk_normal*.bvh.gz"))
    motion = read_bvh(path)
    joints = JointMap.get("bandai").apply(motion.positions(), motion.names)
    assert joints.shape[1:] == (22, 3)
    # Head joint (base of the skull) above the lowest joint: an adult's 1.2-1.9 m only if units are metres.
    height = joints[0, JOINT_NAMES.index("head"), 1] - joints[0, :, 1].min()
    assert 1.2 < height < 1.9


# --- Joint maps --------------------------------------------------------------------------------

def _rig_names(joint_map: JointMap) -> list[str]:
    return sorted({name for weights in joint_map.weights.values() for name in weights})


@pytest.mark.parametrize("preset", ["bandai", "cmu", "mixamo"])
def test_preset_maps_each_joint(preset):
    joint_map = JointMap.get(preset)
    names = _rig_names(joint_map)
    matrix = joint_map.matrix(names)
    assert matrix.shape == (22, len(names))
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)


def test_bandai_spine2_is_midpoint():
    joint_map = JointMap.get("bandai")
    names = ["Spine", "Chest"] + [n for n in _rig_names(joint_map) if n not in ("Spine", "Chest")]
    positions = np.zeros((1, len(names), 3))
    positions[0, 0] = (0, 1.0, 0)
    positions[0, 1] = (0, 1.2, 0)
    joints = joint_map.apply(positions, names)
    np.testing.assert_allclose(joints[0, JOINT_NAMES.index("spine2")], [0, 1.1, 0])


def test_mixamo_other_namespace_matches():
    joint_map = JointMap.get("mixamo")
    names = [name.replace("mixamorig:", "mixamorig1:") for name in _rig_names(joint_map)]
    np.testing.assert_allclose(joint_map.matrix(names).sum(axis=1), 1.0)


def test_missing_rig_joint_lists_names():
    joint_map = JointMap.get("cmu")
    names = [name for name in _rig_names(joint_map) if name not in ("LeftToeBase", "Neck")]
    with pytest.raises(ValueError, match=r"\['LeftToeBase', 'Neck'\]"):
        joint_map.matrix(names)


def test_yaml_map(tmp_path):
    lines = [f"{joint}: J{i}" for i, joint in enumerate(JOINT_NAMES)]
    lines[6] = "spine2: {J3: 0.25, J9: 0.75}"
    path = tmp_path / "rig.yaml"
    path.write_text("\n".join(lines))
    joint_map = JointMap.get(path)
    names = [f"J{i}" for i in range(22)]
    positions = np.arange(22 * 3, dtype=float).reshape(1, 22, 3)
    joints = joint_map.apply(positions, names)
    np.testing.assert_allclose(joints[0, 6], 0.25 * positions[0, 3] + 0.75 * positions[0, 9])
    np.testing.assert_allclose(joints[0, 0], positions[0, 0])


def test_yaml_map_missing_joint(tmp_path):
    path = tmp_path / "rig.yaml"
    path.write_text("pelvis: Hips\n")
    with pytest.raises(ValueError, match="missing SMPL joints"):
        JointMap.get(path)


def test_weights_must_sum_to_one():
    mapping = {joint: "X" for joint in JOINT_NAMES}
    mapping["neck"] = {"A": 0.5, "B": 0.4}
    with pytest.raises(ValueError, match="sum to 1"):
        JointMap(mapping)
