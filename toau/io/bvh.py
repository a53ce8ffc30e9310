"""BVH motion capture files: parser and forward kinematics.

Handles `End Site`, joints with 3 or 6 channels, any Euler channel order, and plain or gzip files.
Rotations apply in the order the channels list them (intrinsic), so "Zrotation Xrotation Yrotation"
gives R = Rz Rx Ry. Where a joint has position channels, they replace its OFFSET as the local
translation, which is how the Bandai-Namco and most exporters write them.
"""

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toau.motion.quaternion import euler_to_matrix

# BVH files carry no unit; centimetres are the common choice (Bandai-Namco, Mixamo exports).
DEFAULT_UNIT_SCALE = 0.01

_POSITION_CHANNELS = ("Xposition", "Yposition", "Zposition")
_ROTATION_CHANNELS = ("Xrotation", "Yrotation", "Zrotation")


class BVHError(ValueError):
    """A BVH file that cannot be parsed."""


@dataclass
class BVHJoint:
    name: str
    parent: int                 # index into BVHMotion.joints, -1 for the root
    offset: np.ndarray          # (3,) in file units
    channels: tuple[str, ...]
    channel_start: int          # first column of this joint in the motion matrix
    is_end_site: bool = False


@dataclass
class BVHMotion:
    """A parsed BVH file. `values` (F, C) contains the raw channel values in file units and degrees."""

    joints: list[BVHJoint]
    values: np.ndarray
    frame_time: float
    path: str = ""

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.joints if not j.is_end_site]

    def positions(self, unit_scale: float = DEFAULT_UNIT_SCALE, include_end_sites: bool = False) -> np.ndarray:
        """Global joint positions (F, J, 3), multiplied by `unit_scale` (0.01 turns centimetres into metres)."""
        return forward_kinematics(self, include_end_sites=include_end_sites) * unit_scale


def _read_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BVH file {path} not found")
    with open(path, "rb") as f:
        magic = f.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def _parse_hierarchy(lines: list[str], source: str) -> tuple[list[BVHJoint], int]:
    """Parse from HIERARCHY to MOTION; return the joints and the index of the MOTION line."""
    joints: list[BVHJoint] = []
    stack: list[int] = []
    channel_count = 0
    pending: BVHJoint | None = None

    for number, line in enumerate(lines):
        tokens = line.split()
        if not tokens:
            continue
        keyword = tokens[0]
        where = f"{source}, line {number + 1}"

        if keyword == "HIERARCHY":
            continue
        if keyword == "MOTION":
            if stack:
                raise BVHError(f"{where}: MOTION before the hierarchy's braces are closed")
            if not joints:
                raise BVHError(f"{where}: no ROOT joint before MOTION")
            return joints, number
        if keyword in ("ROOT", "JOINT"):
            if len(tokens) < 2:
                raise BVHError(f"{where}: {keyword} without a name")
            if keyword == "JOINT" and not stack:
                raise BVHError(f"{where}: JOINT {tokens[1]} outside any ROOT")
            pending = BVHJoint(" ".join(tokens[1:]), stack[-1] if stack else -1, np.zeros(3), (), channel_count)
        elif keyword == "End":
            if not stack:
                raise BVHError(f"{where}: End Site outside any joint")
            pending = BVHJoint(joints[stack[-1]].name + "_end", stack[-1], np.zeros(3), (), channel_count, True)
        elif keyword == "{":
            if pending is None:
                raise BVHError(f"{where}: '{{' without a joint")
            joints.append(pending)
            stack.append(len(joints) - 1)
            pending = None
        elif keyword == "}":
            if not stack:
                raise BVHError(f"{where}: unbalanced '}}'")
            stack.pop()
        elif keyword == "OFFSET":
            if not stack or len(tokens) != 4:
                raise BVHError(f"{where}: OFFSET needs three numbers inside a joint")
            joints[stack[-1]].offset = np.array([float(t) for t in tokens[1:]])
        elif keyword == "CHANNELS":
            if not stack or len(tokens) < 2:
                raise BVHError(f"{where}: CHANNELS outside a joint")
            count = int(tokens[1])
            names = tuple(tokens[2:])
            if count != len(names) or count not in (3, 6):
                raise BVHError(f"{where}: CHANNELS declares {count} channels and lists {len(names)}; expected 3 or 6")
            unknown = [n for n in names if n not in _POSITION_CHANNELS + _ROTATION_CHANNELS]
            if unknown:
                raise BVHError(f"{where}: unknown channel names {unknown}")
            joint = joints[stack[-1]]
            joint.channels = names
            joint.channel_start = channel_count
            channel_count += count
        else:
            raise BVHError(f"{where}: unexpected keyword {keyword!r}")
    raise BVHError(f"{source}: no MOTION section")


