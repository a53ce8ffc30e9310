"""Loader for HumanML3D-format folders, for users who have HumanML3D (or data processed the same way).

Expected layout (as released by github.com/EricGuo5513/HumanML3D):

    new_joint_vecs/{id}.npy    (T, 263) features
    texts/{id}.txt             one caption per line: "caption#tagged tokens#start#end" (seconds; 0 = whole clip)
    Mean.npy, Std.npy          (263,) dataset statistics
    train.txt, val.txt, test.txt   one id per line
"""

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from toau.data.prepared import stats_checksum
from toau.motion.humanml3d import FEATURE_DIM, features_to_joints

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Caption:
    text: str
    start: float    # seconds; 0 with end 0 means the whole clip
    end: float


def parse_caption_line(line: str) -> Caption:
    """Parse one line of a HumanML3D text file. A line without '#' fields captions the whole clip."""
    parts = line.strip().split("#")
    text = parts[0].strip()
    start = float(parts[2]) if len(parts) > 2 and parts[2].strip() else 0.0
    end = float(parts[3]) if len(parts) > 3 and parts[3].strip() else 0.0
    start = 0.0 if np.isnan(start) else start
    end = 0.0 if np.isnan(end) else end
    return Caption(text, start, end)


class HumanML3DFolder:
    """Read access to a HumanML3D-format folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        missing = [name for name in ("new_joint_vecs", "Mean.npy", "Std.npy") if not (self.root / name).exists()]
        if missing:
            raise FileNotFoundError(f"{self.root} is not a HumanML3D folder: missing {missing}")

    def split_ids(self, split: str) -> list[str]:
        """Return the ids listed in {split}.txt, or every feature file when the list is absent and split is train."""
        path = self.root / f"{split}.txt"
        if path.is_file():
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if split == "train":
            return sorted(p.stem for p in (self.root / "new_joint_vecs").glob("*.npy"))
        return []

    def features(self, clip_id: str) -> np.ndarray:
        features = np.load(self.root / "new_joint_vecs" / f"{clip_id}.npy")
        if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
            raise ValueError(f"{clip_id}: features must be (T, {FEATURE_DIM}), got {features.shape}")
        return features.astype(np.float32)

    def captions(self, clip_id: str) -> list[Caption]:
        path = self.root / "texts" / f"{clip_id}.txt"
        if not path.is_file():
            return []
        return [parse_caption_line(line) for line in path.read_text().splitlines() if line.strip()]

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        return np.load(self.root / "Mean.npy").astype(np.float32), np.load(self.root / "Std.npy").astype(np.float32)


def prepare_humanml3d(src: str | os.PathLike, out_dir: str | os.PathLike, max_clips: int | None = None) -> dict:
    """Write a HumanML3D folder in the prepared layout (toau.data.prepared) and return a summary.

    The folder's own Mean/Std are kept, since models trained on HumanML3D expect them.
    """
    folder = HumanML3DFolder(src)
    out_dir = Path(out_dir)
    (out_dir / "features").mkdir(parents=True, exist_ok=True)
    (out_dir / "joints").mkdir(parents=True, exist_ok=True)

    records, missing = [], []
    for split in SPLITS:
        ids = folder.split_ids(split)[:max_clips]
        for clip_id in tqdm(ids, desc=f"humanml3d {split}", unit="clip"):
            if not (folder.root / "new_joint_vecs" / f"{clip_id}.npy").is_file():
                missing.append(clip_id)
                continue
            features = folder.features(clip_id)
            np.save(out_dir / "features" / f"{clip_id}.npy", features)
            np.save(out_dir / "joints" / f"{clip_id}.npy", features_to_joints(features).astype(np.float32))
            records.append({"clip_id": clip_id, "split": split, "frames": len(features) + 1,
                            "captions": [c.text for c in folder.captions(clip_id)]})
    if missing:
        logger.warning("%d listed clips have no feature file, e.g. %s", len(missing), missing[:3])

    mean, std = folder.stats()
    np.save(out_dir / "Mean.npy", mean)
    np.save(out_dir / "Std.npy", std)
    (out_dir / "stats.json").write_text(json.dumps({"sha256": stats_checksum(mean, std), "split": "source folder"}))

    summary = {
        "source": "humanml3d",
        "fps": 20,
        "splits": {s: {"clips": sum(r["split"] == s for r in records),
                       "frames": sum(r["frames"] for r in records if r["split"] == s)} for s in SPLITS},
        "failed": {clip_id: "no feature file" for clip_id in missing},
    }
    (out_dir / "clips.json").write_text(json.dumps({"summary": summary, "clips": records}, indent=1))
    return summary
