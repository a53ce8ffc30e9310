"""The prepared dataset folder that every later stage reads.

Layout (written by `toau prepare`, the DVC stage `prepare`):

    clips.json                 one record per clip: id, labels, split, frames
    features/{clip_id}.npy     (F-1, 263) float32 HumanML3D features
    joints/{clip_id}.npy       (F, 22, 3) float32 joints at 20 fps, metres, Y up
    Mean.npy, Std.npy          (263,) statistics of the train split
    stats.json                 checksum of Mean/Std and what they were computed from
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from toau.config import PROJECT_ROOT
from toau.motion.humanml3d import FEATURE_DIM, FEATURE_GROUPS

DEFAULT_FOLDER = PROJECT_ROOT / "build" / "data"

# Smallest standard deviation used for normalisation; channels that never change (e.g. a foot
# contact that is always 1 in a tiny split) would otherwise divide by zero.
MIN_STD = 1e-3


def stats_checksum(mean: np.ndarray, std: np.ndarray) -> str:
    """SHA-256 (hex) of the float32 little-endian bytes of mean then std."""
    digest = hashlib.sha256()
    for array in (mean, std):
        digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return digest.hexdigest()


def feature_statistics(features: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (263,) over all rows, the std averaged within each feature group.

    Averaging the std within a group, as HumanML3D does, keeps the relative scale of channels of one
    kind (e.g. the 63 joint positions) after normalisation.
    """
    rows = np.concatenate(features, axis=0).astype(np.float64)
    mean = rows.mean(axis=0)
    std = rows.std(axis=0)
    for group in FEATURE_GROUPS.values():
        std[group] = std[group].mean()
    return mean.astype(np.float32), np.maximum(std, MIN_STD).astype(np.float32)


class PreparedData:
    """Read access to a prepared dataset folder."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else DEFAULT_FOLDER
        manifest = self.folder / "clips.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} not found; run `toau prepare` (or `dvc repro prepare`) first")
        self.clips = json.loads(manifest.read_text())["clips"]

    def records(self, split: str | None = None) -> list[dict]:
        return [c for c in self.clips if split is None or c["split"] == split]

    def features(self, split: str) -> list[np.ndarray]:
        """Features (T, 263) of every clip of a split, in manifest order."""
        return [self.clip_features(c["clip_id"]) for c in self.records(split)]

    def clip_features(self, clip_id: str) -> np.ndarray:
        """Features (T, 263) of one clip."""
        return np.load(self.folder / "features" / f"{clip_id}.npy")

    def joints(self, clip_id: str) -> np.ndarray:
        return np.load(self.folder / "joints" / f"{clip_id}.npy")

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Train-split mean and std (263,), checked against the checksum written with them."""
        mean = np.load(self.folder / "Mean.npy")
        std = np.load(self.folder / "Std.npy")
        expected = json.loads((self.folder / "stats.json").read_text())["sha256"]
        actual = stats_checksum(mean, std)
        if actual != expected:
            raise ValueError(f"Mean/Std in {self.folder} do not match stats.json (sha256 {actual} != {expected}); re-run prepare")
        if mean.shape != (FEATURE_DIM,) or std.shape != (FEATURE_DIM,):
            raise ValueError(f"Mean/Std in {self.folder} have shapes {mean.shape}, {std.shape}; expected ({FEATURE_DIM},)")
        return mean, std
