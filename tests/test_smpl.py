"""SMPL model loading and joints, on synthetic model files written by the tests.

smplx reads extra keypoints from fixed vertex ids up to 6787, so the synthetic mesh has the real
6890 vertices. Each joint is regressed from one vertex that sits on it, so the rest joints are
known exactly. The pose blend shapes are zero, which leaves the joints unchanged because smplx
regresses joints before adding them.
"""

import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
from scipy.spatial.transform import Rotation

from toau.io.smpl import find_smpl_file, load_smpl_model, smpl_to_joints

NUM_VERTICES = 6890
NUM_FACES = 13776
SMPL_PARENTS = np.array([-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21])
# Rest joints of a T-pose in metres: Y up, facing +Z, left side at +X (the SMPL convention).
REST_JOINTS = np.array([
    [0.00, 0.93, 0.00], [0.09, 0.84, 0.00], [-0.09, 0.84, 0.00], [0.00, 1.04, -0.01],
    [0.10, 0.46, 0.01], [-0.10, 0.46, 0.01], [0.00, 1.17, 0.00], [0.10, 0.06, -0.03],
    [-0.10, 0.06, -0.03], [0.00, 1.23, 0.01], [0.11, 0.00, 0.10], [-0.11, 0.00, 0.10],
    [0.00, 1.45, -0.01], [0.08, 1.37, 0.00], [-0.08, 1.37, 0.00], [0.00, 1.55, 0.05],
    [0.18, 1.40, -0.01], [-0.18, 1.40, -0.01], [0.44, 1.40, -0.02], [-0.44, 1.40, -0.02],
    [0.70, 1.40, -0.01], [-0.70, 1.40, -0.01], [0.78, 1.39, -0.01], [-0.78, 1.39, -0.01],
])
JOINT_VERTICES = 7 + 250 * np.arange(24)  # the vertex each joint is regressed from


