"""AMASS motion files (.npz of SMPL parameters, Z up) -> joints (F, 22, 3) Y up at 20 fps -> features.

An AMASS file contains:
  - `poses` (F, 156) for SMPL+H or (F, 72) for SMPL, axis-angle. The first 66 values (global
    orientation, then body joints 1..21) place the 22 joints used here;
  - `trans` (F, 3) metres and `betas` (16,) or (10,);
  - the capture rate, under `mocap_framerate` or, in later releases, `mocap_frame_rate`;
  - `gender`.
Joints come from the user's SMPL model files (`toau.io.smpl`).
"""

import functools
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from toau.io.smpl import find_smpl_file, load_smpl_model, smpl_to_joints
from toau.motion.humanml3d import features_to_joints, joints_to_features
from toau.motion.resample import resample

log = logging.getLogger(__name__)

TARGET_FPS = 20.0
FRAME_RATE_KEYS = ("mocap_framerate", "mocap_frame_rate")
# Global orientation (3) plus 21 body joints (63): the rotations that place joints 0..21.
BODY_POSE_WIDTH = 66
# Per-subject body shape files in AMASS: betas and gender only, no motion.
SHAPE_FILE_NAME = "shape.npz"

# Rotation by -90 degrees about X, applied as joints @ ZUP_TO_YUP.T: (x, y, z) -> (x, z, -y), so
# AMASS's +Z up becomes +Y up and the frame stays right-handed (determinant +1).
# NOTE: HumanML3D's own conversion, (x, y, z) -> (-x, z, y), differs from this by a 180 degree turn
# about the vertical; the features put the first frame at the origin facing +Z, which removes it.
ZUP_TO_YUP = np.array([
    [1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0],
    [0.0, -1.0, 0.0],
])


@dataclass(frozen=True)
class AmassSequence:
    """One AMASS clip: SMPL parameters in AMASS's Z-up world frame."""

    path: Path
    poses: np.ndarray   # (F, 66) axis-angle: global orientation, then body joints 1..21
    trans: np.ndarray   # (F, 3) metres
    betas: np.ndarray   # (B,) shape coefficients
    fps: float
    gender: str         # "neutral", "male" or "female"

    @property
    def num_frames(self) -> int:
        return len(self.poses)


@dataclass
class AmassBuildResult:
    """Output of build_amass_folder: names written and source files skipped, with the reason."""

    written: list[str]
    skipped: dict[str, str]


# --- reading ----------------------------------------------------------------------------------


def _read_gender(value) -> str:
    """Decode the gender entry, stored as a str, bytes or 0-d array of either."""
    value = np.asarray(value)
    value = value.item() if value.size == 1 else value
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"gender must be a string, got {value!r}")
    return value.strip().lower()


def _read_fps(archive, path: Path) -> float:
    for key in FRAME_RATE_KEYS:
        if key in archive.files:
            return float(archive[key])
    raise ValueError(
        f"{path}: frame rate missing; expected key {FRAME_RATE_KEYS[0]!r} or {FRAME_RATE_KEYS[1]!r}, "
        f"keys present: {sorted(archive.files)}"
    )


