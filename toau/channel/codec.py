"""Edge and cloud ends of the motion channel: motion -> codebook indices -> packet bytes and back.

A tokenizer folder (written by the `tokenizer` stage into build/tokenizer) contains:
  model.safetensors, config.json   the VQ-VAE with its normalisation statistics (`checkpoint`)
  Mean.npy, Std.npy                the same statistics (263,), for readers without torch
  index_model.json                 the range coder's IndexModel, fitted on train-split indices

The packet's codebook hash covers the codebook and the statistics, so a cloud that loaded
another tokenizer rejects the packet instead of decoding it to the wrong motion.
"""

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from toau.channel.entropy import IndexModel
from toau.channel.packet import MotionPacket, PayloadKind, codebook_hash, decode_packet, encode_packet
from toau.io.bvh import read_bvh
from toau.io.joint_map import JointMap
from toau.motion.humanml3d import FEATURE_DIM, joints_to_features
from toau.motion.resample import resample
from toau.skeleton import NUM_JOINTS
from toau.tokenizer.checkpoint import MODEL_FILE, load_checkpoint
from toau.tokenizer.vqvae import VQVAE

INDEX_MODEL_FILE = "index_model.json"
MEAN_FILE = "Mean.npy"
STD_FILE = "Std.npy"
DEFAULT_FPS = 20  # HumanML3D feature rate
DEFAULT_JOINT_MAP = "bandai"  # joint map for BVH input
BVH_SUFFIXES = (".bvh", ".bvh.gz")


class TokenizerNotFoundError(FileNotFoundError):
    """A tokenizer folder that does not exist or lacks the model file."""


@dataclass(eq=False)
class Tokenizer:
    """A trained VQ-VAE with its statistics mean/std (263,) and, optionally, its IndexModel."""

    model: VQVAE
    mean: np.ndarray
    std: np.ndarray
    index_model: IndexModel | None = None
    fps: int = DEFAULT_FPS

    def __post_init__(self):
        if self.model.quantizer is None:
            raise ValueError("the tokenizer model has no codebook (quantize=False); load a VQ-VAE checkpoint")
        self.model.eval()

    @property
    def codebook_size(self) -> int:
        return self.model.config.nb_code

    @property
    def frames_per_index(self) -> int:
        return self.model.config.frames_per_index

    @cached_property
    def hash(self) -> bytes:
        """The 8-byte `codebook_hash` of the codebook and statistics."""
        return codebook_hash(self.model.quantizer.codebook.detach().cpu().numpy(), self.mean, self.std)

    @torch.no_grad()
    def encode(self, features: np.ndarray) -> np.ndarray:
        """Return the indices (T // 4,) int64 of raw (not normalised) features (T, 263)."""
        features = check_features(features, self.frames_per_index)
        normalised = (features - self.mean) / self.std
        indices = self.model.encode(torch.as_tensor(normalised[None], dtype=torch.float32))
        return indices[0].numpy()

    @torch.no_grad()
    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Return raw features (4N, 263) float32 decoded from indices (N,)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        normalised = self.model.decode(torch.as_tensor(indices[None]))[0].numpy()
        return (normalised * self.std + self.mean).astype(np.float32)


