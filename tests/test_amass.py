"""AMASS clips -> joints and features, on synthetic SMPL models and .npz clips written by the tests."""

import logging

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from test_smpl import make_smpl_arrays, rest_joints, write_smpl_npz, write_smpl_pkl
from toau.data.amass import (
    ZUP_TO_YUP, amass_to_features, amass_to_joints, build_amass_folder, load_amass_sequence,
)
from toau.motion.humanml3d import FEATURE_DIM, features_to_joints, joints_to_features

FEMALE_SCALE = 0.9  # the synthetic female model is the neutral one scaled down, to tell them apart


@pytest.fixture(scope="module")
def smpl_dir(tmp_path_factory):
    """Neutral and male models in the smplx.create layout, the female one flat as .npz."""
    root = tmp_path_factory.mktemp("amass_models")
    write_smpl_pkl(root / "smpl" / "SMPL_NEUTRAL.pkl", make_smpl_arrays())
    write_smpl_pkl(root / "smpl" / "SMPL_MALE.pkl", make_smpl_arrays())
    write_smpl_npz(root / "SMPL_FEMALE.npz", make_smpl_arrays(scale=FEMALE_SCALE))
    return root


def standing_poses(frames: int, seed: int = 0) -> np.ndarray:
    """SMPL+H poses (F, 156): upright in a Z-up world (+90 degrees about X), small joint motion."""
    rng = np.random.default_rng(seed)
    poses = np.zeros((frames, 156))
    poses[:, 0] = np.pi / 2
    poses[:, 3:66] = 0.2 * np.sin(np.linspace(0, 3, frames))[:, None] * rng.normal(size=63)
    poses[:, 66:] = rng.normal(size=90)  # hand joints, which must not matter
    return poses


def write_clip(path, frames=60, fps=60.0, fps_key="mocap_framerate", gender="male", trans=None, **extra):
    """Write an AMASS-format .npz; pass a key with value None to leave it out."""
    content = {
        "poses": standing_poses(frames),
        "trans": np.zeros((frames, 3)) if trans is None else trans,
        "betas": np.zeros(16),
        fps_key: np.array(fps),
        "gender": np.array(gender),
        "dmpls": np.zeros((frames, 8)),
    }
    content.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{key: value for key, value in content.items() if value is not None})
    return path


# --- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fps_key", ["mocap_framerate", "mocap_frame_rate"])
def test_frame_rate_keys(tmp_path, fps_key):
    seq = load_amass_sequence(write_clip(tmp_path / "clip.npz", fps=120.0, fps_key=fps_key))
    assert seq.fps == 120.0


@pytest.mark.parametrize("gender", ["female", b"female", np.array(b"female"), "Female "])
def test_gender_str_and_bytes(tmp_path, gender):
    seq = load_amass_sequence(write_clip(tmp_path / "clip.npz", gender=gender))
    assert seq.gender == "female"


def test_body_pose_columns(tmp_path):
    path = write_clip(tmp_path / "clip.npz", frames=5)
    seq = load_amass_sequence(path)
    assert seq.poses.shape == (5, 66)
    np.testing.assert_array_equal(seq.poses, np.load(path)["poses"][:, :66])
    assert seq.betas.shape == (16,)
    assert seq.num_frames == 5


def test_missing_poses_message(tmp_path):
    path = write_clip(tmp_path / "shape_only.npz", poses=None)
    with pytest.raises(ValueError) as error:
        load_amass_sequence(path)
    assert "key 'poses' missing" in str(error.value)
    assert "keys present: ['betas', 'dmpls', 'gender', 'mocap_framerate', 'trans']" in str(error.value)


def test_missing_frame_rate_message(tmp_path):
    path = write_clip(tmp_path / "clip.npz", mocap_framerate=None)
    with pytest.raises(ValueError) as error:
        load_amass_sequence(path)
    assert "expected key 'mocap_framerate' or 'mocap_frame_rate'" in str(error.value)


def test_mismatched_trans_message(tmp_path):
    path = write_clip(tmp_path / "clip.npz", frames=10, trans=np.zeros((9, 3)))
    with pytest.raises(ValueError) as error:
        load_amass_sequence(path)
    assert "trans has shape (9, 3), expected (10, 3)" in str(error.value)


# --- joints -----------------------------------------------------------------------------------


