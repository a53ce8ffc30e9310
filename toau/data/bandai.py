"""Bandai-Namco Research Motion Dataset: clip discovery, labels, splits and the feature cache.

Upstream: github.com/BandaiNamcoResearchInc/Bandai-Namco-Research-Motiondataset (CC BY-NC 4.0).
Expected layout under the data root (BVH files may be gzip-compressed):

    bandai/Bandai-Namco-Research-Motiondataset-{1,2}/data/dataset-N_{content}_{style}_{take}.bvh[.gz]
    bandai/Bandai-Namco-Research-Motiondataset-{1,2}/data/dataset-N_{content}_{style}_{take}.json
    bandai/Bandai-Namco-Research-Motiondataset-{1,2}/cfg/{content,style}_label.txt
"""

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from toau.io.bvh import read_bvh
from toau.io.joint_map import JointMap
from toau.motion.humanml3d import joints_to_features
from toau.motion.resample import resample

logger = logging.getLogger(__name__)

SUBSETS = ("Bandai-Namco-Research-Motiondataset-1", "Bandai-Namco-Research-Motiondataset-2")
SPLITS = ("train", "val", "test")
_NAME = re.compile(r"^dataset-(?P<dataset>\d+)_(?P<content>[a-z-]+)_(?P<style>[a-z-]+)_(?P<take>\d+)\.bvh(\.gz)?$")


@dataclass(frozen=True)
class Clip:
    """One Bandai motion clip and its labels."""

    clip_id: str        # file name without extension, e.g. dataset-2_walk_normal_001
    path: str
    dataset: int        # 1 or 2
    content: str        # action, e.g. "walk-turn-left"
    style: str          # manner, e.g. "elderly"
    take: int
    content_id: int     # from the JSON beside the clip, -1 where absent
    style_id: int


def _read_labels(path: Path) -> list[str]:
    if not path.is_file():
        return []
    prefix = re.compile(r"^dataset-\d+_")
    return [prefix.sub("", line.strip()) for line in path.read_text().splitlines() if line.strip()]


def find_clips(bandai_root: str | os.PathLike) -> list[Clip]:
    """List every clip under `bandai_root` (the folder holding the two dataset folders), sorted by id.

    Labels come from the file name; the JSON ids beside each clip are checked against the label
    lists in `cfg/`, and a disagreement raises.
    """
    bandai_root = Path(bandai_root)
    clips = []
    for subset in SUBSETS:
        data_dir = bandai_root / subset / "data"
        if not data_dir.is_dir():
            continue
        contents = _read_labels(bandai_root / subset / "cfg" / "content_label.txt")
        styles = _read_labels(bandai_root / subset / "cfg" / "style_label.txt")
        for path in sorted(data_dir.iterdir()):
            match = _NAME.match(path.name)
            if not match:
                continue
            clip_id = path.name.split(".bvh")[0]
            content_id = style_id = -1
            label_file = path.with_name(clip_id + ".json")
            if label_file.is_file():
                labels = json.loads(label_file.read_text())
                content_id, style_id = int(labels["content"]), int(labels["style"])
                for kind, ids, names, value in (("content", content_id, contents, match["content"]),
                                                ("style", style_id, styles, match["style"])):
                    if names and not (0 <= ids < len(names) and names[ids] == value):
                        raise ValueError(f"{label_file}: {kind} id {ids} does not name {value!r} in cfg/{kind}_label.txt")
            clips.append(Clip(clip_id, str(path), int(match["dataset"]), match["content"], match["style"],
                              int(match["take"]), content_id, style_id))
    if not clips:
        raise FileNotFoundError(
            f"no Bandai clips under {bandai_root}; expected {SUBSETS[0]}/data/*.bvh[.gz] (see README, 'Data')"
        )
    return clips


def assign_splits(clips: list[Clip], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, str]:
    """Deterministic split by take, stratified by content and style: clip id -> "train" | "val" | "test".

    Within each (dataset, content) group the takes of every style are shuffled with `seed`, then
    interleaved style by style in a shuffled style order, and each position goes to the split
    furthest below its quota.
    So every split gets each style in proportion; a content with a single clip stays in train.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"split fractions must be 3 values summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)

    groups: dict[tuple[int, str], dict[str, list[Clip]]] = {}
    for clip in sorted(clips, key=lambda c: c.clip_id):
        groups.setdefault((clip.dataset, clip.content), {}).setdefault(clip.style, []).append(clip)

    assignment = {}
    for key in sorted(groups):
        by_style = groups[key]
        # Shuffled style order, so that groups with one take per style (dataset 1) do not always
        # send the same styles to val and test.
        styles = [str(s) for s in rng.permutation(sorted(by_style))]
        queues = [list(rng.permutation(by_style[s])) for s in styles]
        order = []
        while any(queues):
            for queue in queues:
                if queue:
                    order.append(queue.pop(0))
        counts = np.zeros(3)
        for position, clip in enumerate(order):
            deficit = fractions * (position + 1) - counts
            split = int(np.argmax(deficit))
            counts[split] += 1
            assignment[clip.clip_id] = SPLITS[split]
    return assignment


def clip_joints(clip: Clip, joint_map: JointMap | None = None, fps: float = 20.0) -> np.ndarray:
    """22 SMPL-order joints of a clip at `fps`, metres, Y up: (F, 22, 3)."""
    motion = read_bvh(clip.path)
    joint_map = joint_map or JointMap.get("bandai")
    joints = joint_map.apply(motion.positions(), motion.names)
    return resample(joints, fps=motion.fps, target_fps=fps).astype(np.float32)


def process_clip(clip: Clip, fps: float = 20.0) -> dict[str, np.ndarray]:
    """Joints (F, 22, 3) and HumanML3D features (F-1, 263) of one clip."""
    joints = clip_joints(clip, fps=fps)
    return {"joints": joints, "features": joints_to_features(joints)}


def clip_record(clip: Clip, split: str) -> dict:
    """Manifest entry of a clip; the path is kept relative to the dataset folder so that it is portable."""
    record = asdict(clip)
    record["path"] = str(Path(clip.path).relative_to(Path(clip.path).parents[2]))
    record["split"] = split
    return record


def load_split_features(split: str, folder: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Features (T, 263) of every prepared clip of a split; see toau.data.prepared."""
    from toau.data.prepared import PreparedData
    return PreparedData(folder).features(split)


def load_stats(folder: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train-split normalisation statistics (mean, std), each (263,)."""
    from toau.data.prepared import PreparedData
    return PreparedData(folder).stats()