def load_amass_sequence(path: str | Path) -> AmassSequence:
    """Read an AMASS .npz clip; raises ValueError naming the file and the missing or malformed key."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as archive:
        keys = sorted(archive.files)
        for key in ("poses", "trans"):
            if key not in keys:
                raise ValueError(f"{path}: key {key!r} missing; keys present: {keys}")
        poses = np.asarray(archive["poses"], dtype=np.float64)
        trans = np.asarray(archive["trans"], dtype=np.float64)
        betas = np.asarray(archive["betas"], dtype=np.float64).reshape(-1) if "betas" in keys else np.zeros(0)
        fps = _read_fps(archive, path)
        gender = _read_gender(archive["gender"]) if "gender" in keys else "neutral"

    if poses.ndim != 2 or poses.shape[1] < BODY_POSE_WIDTH:
        raise ValueError(f"{path}: poses has shape {poses.shape}, expected (F, >= {BODY_POSE_WIDTH})")
    if trans.shape != (len(poses), 3):
        raise ValueError(f"{path}: trans has shape {trans.shape}, expected ({len(poses)}, 3) to match poses")
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"{path}: frame rate {fps} is invalid; expected a positive number")
    return AmassSequence(path, poses[:, :BODY_POSE_WIDTH], trans, betas, fps, gender)


# --- conversion -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _cached_model(model_file: Path, gender: str):
    return load_smpl_model(model_file, gender)


def amass_to_joints(
    seq: AmassSequence, model_dir: str | Path, gender: str | None = None
) -> tuple[np.ndarray, float]:
    """SMPL joints of a clip, Y up, resampled by time: returns (joints (F', 22, 3) float32 metres, 20.0).

    gender: the SMPL model to use; None takes the clip's own gender. The model is loaded once per
    file and gender and then reused.
    """
    gender = gender or seq.gender
    model = _cached_model(find_smpl_file(model_dir, gender), gender)

    # SMPL's two hand joints (22, 23) move no joint below 22, so they stay at rest.
    hand_rest = np.zeros((seq.num_frames, 6))
    pose = np.concatenate([seq.poses, hand_rest], axis=1)
    # NOTE: AMASS fits SMPL+H with 16 betas; the SMPL model uses only its first model.num_betas.
    betas = seq.betas[: model.num_betas]
    joints = smpl_to_joints(model, pose, betas=betas, transl=seq.trans)

    joints = joints @ ZUP_TO_YUP.T.astype(np.float32)
    joints = resample(joints, fps=seq.fps, target_fps=TARGET_FPS)
    return joints.astype(np.float32), TARGET_FPS


def amass_to_features(path: str | Path, model_dir: str | Path, gender: str | None = None) -> np.ndarray:
    """HumanML3D features of an AMASS clip: (F'-1, 263) float32 for F' frames at 20 fps."""
    joints, _ = amass_to_joints(load_amass_sequence(path), model_dir, gender)
    return joints_to_features(joints)


# --- folders ----------------------------------------------------------------------------------


def _output_name(path: Path, src_dir: Path) -> str:
    """Flat output name from the path below src_dir: CMU/01/01_01_poses.npz -> CMU_01_01_01_poses."""
    return "_".join(path.relative_to(src_dir).with_suffix("").parts)


# Errors that mark one bad input file; anything else stops the whole build.
_FILE_ERRORS = (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile)


def build_amass_folder(
    src_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    gender: str | None = None,
    overwrite: bool = False,
) -> AmassBuildResult:
    """Convert every AMASS .npz under src_dir to HumanML3D-style files in out_dir.

    Writes new_joint_vecs/NAME.npy (F'-1, 263) features and new_joints/NAME.npy (F'-1, 22, 3), the
    joints recovered from those features (facing +Z, first pelvis at the origin), both float32.
    NAME is the path below src_dir joined by "_". Files that fail are logged and skipped;
    existing outputs are kept unless `overwrite`.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"AMASS folder {src_dir} not found")
    if not Path(model_dir).expanduser().exists():
        raise FileNotFoundError(f"SMPL model folder {model_dir} not found; see toau.io.smpl for the layout")
    joints_dir, features_dir = out_dir / "new_joints", out_dir / "new_joint_vecs"
    joints_dir.mkdir(parents=True, exist_ok=True)
    features_dir.mkdir(parents=True, exist_ok=True)

    sources = sorted(p for p in src_dir.rglob("*.npz") if p.name != SHAPE_FILE_NAME)
    result = AmassBuildResult(written=[], skipped={})
    sources_by_name: dict[str, Path] = {}
    for path in tqdm(sources, desc="AMASS", unit="file"):
        name = _output_name(path, src_dir)
        if name in sources_by_name:
            _skip(result, path, f"output name {name} already used by {sources_by_name[name]}")
            continue
        sources_by_name[name] = path

        joints_file, features_file = joints_dir / f"{name}.npy", features_dir / f"{name}.npy"
        if not overwrite and joints_file.is_file() and features_file.is_file():
            log.debug("keeping existing %s", name)
            result.written.append(name)
            continue
        try:
            features = amass_to_features(path, model_dir, gender)
        except _FILE_ERRORS as error:
            _skip(result, path, str(error))
            continue
        np.save(features_file, features)
        np.save(joints_file, features_to_joints(features).astype(np.float32))
        result.written.append(name)

    log.info("AMASS: %d written, %d skipped, into %s", len(result.written), len(result.skipped), out_dir)
    return result


def _skip(result: AmassBuildResult, path: Path, reason: str) -> None:
    log.warning("skipping %s: %s", path, reason)
    result.skipped[str(path)] = reason


def prepare_amass(
    src_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    gender: str | None = None,
    split_seed: int = 0,
    split_fractions=(0.8, 0.1, 0.1),
    max_clips: int | None = None,
) -> dict:
    """AMASS folder -> prepared dataset (toau.data.prepared layout), through a HumanML3D-style folder.

    The HumanML3D-style files go to out_dir/humanml3d; clips are split at random with `split_seed`
    (AMASS has no official split) and Mean/Std come from the train split.
    """
    from toau.data.humanml3d import prepare_humanml3d
    from toau.data.prepared import feature_statistics

    out_dir = Path(out_dir)
    built = out_dir / "humanml3d"
    result = build_amass_folder(src_dir, model_dir, built, gender=gender)
    names = sorted(p.stem for p in (built / "new_joint_vecs").glob("*.npy"))
    if not names:
        raise ValueError(f"no AMASS clip in {src_dir} could be converted; skipped: {result.skipped}")

    order = np.random.default_rng(split_seed).permutation(len(names))
    bounds = np.cumsum(np.asarray(split_fractions) * len(names)).round().astype(int)
    splits = {"train": order[:bounds[0]], "val": order[bounds[0]:bounds[1]], "test": order[bounds[1]:]}
    for split, indices in splits.items():
        (built / f"{split}.txt").write_text("".join(f"{names[i]}\n" for i in sorted(indices)))

    train = [np.load(built / "new_joint_vecs" / f"{names[i]}.npy") for i in splits["train"]]
    mean, std = feature_statistics(train or [np.load(built / "new_joint_vecs" / f"{names[0]}.npy")])
    np.save(built / "Mean.npy", mean)
    np.save(built / "Std.npy", std)

    summary = prepare_humanml3d(built, out_dir, max_clips=max_clips)
    summary["source"] = "amass"
    summary["failed"].update({str(k): v for k, v in result.skipped.items()})
    return summary
