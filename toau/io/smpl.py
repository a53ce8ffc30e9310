"""SMPL body model: load user-provided model files and turn SMPL parameters into joints.

SMPL model files need a licence and are not shipped: download "SMPL for Python" from
https://smpl.is.tue.mpg.de (registration required) and name the files SMPL_NEUTRAL.pkl,
SMPL_MALE.pkl and SMPL_FEMALE.pkl. Joints stay in the SMPL coordinate frame (Y up, the rest pose
faces +Z, metres); axis conversions belong to the callers.
"""

import contextlib
import io
import logging
import pickle
from pathlib import Path

import numpy as np
import smplx
import torch
from smplx.utils import Struct

from toau.skeleton import NUM_JOINTS

log = logging.getLogger(__name__)

SMPL_DOWNLOAD_HINT = (
    "SMPL model files need a licence and are not shipped with TOAU: register at "
    "https://smpl.is.tue.mpg.de, download 'SMPL for Python' and rename its .pkl files to "
    "SMPL_NEUTRAL.pkl, SMPL_MALE.pkl and SMPL_FEMALE.pkl"
)
GENDERS = ("neutral", "male", "female")
DEFAULT_NUM_BETAS = 10
# smplx skins every vertex even when only joints are needed, so memory grows by about 1.2-2 MB per
# frame in a chunk (the (frames, 6890, 4, 4) per-vertex transforms dominate). Measured peak growth:
# 136 MB for 64 frames, 363 MB for 256, with no speed loss at 64 (1024 frames, CPU, 1 thread).
DEFAULT_CHUNK_SIZE = 64

SMPL_NUM_VERTICES = 6890
SMPL_NUM_JOINTS = 24  # 22 body joints plus the two hand joints
SMPL_NUM_POSE_BASIS = 9 * (SMPL_NUM_JOINTS - 1)  # 207 pose blend shapes

# Pickled SMPL files hold chumpy, numpy and scipy.sparse objects, and Python 2 pickles name
# builtins as __builtin__ and copy_reg. Any other class is rejected: a check that the file is a
# model, not a sandbox, so load only model files you trust.
_PICKLE_GLOBALS = {
    ("builtins", "object"), ("builtins", "set"), ("__builtin__", "object"), ("__builtin__", "set"),
    ("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"), ("_codecs", "encode"),
}


# --- finding the model file -------------------------------------------------------------------


def _candidate_paths(model_dir: Path, gender: str) -> list[Path]:
    """List the files smplx layouts allow: model_dir/smpl/SMPL_G.ext (smplx.create), model_dir/SMPL_G.ext."""
    stem = f"SMPL_{gender.upper()}"
    folders = (model_dir / "smpl", model_dir)
    return [folder / f"{stem}{ext}" for folder in folders for ext in (".pkl", ".npz")]


def find_smpl_file(model_dir: str | Path, gender: str = "neutral") -> Path:
    """Return the SMPL model file for `gender` under `model_dir`, or `model_dir` itself if it is a file.

    Raises FileNotFoundError that lists every path tried and how to get the files.
    """
    gender = _check_gender(gender)
    model_dir = Path(model_dir).expanduser()
    if model_dir.is_file():
        return model_dir

    candidates = _candidate_paths(model_dir, gender)
    tried = "\n  ".join(str(path) for path in candidates)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"SMPL model folder {model_dir} not found; expected SMPL_{gender.upper()}.pkl or .npz "
            f"at one of:\n  {tried}\n{SMPL_DOWNLOAD_HINT}"
        )
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"SMPL model file for gender {gender!r} not found in {model_dir}; tried:\n  {tried}\n"
        f"{SMPL_DOWNLOAD_HINT}"
    )


def _check_gender(gender: str) -> str:
    normalized = str(gender).strip().lower()
    if normalized not in GENDERS:
        raise ValueError(f"invalid SMPL gender {gender!r}; expected one of {GENDERS}")
    return normalized


# --- reading the model file -------------------------------------------------------------------


class _ChumpyObject:
    """Stand-in for a chumpy object in a model pickle, so that chumpy need not be installed.

    chumpy 0.70 fails to import with numpy >= 1.24, which removed the numpy.bool-style aliases it
    imports. A plain `Ch` array keeps its values in state['x'].
    """

    chumpy_class = "chumpy"

    def __setstate__(self, state):
        self.state = state