def parse_bvh(text: str, source: str = "<string>") -> BVHMotion:
    """Parse BVH text into joints and a (frames, channels) value matrix."""
    lines = text.splitlines()
    joints, motion_line = _parse_hierarchy(lines, source)
    channel_count = sum(len(j.channels) for j in joints)

    header = [line.strip() for line in lines[motion_line + 1:motion_line + 3]]
    if len(header) < 2 or not header[0].startswith("Frames:") or not header[1].startswith("Frame Time:"):
        raise BVHError(f"{source}: expected 'Frames:' and 'Frame Time:' after MOTION, got {header}")
    frames = int(header[0].split(":", 1)[1])
    frame_time = float(header[1].split(":", 1)[1])
    if frames < 0 or not frame_time > 0:
        raise BVHError(f"{source}: invalid Frames {frames} or Frame Time {frame_time}")

    body = " ".join(lines[motion_line + 3:])
    numbers = np.array(body.split(), dtype=np.float64)
    if numbers.size < frames * channel_count:
        raise BVHError(
            f"{source}: header declares {frames} frames x {channel_count} channels = {frames * channel_count} "
            f"values, file has {numbers.size}; the file may be truncated"
        )
    values = numbers[:frames * channel_count].reshape(frames, channel_count)
    return BVHMotion(joints, values, frame_time, source)


def read_bvh(path: str | os.PathLike) -> BVHMotion:
    """Read a `.bvh` or gzip-compressed `.bvh.gz` file."""
    return parse_bvh(_read_text(path), str(path))


def forward_kinematics(motion: BVHMotion, include_end_sites: bool = False) -> np.ndarray:
    """Global positions (F, J, 3) in file units, vectorised over frames; J counts End Sites only if asked."""
    frames = len(motion.values)
    count = len(motion.joints)
    rotations = np.empty((frames, count, 3, 3))
    positions = np.empty((frames, count, 3))

    for index, joint in enumerate(motion.joints):
        columns = motion.values[:, joint.channel_start:joint.channel_start + len(joint.channels)]
        translation = np.broadcast_to(joint.offset, (frames, 3)).copy()
        local = np.broadcast_to(np.eye(3), (frames, 3, 3))

        position_names = [c for c in joint.channels if c in _POSITION_CHANNELS]
        if position_names:
            for c, name in enumerate(joint.channels):
                if name in _POSITION_CHANNELS:
                    translation[:, _POSITION_CHANNELS.index(name)] = columns[:, c]
        rotation_names = [c for c in joint.channels if c in _ROTATION_CHANNELS]
        if rotation_names:
            order = "".join(name[0] for name in rotation_names)
            angles = np.stack([columns[:, joint.channels.index(name)] for name in rotation_names], axis=-1)
            local = euler_to_matrix(np.deg2rad(angles), order)

        if joint.parent < 0:
            rotations[:, index] = local
            positions[:, index] = translation
        else:
            parent_rotation = rotations[:, joint.parent]
            rotations[:, index] = parent_rotation @ local
            positions[:, index] = positions[:, joint.parent] + np.einsum("fij,fj->fi", parent_rotation, translation)

    if include_end_sites:
        return positions
    keep = [i for i, j in enumerate(motion.joints) if not j.is_end_site]
    return positions[:, keep]