def test_zup_matrix_is_rotation():
    np.testing.assert_allclose(ZUP_TO_YUP @ ZUP_TO_YUP.T, np.eye(3))
    assert np.isclose(np.linalg.det(ZUP_TO_YUP), 1.0)
    np.testing.assert_allclose(ZUP_TO_YUP @ [0.0, 0.0, 1.0], [0.0, 1.0, 0.0])


def test_zup_to_yup_joints(tmp_path, smpl_dir):
    # Standing upright in AMASS (root +90 degrees about X), 0.5 m along AMASS +Z (up) and 2 m along +X.
    frames = 20
    poses = np.zeros((frames, 156))
    poses[:, 0] = np.pi / 2
    trans = np.tile([2.0, 0.0, 0.5], (frames, 1))
    path = write_clip(tmp_path / "clip.npz", frames=frames, fps=20.0, gender="neutral", poses=poses, trans=trans)
    joints, fps = amass_to_joints(load_amass_sequence(path), smpl_dir)

    # SMPL rotates about the pelvis joint, so only the pelvis itself moves with the axis change.
    rest = rest_joints(make_smpl_arrays())[:22]
    pelvis = rest[0]
    expected = rest - pelvis + ZUP_TO_YUP @ pelvis + [2.0, 0.5, 0.0]
    assert fps == 20.0
    assert joints.shape == (frames, 22, 3)
    np.testing.assert_allclose(joints, np.broadcast_to(expected, joints.shape), atol=1e-5)


def test_head_above_pelvis(tmp_path, smpl_dir):
    seq = load_amass_sequence(write_clip(tmp_path / "clip.npz", frames=30))
    joints, _ = amass_to_joints(seq, smpl_dir)
    assert np.all(joints[:, 15, 1] - joints[:, 0, 1] > 0.5)


@pytest.mark.parametrize("frames, expected", [(60, 20), (61, 21), (3, 1)])
def test_resample_60_to_20(tmp_path, smpl_dir, frames, expected):
    seq = load_amass_sequence(write_clip(tmp_path / "clip.npz", frames=frames, fps=60.0))
    joints, fps = amass_to_joints(seq, smpl_dir)
    assert fps == 20.0
    assert len(joints) == expected


def test_resample_keeps_every_third(tmp_path, smpl_dir):
    # The same 60 poses, once declared at 20 fps (kept as they are) and once at 60 fps.
    as_is = load_amass_sequence(write_clip(tmp_path / "as_is.npz", frames=60, fps=20.0))
    at_60 = load_amass_sequence(write_clip(tmp_path / "at_60.npz", frames=60, fps=60.0))
    every_frame, _ = amass_to_joints(as_is, smpl_dir)
    resampled, _ = amass_to_joints(at_60, smpl_dir)
    np.testing.assert_allclose(resampled, every_frame[::3], atol=1e-6)


def test_gender_picks_model(tmp_path, smpl_dir):
    seq = load_amass_sequence(write_clip(tmp_path / "clip.npz", frames=3, fps=20.0, gender=b"female"))
    female, _ = amass_to_joints(seq, smpl_dir)
    neutral, _ = amass_to_joints(seq, smpl_dir, gender="neutral")
    female_height = female[0, 15, 1] - female[0, 7, 1]
    neutral_height = neutral[0, 15, 1] - neutral[0, 7, 1]
    assert np.isclose(female_height, FEMALE_SCALE * neutral_height, rtol=1e-5)


def test_missing_gender_model(tmp_path):
    write_smpl_npz(tmp_path / "models" / "SMPL_NEUTRAL.npz", make_smpl_arrays())
    seq = load_amass_sequence(write_clip(tmp_path / "clip.npz", gender="male"))
    with pytest.raises(FileNotFoundError) as error:
        amass_to_joints(seq, tmp_path / "models")
    assert "gender 'male' not found" in str(error.value)


# --- features and folders ---------------------------------------------------------------------


def test_features_shape(tmp_path, smpl_dir):
    features = amass_to_features(write_clip(tmp_path / "clip.npz", frames=120, fps=60.0), smpl_dir)
    assert features.shape == (39, FEATURE_DIM)
    assert features.dtype == np.float32
    assert np.all(np.isfinite(features))