def make_smpl_arrays(scale: float = 1.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of an SMPL model file: every vertex skinned to one joint, joints on known vertices."""
    rng = np.random.default_rng(seed)
    rest = REST_JOINTS * scale
    owner = rng.integers(0, 24, size=NUM_VERTICES)
    owner[JOINT_VERTICES] = np.arange(24)
    v_template = rest[owner] + rng.normal(scale=0.03, size=(NUM_VERTICES, 3))
    v_template[JOINT_VERTICES] = rest

    regressor = np.zeros((24, NUM_VERTICES))
    regressor[np.arange(24), JOINT_VERTICES] = 1.0
    parents = SMPL_PARENTS.astype(np.int64)
    parents[0] = 4294967295  # the root's parent as the SMPL files store it (uint32 max)
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(scale=0.01, size=(NUM_VERTICES, 3, 10)),
        "posedirs": np.zeros((NUM_VERTICES, 3, 207), dtype=np.float32),
        "J_regressor": regressor,
        "kintree_table": np.stack([parents, np.arange(24)]),
        "weights": np.eye(24)[owner],
        "f": rng.integers(0, NUM_VERTICES, size=(NUM_FACES, 3)).astype(np.uint32),
        "bs_style": "lbs",
    }


def write_smpl_pkl(path, arrays: dict) -> None:
    """Write a .pkl in the layout of the SMPL website's files: J_regressor as a scipy CSC matrix."""
    content = dict(arrays, J_regressor=scipy.sparse.csc_matrix(arrays["J_regressor"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


def write_smpl_npz(path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{key: value for key, value in arrays.items() if key != "bs_style"})


@pytest.fixture(scope="session")
def smpl_arrays():
    return make_smpl_arrays()


@pytest.fixture(scope="session")
def smpl_dir(tmp_path_factory, smpl_arrays):
    """A model folder in the smplx.create layout: smpl/SMPL_NEUTRAL.pkl."""
    root = tmp_path_factory.mktemp("smpl_models")
    write_smpl_pkl(root / "smpl" / "SMPL_NEUTRAL.pkl", smpl_arrays)
    return root


@pytest.fixture(scope="session")
def model(smpl_dir):
    return load_smpl_model(smpl_dir)


def rest_joints(arrays: dict, betas=None) -> np.ndarray:
    """J_regressor @ (v_template + shapedirs . betas), the 24 rest joints."""
    vertices = arrays["v_template"]
    if betas is not None:
        vertices = vertices + arrays["shapedirs"][..., : len(betas)] @ betas
    return arrays["J_regressor"] @ vertices


def forward_kinematics(rest: np.ndarray, rotations: np.ndarray, transl: np.ndarray) -> np.ndarray:
    """SMPL joint positions (F, 24, 3) from rest joints (24, 3) and local rotations (F, 24, 3, 3)."""
    frames = len(rotations)
    world = np.zeros((frames, 24, 3, 3))
    positions = np.zeros((frames, 24, 3))
    world[:, 0] = rotations[:, 0]
    positions[:, 0] = rest[0]
    for joint in range(1, 24):
        parent = SMPL_PARENTS[joint]
        world[:, joint] = world[:, parent] @ rotations[:, joint]
        positions[:, joint] = positions[:, parent] + world[:, parent] @ (rest[joint] - rest[parent])
    return positions + transl[:, None]


def random_pose(frames: int, seed: int = 1) -> np.ndarray:
    """Axis-angle (F, 72) with angles up to about 1 radian per joint."""
    return np.random.default_rng(seed).normal(scale=0.5, size=(frames, 72))


def to_matrices(axis_angle: np.ndarray) -> np.ndarray:
    """(F, 72) axis-angle -> (F, 24, 3, 3) rotation matrices."""
    return Rotation.from_rotvec(axis_angle.reshape(-1, 3)).as_matrix().reshape(len(axis_angle), 24, 3, 3)


def facing(joints: np.ndarray) -> np.ndarray:
    """Unit forward direction (F, 3) from hips and shoulders: cross(+Y, across)."""
    across = (joints[:, 2] - joints[:, 1]) + (joints[:, 17] - joints[:, 16])
    forward = np.cross([0.0, 1.0, 0.0], across)
    return forward / np.linalg.norm(forward, axis=-1, keepdims=True)


# --- joints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["axis_angle", "matrices"])
def test_rest_pose_joints(model, smpl_arrays, form):
    pose = np.zeros((3, 72)) if form == "axis_angle" else np.tile(np.eye(3), (3, 24, 1, 1))
    joints = smpl_to_joints(model, pose)
    assert joints.shape == (3, 22, 3)
    assert joints.dtype == np.float32
    np.testing.assert_allclose(joints, np.broadcast_to(rest_joints(smpl_arrays)[:22], (3, 22, 3)), atol=1e-6)


def test_pose_forms_match_fk(model, smpl_arrays):
    pose = random_pose(5)
    transl = np.random.default_rng(2).normal(size=(5, 3))
    matrices = to_matrices(pose)
    expected = forward_kinematics(rest_joints(smpl_arrays), matrices, transl)[:, :22]

    forms = {
        "(F, 72)": dict(body_pose=pose),
        "(F, 24, 3)": dict(body_pose=pose.reshape(5, 24, 3)),
        "(F, 24, 3, 3)": dict(body_pose=matrices),
        "(F, 69) + (F, 3)": dict(body_pose=pose[:, 3:], global_orient=pose[:, :3]),
        "(F, 23, 3, 3) + (F, 3, 3)": dict(body_pose=matrices[:, 1:], global_orient=matrices[:, 0]),
        "(F, 23, 3, 3) + (F, 1, 3, 3)": dict(body_pose=matrices[:, 1:], global_orient=matrices[:, :1]),
    }
    for name, kwargs in forms.items():
        joints = smpl_to_joints(model, transl=transl, **kwargs)
        np.testing.assert_allclose(joints, expected, atol=2e-5, err_msg=name)


def test_sequence_orient_and_transl(model, smpl_arrays):
    pose = random_pose(4)
    pose[:, :3] = [0.3, -0.2, 0.1]
    joints = smpl_to_joints(model, pose[:, 3:], global_orient=pose[0, :3], transl=[1.0, 2.0, 3.0])
    expected = forward_kinematics(rest_joints(smpl_arrays), to_matrices(pose), np.tile([1.0, 2.0, 3.0], (4, 1)))
    np.testing.assert_allclose(joints, expected[:, :22], atol=2e-5)


def test_global_orient_turns_facing(model):
    quarter_turn = np.zeros((1, 72))
    quarter_turn[0, 1] = np.pi / 2  # 90 degrees about +Y, the SMPL up axis
    rest = smpl_to_joints(model, np.zeros((1, 72)))
    turned = smpl_to_joints(model, quarter_turn)
    np.testing.assert_allclose(facing(rest)[0], [0.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(facing(turned)[0], [1.0, 0.0, 0.0], atol=1e-6)


def test_betas_shape_joints(model, smpl_arrays):
    betas = np.random.default_rng(3).normal(size=10)
    expected = rest_joints(smpl_arrays, betas)[:22]
    per_sequence = smpl_to_joints(model, np.zeros((2, 72)), betas=betas)
    per_frame = smpl_to_joints(model, np.zeros((2, 72)), betas=np.tile(betas, (2, 1)))
    np.testing.assert_allclose(per_sequence[0], expected, atol=1e-5)
    np.testing.assert_allclose(per_frame, per_sequence, atol=1e-6)


def test_short_betas_zero_padded(model):
    betas = np.array([0.5, -1.0])
    short = smpl_to_joints(model, np.zeros((1, 72)), betas=betas)
    padded = smpl_to_joints(model, np.zeros((1, 72)), betas=np.pad(betas, (0, 8)))
    np.testing.assert_allclose(short, padded, atol=1e-7)


def test_chunks_match_single_pass(model):
    pose = random_pose(7)
    np.testing.assert_allclose(
        smpl_to_joints(model, pose, chunk_size=3), smpl_to_joints(model, pose), atol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(body_pose=np.zeros((2, 70))), "body_pose has shape (2, 70)"),
        (dict(body_pose=np.zeros((2, 69))), "without global_orient expected (F, 72)"),
        (dict(body_pose=np.zeros((2, 69)), global_orient=np.zeros((3, 3))), "global_orient has shape (3, 3)"),
        (dict(body_pose=np.zeros((2, 72)), global_orient=np.zeros(3)), "with global_orient expected (F, 69)"),
        (dict(body_pose=np.zeros((2, 72)), betas=np.zeros(16)), "betas has 16 coefficients"),
        (dict(body_pose=np.zeros((2, 72)), betas=np.zeros((3, 10))), "betas has shape (3, 10)"),
        (dict(body_pose=np.zeros((2, 72)), transl=np.zeros((3, 3))), "transl has shape (3, 3)"),
        (dict(body_pose=np.zeros((0, 72))), "no frames"),
    ],
)
def test_invalid_inputs(model, kwargs, message):
    with pytest.raises(ValueError) as error:
        smpl_to_joints(model, **kwargs)
    assert message in str(error.value)


# --- model files ------------------------------------------------------------------------------


def test_flat_npz_layout(tmp_path, smpl_arrays):
    write_smpl_npz(tmp_path / "SMPL_MALE.npz", smpl_arrays)
    model = load_smpl_model(tmp_path, gender="male")
    joints = smpl_to_joints(model, np.zeros((1, 72)))
    assert model.gender == "male"
    np.testing.assert_allclose(joints[0], rest_joints(smpl_arrays)[:22], atol=1e-6)


def test_model_file_path(smpl_dir):
    path = smpl_dir / "smpl" / "SMPL_NEUTRAL.pkl"
    assert find_smpl_file(path) == path
    assert find_smpl_file(smpl_dir, "Neutral") == path


def test_chumpy_pickle_without_chumpy(tmp_path, monkeypatch, smpl_arrays):
    # A stand-in for chumpy.ch.Ch: pickles its state the way chumpy does, values under "x".
    chumpy = types.ModuleType("chumpy")
    chumpy_ch = types.ModuleType("chumpy.ch")
    ch_class = type("Ch", (), {"__module__": "chumpy.ch"})
    chumpy_ch.Ch = ch_class
    monkeypatch.setitem(sys.modules, "chumpy", chumpy)
    monkeypatch.setitem(sys.modules, "chumpy.ch", chumpy_ch)
    shapedirs = ch_class()
    shapedirs.__dict__.update(x=smpl_arrays["shapedirs"], _dirty_vars=set(), _itr=None)
    write_smpl_pkl(tmp_path / "SMPL_NEUTRAL.pkl", dict(smpl_arrays, shapedirs=shapedirs))
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    monkeypatch.delitem(sys.modules, "chumpy")

    model = load_smpl_model(tmp_path)
    betas = np.ones(10)
    joints = smpl_to_joints(model, np.zeros((1, 72)), betas=betas)
    np.testing.assert_allclose(joints[0], rest_joints(smpl_arrays, betas)[:22], atol=1e-5)


def test_missing_folder_message(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_smpl_model(tmp_path / "absent", gender="female")
    message = str(error.value)
    assert "SMPL model folder" in message
    assert str(tmp_path / "absent" / "smpl" / "SMPL_FEMALE.pkl") in message
    assert str(tmp_path / "absent" / "SMPL_FEMALE.npz") in message
    assert "https://smpl.is.tue.mpg.de" in message
    assert "licence" in message


def test_missing_file_message(tmp_path):
    (tmp_path / "smpl").mkdir()
    with pytest.raises(FileNotFoundError) as error:
        load_smpl_model(tmp_path)
    assert "gender 'neutral' not found" in str(error.value)
    assert str(tmp_path / "smpl" / "SMPL_NEUTRAL.npz") in str(error.value)


def test_corrupt_file_message(tmp_path):
    (tmp_path / "SMPL_NEUTRAL.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ValueError) as error:
        load_smpl_model(tmp_path)
    assert f"SMPL model file {tmp_path / 'SMPL_NEUTRAL.pkl'} could not be read" in str(error.value)


def test_missing_key_message(tmp_path, smpl_arrays):
    arrays = {key: value for key, value in smpl_arrays.items() if key != "weights"}
    write_smpl_npz(tmp_path / "SMPL_NEUTRAL.npz", arrays)
    with pytest.raises(ValueError) as error:
        load_smpl_model(tmp_path)
    assert "lacks keys ['weights']" in str(error.value)


def test_wrong_shape_message(tmp_path, smpl_arrays):
    write_smpl_npz(tmp_path / "SMPL_NEUTRAL.npz", dict(smpl_arrays, v_template=np.zeros((100, 3))))
    with pytest.raises(ValueError) as error:
        load_smpl_model(tmp_path)
    assert "'v_template' has shape (100, 3), expected (6890, 3)" in str(error.value)


def test_unexpected_pickle_class(tmp_path, smpl_arrays):
    write_smpl_pkl(tmp_path / "SMPL_NEUTRAL.pkl", dict(smpl_arrays, extra=types.SimpleNamespace()))
    with pytest.raises(ValueError) as error:
        load_smpl_model(tmp_path)
    assert "unexpected class types.SimpleNamespace" in str(error.value)


def test_invalid_gender(smpl_dir):
    with pytest.raises(ValueError) as error:
        load_smpl_model(smpl_dir, gender="child")
    assert "invalid SMPL gender 'child'" in str(error.value)