class _ModelUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        package = module.split(".")[0]
        if package == "chumpy":
            return type(name, (_ChumpyObject,), {"chumpy_class": f"{module}.{name}"})
        # Pickles name the private module of a sparse class, e.g. scipy.sparse.csc (scipy < 1.8).
        if module.startswith("scipy.sparse."):
            module = "scipy.sparse"
        if package == "numpy" or module == "scipy.sparse" or (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in an SMPL model pickle")


def _to_array(path: Path, key: str, value) -> np.ndarray:
    """Convert one model entry (ndarray, scipy sparse matrix or chumpy `Ch`) to a dense array."""
    if isinstance(value, _ChumpyObject):
        if value.chumpy_class != "chumpy.ch.Ch" or "x" not in value.state:
            raise ValueError(
                f"{path}: {key!r} is a chumpy {value.chumpy_class} expression that needs chumpy to "
                "evaluate; re-save the model with plain numpy arrays"
            )
        value = value.state["x"]
    if hasattr(value, "toarray"):
        value = value.toarray()
    return np.asarray(value)


def _expected_shapes(num_vertices: int) -> dict[str, tuple]:
    """Shapes of the entries smplx.SMPL reads; None is any size >= 1."""
    return {
        "v_template": (num_vertices, 3),
        "shapedirs": (num_vertices, 3, None),
        "posedirs": (num_vertices, 3, SMPL_NUM_POSE_BASIS),
        "J_regressor": (SMPL_NUM_JOINTS, num_vertices),
        "kintree_table": (2, SMPL_NUM_JOINTS),
        "weights": (num_vertices, SMPL_NUM_JOINTS),
        "f": (None, 3),
    }


def _read_model_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read the arrays smplx.SMPL needs from a .pkl or .npz SMPL file and check their shapes."""
    expected = _expected_shapes(SMPL_NUM_VERTICES)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                raw = {key: archive[key] for key in expected if key in archive.files}
        else:
            with open(path, "rb") as f:
                # latin1 decodes the Python 2 pickles that the SMPL website distributes.
                raw = _ModelUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, ValueError, ImportError, AttributeError, pickle.UnpicklingError) as error:
        raise ValueError(f"SMPL model file {path} could not be read ({error}); {SMPL_DOWNLOAD_HINT}") from error

    if not isinstance(raw, dict):
        raise ValueError(f"SMPL model file {path} contains a {type(raw).__name__}, expected a dict of arrays")
    missing = [key for key in expected if key not in raw]
    if missing:
        raise ValueError(f"SMPL model file {path} lacks keys {missing}; keys present: {sorted(raw)}")

    arrays = {key: _to_array(path, key, raw[key]) for key in expected}
    for key, shape in expected.items():
        actual = arrays[key].shape
        matches = len(actual) == len(shape) and all(e is None or a == e for a, e in zip(actual, shape))
        if not matches or 0 in actual:
            wanted = tuple("N" if e is None else e for e in shape)
            raise ValueError(f"SMPL model file {path}: {key!r} has shape {actual}, expected {wanted}")
    return arrays


def load_smpl_model(
    model_dir: str | Path, gender: str = "neutral", num_betas: int = DEFAULT_NUM_BETAS
) -> smplx.SMPL:
    """Load an SMPL body model on the CPU, in eval mode.

    model_dir: a folder in either smplx layout, each with .pkl or .npz files:
      - `model_dir/smpl/SMPL_NEUTRAL.pkl`, the layout `smplx.create` expects;
      - `model_dir/SMPL_NEUTRAL.pkl`, the layout `smplx.SMPL` expects.
    It may also be the path of one model file. Then that file is loaded and `gender` only labels it.
    num_betas: shape coefficients used; smplx caps it at 10 when the file has fewer than 300.
    Pickles that contain chumpy arrays (the SMPL website's files) load without chumpy installed.
    Raises FileNotFoundError naming the paths tried, ValueError for an unreadable or malformed file.
    """
    gender = _check_gender(gender)
    path = find_smpl_file(model_dir, gender)
    arrays = _read_model_arrays(path)

    # smplx prints a warning about 10 shape coefficients to stdout, where it would mix into CLI output.
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        model = smplx.SMPL(str(path), data_struct=Struct(**arrays), gender=gender, num_betas=num_betas)
    if printed.getvalue().strip():
        log.debug("smplx: %s", printed.getvalue().strip())
    log.info("loaded SMPL model %s (gender %s, %d betas)", path, gender, model.num_betas)
    return model.eval()


# --- parameters to joints ---------------------------------------------------------------------


def _as_frames(name: str, value, num_frames: int, shapes: tuple[tuple, ...]) -> np.ndarray:
    """Broadcast a per-sequence value to (num_frames, *shape), or check a per-frame one."""
    array = np.asarray(value, dtype=np.float32)
    for shape in shapes:
        if array.shape == shape:
            return np.broadcast_to(array, (num_frames, *shape))
        if array.shape == (num_frames, *shape):
            return array
    forms = " or ".join(f"{shape} / ({num_frames}, {', '.join(map(str, shape))})" for shape in shapes)
    raise ValueError(f"{name} has shape {array.shape}, expected {forms} for {num_frames} frames")


def _split_pose(body_pose, global_orient) -> tuple[np.ndarray, np.ndarray, bool]:
    """Return (global_orient, body_pose, is_axis_angle) in the layout smplx.SMPL.forward takes.

    Axis-angle: global (F, 3), body (F, 69). Rotation matrices: global (F, 1, 3, 3), body (F, 23, 3, 3).
    """
    pose = np.asarray(body_pose, dtype=np.float32)
    num_frames = len(pose) if pose.ndim else 0
    rest = pose.shape[1:]
    full = SMPL_NUM_JOINTS

    if global_orient is None:
        if rest in ((full * 3,), (full, 3)):
            pose = pose.reshape(num_frames, full * 3)
            return pose[:, :3], pose[:, 3:], True
        if rest == (full, 3, 3):
            return pose[:, :1], pose[:, 1:], False
        raise ValueError(
            f"body_pose has shape {pose.shape}; without global_orient expected (F, 72) or (F, 24, 3) "
            "axis-angle, or (F, 24, 3, 3) rotation matrices, global orientation first"
        )

    orient = np.asarray(global_orient, dtype=np.float32)
    if rest in (((full - 1) * 3,), (full - 1, 3)):
        orient = _as_frames("global_orient", orient, num_frames, ((3,),))
        return orient, pose.reshape(num_frames, (full - 1) * 3), True
    if rest == (full - 1, 3, 3):
        orient = _as_frames("global_orient", orient, num_frames, ((3, 3), (1, 3, 3)))
        return orient.reshape(num_frames, 1, 3, 3), pose, False
    raise ValueError(
        f"body_pose has shape {pose.shape}; with global_orient expected (F, 69) or (F, 23, 3) axis-angle, "
        "or (F, 23, 3, 3) rotation matrices"
    )


def smpl_to_joints(
    model: smplx.SMPL,
    body_pose,
    betas=None,
    global_orient=None,
    transl=None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Run the SMPL model on F frames and return the first 22 joints (F, 22, 3), float32 metres.

    Pose forms (axis-angle in radians, rotations act on column vectors):
      - global_orient=None: body_pose (F, 72) or (F, 24, 3) axis-angle, or (F, 24, 3, 3)
        rotation matrices, with the global orientation as joint 0;
      - global_orient given: body_pose (F, 69) or (F, 23, 3) with global_orient (3,) or (F, 3),
        or body_pose (F, 23, 3, 3) with global_orient (3, 3), (F, 3, 3) or (F, 1, 3, 3).
    betas: (B,) for the whole sequence or (F, B), B <= model.num_betas (missing ones are zero);
    None is the mean shape. transl: (3,) or (F, 3) metres; None is zero.
    Frames run through the model `chunk_size` at a time to bound memory.
    """
    if getattr(model, "NUM_BODY_JOINTS", None) != SMPL_NUM_JOINTS - 1:
        raise ValueError(f"expected an smplx.SMPL model with 23 body joints, got {type(model).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")

    orient, pose, is_axis_angle = _split_pose(body_pose, global_orient)
    num_frames = len(pose)
    if num_frames == 0:
        raise ValueError("body_pose has no frames; expected at least one")
    betas = _frame_betas(betas, num_frames, model.num_betas)
    transl = _as_frames("transl", np.zeros(3) if transl is None else transl, num_frames, ((3,),))

    chunks = []
    with torch.inference_mode():
        for start in range(0, num_frames, chunk_size):
            part = slice(start, start + chunk_size)
            output = model(
                betas=torch.tensor(betas[part]),
                body_pose=torch.tensor(pose[part]),
                global_orient=torch.tensor(orient[part]),
                transl=torch.tensor(transl[part]),
                pose2rot=is_axis_angle,
                return_verts=False,
            )
            chunks.append(output.joints[:, :NUM_JOINTS].numpy())
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _frame_betas(betas, num_frames: int, num_betas: int) -> np.ndarray:
    """Return (F, num_betas) shape coefficients, zero-padding shorter vectors."""
    if betas is None:
        return np.zeros((num_frames, num_betas), dtype=np.float32)
    betas = np.asarray(betas, dtype=np.float32)
    if betas.ndim not in (1, 2) or (betas.ndim == 2 and len(betas) != num_frames):
        raise ValueError(f"betas has shape {betas.shape}, expected (B,) or ({num_frames}, B)")
    if betas.shape[-1] > num_betas:
        raise ValueError(
            f"betas has {betas.shape[-1]} coefficients but the model uses {num_betas}; pass "
            f"betas[..., :{num_betas}] or load the model with num_betas={betas.shape[-1]}"
        )
    padded = np.zeros((*betas.shape[:-1], num_betas), dtype=np.float32)
    padded[..., : betas.shape[-1]] = betas
    return np.broadcast_to(padded, (num_frames, num_betas))