def check_features(features: np.ndarray, frames_per_index: int) -> np.ndarray:
    """Return features (T, 263) as float32, raising ValueError for another shape or T < frames_per_index."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
        raise ValueError(f"features have shape {features.shape}; expected (T, {FEATURE_DIM})")
    if len(features) < frames_per_index:
        raise ValueError(
            f"the clip has {len(features)} feature rows (joint frames minus one), which gives 0 indices; "
            f"the tokenizer needs at least {frames_per_index} rows ({frames_per_index + 1} joint frames)"
        )
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features.astype(np.float32)


def load_tokenizer(folder: str | os.PathLike, *, require_index_model: bool = False) -> Tokenizer:
    """Load a tokenizer folder (layout in the module docstring).

    The IndexModel is optional unless require_index_model, because fixed-width packets do not need it.
    """
    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file():
        raise TokenizerNotFoundError(
            f"no tokenizer in {folder} ({MODEL_FILE} not found); train one with `dvc repro tokenizer` "
            "or pass --tokenizer with the folder that the tokenizer stage wrote"
        )
    model, mean, std, _ = load_checkpoint(folder)
    index_path = folder / INDEX_MODEL_FILE
    index_model = IndexModel.load(index_path) if index_path.is_file() else None
    if require_index_model and index_model is None:
        raise TokenizerNotFoundError(
            f"{index_path} not found; range-coded packets need the IndexModel that the tokenizer stage fits"
        )
    return Tokenizer(model, mean, std, index_model)


def bvh_joints(path: str | os.PathLike, joint_map: str = DEFAULT_JOINT_MAP, fps: float = DEFAULT_FPS) -> np.ndarray:
    """Return the 22 SMPL-order joints (F, 22, 3) of a BVH file at `fps`, metres, Y up."""
    motion = read_bvh(path)
    joints = JointMap.get(joint_map).apply(motion.positions(), motion.names)
    return resample(joints, fps=motion.fps, target_fps=fps).astype(np.float32)


def load_motion(path: str | os.PathLike, joint_map: str = DEFAULT_JOINT_MAP) -> np.ndarray:
    """Return raw features (T, 263) of a motion file.

    Accepted inputs: a .npy of features (T, 263), a .npy of joints (F, 22, 3), or a BVH file
    (.bvh or .bvh.gz). Joints are in metres at 20 fps with Y up and give F - 1 feature rows.
    `joint_map` maps the BVH skeleton to the 22 joints.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"motion file {path} not found")
    if path.name.lower().endswith(BVH_SUFFIXES):
        return joints_to_features(bvh_joints(path, joint_map))
    if path.suffix.lower() != ".npy":
        raise ValueError(f"{path} is neither a .npy array nor a .bvh file")

    array = np.load(path)
    if array.ndim == 2 and array.shape[1] == FEATURE_DIM:
        return array.astype(np.float32)
    if array.ndim == 3 and array.shape[1:] == (NUM_JOINTS, 3):
        if len(array) < 2:
            raise ValueError(f"{path} has {len(array)} joint frame(s); features need at least 2")
        return joints_to_features(array.astype(np.float32))
    raise ValueError(
        f"{path} has shape {array.shape}; expected features (T, {FEATURE_DIM}) or joints (F, {NUM_JOINTS}, 3)"
    )


def encode_motion(tokenizer: Tokenizer, features: np.ndarray, *, entropy: bool = False) -> bytes:
    """Return the packet bytes of raw features (T, 263): T // 4 indices, fixed-width or range-coded."""
    indices = tokenizer.encode(features)
    return packet_bytes(tokenizer, indices, len(features), entropy=entropy)


def packet_bytes(tokenizer: Tokenizer, indices: np.ndarray, frame_count: int, *, entropy: bool = False) -> bytes:
    """Return the packet of indices (N,) covering frame_count feature rows (4N to 4N + 3)."""
    if entropy and tokenizer.index_model is None:
        raise ValueError("range-coded packets need the tokenizer's IndexModel, but none was loaded")
    packet = MotionPacket(
        indices=indices,
        fps=tokenizer.fps,
        frame_count=frame_count,
        codebook_size=tokenizer.codebook_size,
        codebook_hash=tokenizer.hash,
        frames_per_index=tokenizer.frames_per_index,
        payload_kind=PayloadKind.ENTROPY if entropy else PayloadKind.FIXED,
    )
    return encode_packet(packet, model=tokenizer.index_model)


def read_packet(tokenizer: Tokenizer, data: bytes) -> MotionPacket:
    """Check packet bytes against the tokenizer and return the packet.

    Raises CodebookMismatchError when the packet names another codebook hash, and the
    other `PacketError` subclasses for corrupt bytes.
    """
    packet = decode_packet(data, expected_hash=tokenizer.hash, model=tokenizer.index_model)
    if packet.codebook_size != tokenizer.codebook_size or packet.frames_per_index != tokenizer.frames_per_index:
        raise ValueError(
            f"packet has K = {packet.codebook_size} and {packet.frames_per_index} frames per index, "
            f"but the tokenizer has K = {tokenizer.codebook_size} and {tokenizer.frames_per_index}"
        )
    return packet


def decode_motion(tokenizer: Tokenizer, data: bytes) -> tuple[np.ndarray, MotionPacket]:
    """Return the raw features (4N, 263) decoded from packet bytes, and the packet."""
    packet = read_packet(tokenizer, data)
    return tokenizer.decode(packet.indices), packet