def test_features_match_humanml3d_axes(tmp_path, smpl_dir):
    # HumanML3D converts Z up with (x, y, z) -> (-x, z, y), a half turn about Y away from ZUP_TO_YUP;
    # the features must not see the difference.
    seq = load_amass_sequence(write_clip(tmp_path / "clip.npz", frames=90, fps=60.0))
    joints, _ = amass_to_joints(seq, smpl_dir)
    half_turn = Rotation.from_euler("y", 180, degrees=True).as_matrix()
    np.testing.assert_allclose(
        joints_to_features(joints @ half_turn.T), joints_to_features(joints), atol=1e-4
    )


def test_build_folder(tmp_path, smpl_dir, caplog):
    src = tmp_path / "amass"
    write_clip(src / "CMU" / "01" / "01_01_poses.npz", frames=60)
    write_clip(src / "KIT" / "3" / "walk_poses.npz", frames=45, fps=30.0, fps_key="mocap_frame_rate")
    write_clip(src / "KIT" / "3" / "no_poses.npz", poses=None)
    write_clip(src / "KIT" / "3" / "one_frame.npz", frames=1)
    write_clip(src / "CMU" / "01" / "shape.npz", poses=None)
    (src / "CMU" / "broken.npz").write_bytes(b"not a zip")
    out = tmp_path / "out"

    with caplog.at_level(logging.WARNING, logger="toau.data.amass"):
        result = build_amass_folder(src, smpl_dir, out)

    assert result.written == ["CMU_01_01_01_poses", "KIT_3_walk_poses"]
    assert sorted(result.skipped) == [str(src / "CMU" / "broken.npz"), str(src / "KIT" / "3" / "no_poses.npz"),
                                      str(src / "KIT" / "3" / "one_frame.npz")]
    assert "key 'poses' missing" in result.skipped[str(src / "KIT" / "3" / "no_poses.npz")]
    assert "skipping" in caplog.text

    features = np.load(out / "new_joint_vecs" / "CMU_01_01_01_poses.npy")
    joints = np.load(out / "new_joints" / "CMU_01_01_01_poses.npy")
    assert features.shape == (19, FEATURE_DIM)
    assert joints.shape == (19, 22, 3)
    np.testing.assert_allclose(joints, features_to_joints(features), atol=1e-6)
    assert np.load(out / "new_joint_vecs" / "KIT_3_walk_poses.npy").shape == (29, FEATURE_DIM)


def test_build_keeps_existing(tmp_path, smpl_dir):
    src, out = tmp_path / "amass", tmp_path / "out"
    write_clip(src / "a_poses.npz", frames=30)
    build_amass_folder(src, smpl_dir, out)
    marker = np.zeros((2, 263), dtype=np.float32)
    np.save(out / "new_joint_vecs" / "a_poses.npy", marker)

    second_run = build_amass_folder(src, smpl_dir, out)
    assert second_run.written == ["a_poses"]
    np.testing.assert_array_equal(np.load(out / "new_joint_vecs" / "a_poses.npy"), marker)
    build_amass_folder(src, smpl_dir, out, overwrite=True)
    assert np.load(out / "new_joint_vecs" / "a_poses.npy").shape == (9, 263)


def test_build_missing_model_folder(tmp_path):
    write_clip(tmp_path / "amass" / "a_poses.npz")
    with pytest.raises(FileNotFoundError) as error:
        build_amass_folder(tmp_path / "amass", tmp_path / "absent", tmp_path / "out")
    assert "SMPL model folder" in str(error.value)


def test_prepare_amass_cli(tmp_path, smpl_dir):
    from toau.cli import main
    from toau.data.prepared import PreparedData

    src = tmp_path / "amass"
    for i in range(10):
        write_clip(src / "CMU" / f"{i:02d}_poses.npz", frames=40 + i)
    out = tmp_path / "prepared"
    code = main(["prepare", "--source", "amass", "--source-dir", str(src), "--smpl-model-dir", str(smpl_dir),
                 "--out", str(out)])
    assert code == 0
    data = PreparedData(out)
    assert [len(data.records(s)) for s in ("train", "val", "test")] == [8, 1, 1]
    mean, std = data.stats()
    assert mean.shape == (FEATURE_DIM,)
    assert all(np.isfinite(f).all() for f in data.features("train"))
