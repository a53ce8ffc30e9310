"""Render 22-joint motion as an RGB video of a clothed human figure, for the pixel baselines.

The figure is built per frame from the joints. Limbs, neck and shoes are tapered capsules
(round cones, the convex hull of two spheres). Pelvis, abdomen, chest, head, hands, nose
and ears are oriented ellipsoids, and the face (eyes, brows, mouth, hair) is painted on
the head.
Every pixel casts one ray from a pinhole camera; the nearest hit among the primitives whose
screen box covers the pixel wins, and its colour is Lambert-shaded by one sun plus sky
light. Behind the figure are a sky gradient and a tiled ground with blob shadows.

The camera keeps a fixed orientation (set by `RenderConfig.azimuth_deg` relative to the
person's initial facing) and translates with the Gaussian-smoothed pelvis track, so the
person stays near the image centre while the ground tiles show their travel.
Frames go straight into a PyAV encoder; nothing is written as images.

Axes follow `toau.skeleton`: metres, Y up, a person facing +Z has their left side at +X.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import av
import numpy as np
from scipy.ndimage import gaussian_filter1d

from toau.motion.resample import resample
from toau.skeleton import JOINT_GROUPS, JOINT_INDEX, NUM_JOINTS

if TYPE_CHECKING:
    from toau.pose.base import PoseTrack

log = logging.getLogger(__name__)

JOINTS_FPS = 20.0  # rate of the prepared joints


@dataclass(frozen=True)
class RenderConfig:
    """Image size, frame rate, camera and encoder of a rendered clip."""

    width: int = 640
    height: int = 360
    fps: float = 30.0
    # Camera: horizontal distance (m) from the tracked pelvis, height (m) of the lens and of
    # the aimed-at point above the floor, and azimuth (degrees) from the person's initial
    # facing, positive toward their left; 0 is a frontal view. At 30 degrees MediaPipe
    # swapped wrists in 0.8% of frames on 23 Bandai clips, at 15 degrees in 1.5%.
    camera_distance: float = 3.6
    camera_height: float = 1.3
    look_at_height: float = 0.95
    azimuth_deg: float = 30.0
    # Focal length over the longer image side. 0.72 is the MediaPipe estimator's default
    # (a 26 mm phone lens), so its root-translation fit uses the camera that rendered.
    focal_length_ratio: float = 0.72
    track_smoothing_s: float = 0.4  # Gaussian sigma (s) of the pelvis track the camera follows
    # Output encoder: near-lossless H.264 so the codec sweep starts from a clean source.
    codec: str = "libx264"
    crf: int = 12
    preset: str = "veryfast"

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2 or self.width < 16 or self.height < 16:
            raise ValueError(f"image size must be even and at least 16x16 for yuv420p, got {self.width}x{self.height}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if not self.camera_distance > 0.5:
            raise ValueError(f"camera_distance must exceed 0.5 m, got {self.camera_distance}")

    @property
    def focal_px(self) -> float:
        return self.focal_length_ratio * max(self.width, self.height)


@dataclass
class RenderStats:
    """Output file, frame count and timings of one `render_clip` call."""

    path: str
    frames: int
    width: int
    height: int
    fps: float
    bytes: int
    render_seconds: float  # ray casting and shading only
    encode_seconds: float  # colour conversion, encoding and muxing
    appearance: dict = field(default_factory=dict)

    @property
    def render_fps(self) -> float:
        return self.frames / self.render_seconds if self.render_seconds > 0 else float("inf")


# ---------------------------------------------------------------------------------------
# Appearance: colours per clip, drawn from a seed.

# sRGB skin tones from light to dark, roughly the Fitzpatrick I-VI range.
SKIN_TONES = ((241, 204, 177), (224, 177, 140), (198, 145, 106), (161, 110, 75), (117, 78, 52), (84, 56, 40))
HAIR_COLOURS = ((30, 22, 18), (60, 40, 25), (110, 75, 40), (170, 130, 80), (90, 90, 90), (20, 20, 25))
TROUSER_COLOURS = ((45, 60, 100), (55, 55, 62), (120, 105, 80), (90, 90, 96), (65, 80, 55), (85, 50, 50))
SHOE_COLOURS = ((25, 25, 25), (230, 230, 230), (90, 60, 40), (40, 40, 70))


@dataclass(frozen=True)
class Appearance:
    """Colours (sRGB in [0, 1]) and garment cuts of one figure."""

    skin: tuple
    hair: tuple
    shirt: tuple
    trousers: tuple
    shoes: tuple
    long_sleeves: bool
    shorts: bool
    ground: tuple


def seed_from(seed: int | str) -> int:
    """Map an int or a clip id to a 64-bit seed. Strings hash with SHA-256, so seeds are stable across runs."""
    if isinstance(seed, str):
        return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little")
    return int(seed)


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> tuple:
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    rgb = value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return tuple(float(c) for c in rgb)


def appearance_for(seed: int | str) -> Appearance:
    """Draw skin, hair, shirt, trousers, shoes and ground colours from a seed."""
    rng = np.random.default_rng(seed_from(seed))

    def pick(palette):
        base = np.array(palette[rng.integers(len(palette))], dtype=float) / 255.0
        return tuple(float(c) for c in np.clip(base * rng.uniform(0.92, 1.08), 0.0, 1.0))

    shirt = _hsv_to_rgb(rng.uniform(), rng.uniform(0.35, 0.8), rng.uniform(0.45, 0.9))
    ground = _hsv_to_rgb(rng.uniform(0.08, 0.35), rng.uniform(0.1, 0.35), rng.uniform(0.45, 0.65))
    return Appearance(
        skin=pick(SKIN_TONES), hair=pick(HAIR_COLOURS), shirt=shirt, trousers=pick(TROUSER_COLOURS),
        shoes=pick(SHOE_COLOURS), long_sleeves=bool(rng.uniform() < 0.5), shorts=bool(rng.uniform() < 0.25),
        ground=ground,
    )


# ---------------------------------------------------------------------------------------
# Body model: sizes, then primitives per frame.

# Sizes (m) for a person whose thigh plus shin measure REFERENCE_LEG_M. Each clip scales them
# by its own leg length. Capsule radii are (start, end), and ellipsoid radii are
# (half-width, half-height, half-depth) in the part's frame (left, up, forward).
REFERENCE_LEG_M = 0.80
SIZES = {
    "thigh": (0.072, 0.050), "shin": (0.050, 0.037), "upper_arm": (0.047, 0.038), "forearm": (0.037, 0.028),
    "neck": (0.046, 0.042), "shoulders": (0.050, 0.050), "shoe": (0.042, 0.033),
    "pelvis": (0.080, 0.10, 0.095),  # half-width is added to half the hip-joint distance
    "abdomen": (0.115, 0.12, 0.088),
    "chest": (0.035, 0.14, 0.10),  # half-width is added to half the shoulder-joint distance
    "head": (0.076, 0.105, 0.094), "hand": (0.042, 0.082, 0.022),
    "nose": (0.016, 0.026, 0.024), "ear": (0.012, 0.030, 0.020),
}
# Offsets (m, before scaling) of derived points from the joints they hang on.
HEAD_LIFT = 0.065  # head centre above the head joint, which sits at the top of the neck
HAND_REACH = 0.072  # hand centre past the wrist, along the forearm
HEEL_DROP = 0.070  # heel centre from the ankle, perpendicular to the foot, toward the ground
TOE_REACH = 0.050  # toe-cap centre past the foot (ball) joint

# "face" is skin with the face and hair painted on, and "chest" is shirt with a V-neck in front.
MATERIALS = ("skin", "face", "shirt", "trousers", "shoes", "chest")
SKIN, FACE, SHIRT, TROUSERS, SHOES, CHEST = range(len(MATERIALS))

_J = JOINT_INDEX


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the last axis (einsum is several times faster than sum(a * b) for 3-vectors)."""
    return np.einsum("...i,...i->...", a, b)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.sqrt(_dot(v, v)), 1e-8)[..., None]


def _part_frame(up: np.ndarray, across: np.ndarray) -> np.ndarray:
    """Rotation (..., 3, 3) whose columns are left, up, forward of a body part.

    `up` (..., 3) sets the long axis. `across` (..., 3), pointing to the person's left, is
    made orthogonal to it. forward = left x up keeps the frame right-handed.
    """
    up = _normalize(up)
    left = _normalize(across - _dot(across, up)[..., None] * up)
    forward = np.cross(left, up)
    return np.stack([left, up, forward], axis=-1)


def _body_scale(joints: np.ndarray) -> float:
    legs = [(_J["left_hip"], _J["left_knee"], _J["left_ankle"]), (_J["right_hip"], _J["right_knee"], _J["right_ankle"])]
    lengths = [
        np.linalg.norm(joints[:, k] - joints[:, h], axis=-1) + np.linalg.norm(joints[:, a] - joints[:, k], axis=-1)
        for h, k, a in legs
    ]
    return float(np.median(np.concatenate(lengths))) / REFERENCE_LEG_M


@dataclass
class Figure:
    """Primitives of every frame.

    Capsules: start, end (F, C, 3) and radii (C, 2), material (C,).
    Ellipsoids: centre (F, E, 3), rotation (F, E, 3, 3) with columns left/up/forward,
    radii (E, 3), material (E,).
    """

    cap_start: np.ndarray
    cap_end: np.ndarray
    cap_radii: np.ndarray
    cap_material: np.ndarray
    ell_centre: np.ndarray
    ell_rotation: np.ndarray
    ell_radii: np.ndarray
    ell_material: np.ndarray


def build_figure(joints: np.ndarray, appearance: Appearance) -> Figure:
    """Turn joints (F, 22, 3) into the capsules and ellipsoids of the figure."""
    j = joints.astype(np.float32)
    s = _body_scale(j)
    size = {name: np.asarray(value, dtype=np.float32) * s for name, value in SIZES.items()}
    P = {name: j[:, index] for name, index in _J.items()}

    hips_across = P["left_hip"] - P["right_hip"]
    shoulders_across = P["left_shoulder"] - P["right_shoulder"]
    pelvis_frame = _part_frame(P["spine1"] - P["pelvis"], hips_across)
    abdomen_frame = _part_frame(P["spine3"] - P["spine1"], hips_across + shoulders_across)
    chest_frame = _part_frame(P["neck"] - P["spine3"], shoulders_across)
    head_frame = _part_frame(P["head"] - P["neck"], shoulders_across)
    head_centre = P["head"] + head_frame[..., 1] * HEAD_LIFT * s

    hip_half = np.median(np.linalg.norm(hips_across, axis=-1)) / 2
    shoulder_half = np.median(np.linalg.norm(shoulders_across, axis=-1)) / 2

    capsules, ellipsoids = [], []
    sleeve = SHIRT if appearance.long_sleeves else SKIN
    leg_lower = SKIN if appearance.shorts else TROUSERS
    for side in ("left", "right"):
        shoulder, elbow, wrist = P[f"{side}_shoulder"], P[f"{side}_elbow"], P[f"{side}_wrist"]
        hip, knee, ankle, ball = P[f"{side}_hip"], P[f"{side}_knee"], P[f"{side}_ankle"], P[f"{side}_foot"]
        capsules += [
            (hip, knee, size["thigh"], TROUSERS),
            (knee, ankle, size["shin"], leg_lower),
            (shoulder, elbow, size["upper_arm"], SHIRT),
            (elbow, wrist, size["forearm"], sleeve),
        ]
        # Shoe: heel below and behind the ankle, toe cap just past the ball of the foot.
        foot_axis = _normalize(ball - ankle)
        down = np.array([0.0, -1.0, 0.0], dtype=np.float32)
        heel_dir = down - _dot(down, foot_axis)[..., None] * foot_axis
        heel = ankle + _normalize(heel_dir) * HEEL_DROP * s
        toe = ball + _normalize(ball - heel) * TOE_REACH * s
        capsules.append((heel, toe, size["shoe"], SHOES))

        forearm_axis = _normalize(wrist - elbow)
        hand_frame = _part_frame(-forearm_axis, shoulders_across if side == "left" else -shoulders_across)
        ellipsoids.append((wrist + forearm_axis * HAND_REACH * s, hand_frame, size["hand"], SKIN))

        ear_offset = (1.0 if side == "left" else -1.0) * size["head"][0] * 0.98
        ear_centre = head_centre + head_frame[..., 0] * ear_offset - head_frame[..., 2] * 0.01 * s
        ellipsoids.append((ear_centre, head_frame, size["ear"], SKIN))

    neck_base = 0.5 * (P["spine3"] + P["neck"])
    capsules.append((neck_base, head_centre - head_frame[..., 1] * 0.04 * s, size["neck"], SKIN))
    capsules.append((P["left_shoulder"], P["right_shoulder"], size["shoulders"], SHIRT))

    pelvis_radii = size["pelvis"] + np.array([hip_half, 0.0, 0.0], dtype=np.float32)
    chest_radii = size["chest"] + np.array([shoulder_half, 0.0, 0.0], dtype=np.float32)
    pelvis_centre = 0.5 * (P["left_hip"] + P["right_hip"]) + pelvis_frame[..., 1] * 0.02 * s
    chest_centre = P["spine3"] + 0.3 * (P["neck"] - P["spine3"])
    ellipsoids += [
        (pelvis_centre, pelvis_frame, pelvis_radii, TROUSERS),
        (P["spine1"] + 0.3 * (P["spine3"] - P["spine1"]), abdomen_frame, size["abdomen"], SHIRT),
        (chest_centre, chest_frame, chest_radii, CHEST),
    ]
    nose_offset = head_frame @ (np.array([0.0, -0.02, 0.088], dtype=np.float32) * s)
    ellipsoids.append((head_centre + nose_offset, head_frame, size["nose"], SKIN))
    ellipsoids.append((head_centre, head_frame, size["head"], FACE))

    return Figure(
        cap_start=np.stack([c[0] for c in capsules], axis=1).astype(np.float32),
        cap_end=np.stack([c[1] for c in capsules], axis=1).astype(np.float32),
        cap_radii=np.stack([c[2] for c in capsules]).astype(np.float32),
        cap_material=np.array([c[3] for c in capsules]),
        ell_centre=np.stack([e[0] for e in ellipsoids], axis=1).astype(np.float32),
        ell_rotation=np.stack([e[1] for e in ellipsoids], axis=1).astype(np.float32),
        ell_radii=np.stack([e[2] for e in ellipsoids]).astype(np.float32),
        ell_material=np.array([e[3] for e in ellipsoids]),
    )


def _shift_to_floor(joints: np.ndarray, figure: Figure) -> tuple[np.ndarray, Figure]:
    """Move everything vertically so that the lowest point of either shoe touches y = 0."""
    shoes = figure.cap_material == SHOES
    lowest = min(
        float((figure.cap_start[:, shoes, 1] - figure.cap_radii[shoes, 0]).min()),
        float((figure.cap_end[:, shoes, 1] - figure.cap_radii[shoes, 1]).min()),
    )
    lift = np.array([0.0, -lowest, 0.0], dtype=np.float32)
    figure.cap_start = figure.cap_start + lift
    figure.cap_end = figure.cap_end + lift
    figure.ell_centre = figure.ell_centre + lift
    return joints + lift, figure


# ---------------------------------------------------------------------------------------
# Camera.

UP = np.array([0.0, 1.0, 0.0])


@dataclass
class Camera:
    """Pinhole camera with one orientation for the clip and a position per frame.

    rotation (3, 3): rows are the camera's right, up and forward axes in world coordinates
    (no roll, so `right` is horizontal). origins (F, 3) are metres and the focal length is in
    pixels, with the principal point at the image centre.
    """

    rotation: np.ndarray
    origins: np.ndarray
    focal: float
    width: int
    height: int

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (F, ..., 3) of each frame into camera axes (x right, y up, z forward)."""
        origins = self.origins.reshape((len(self.origins),) + (1,) * (points.ndim - 2) + (3,))
        return (points - origins) @ self.rotation.T

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (F, ..., 3) of each frame to pixel coordinates (F, ..., 2), x right, y down."""
        local = self.to_camera(points)
        depth = np.maximum(local[..., 2], 1e-6)
        u = self.width / 2 + self.focal * local[..., 0] / depth
        v = self.height / 2 - self.focal * local[..., 1] / depth
        return np.stack([u, v], axis=-1)

    def ray_directions(self) -> np.ndarray:
        """Unit ray direction (H * W, 3) through each pixel centre, rows first."""
        cols = (np.arange(self.width) + 0.5 - self.width / 2) / self.focal
        rows = (np.arange(self.height) + 0.5 - self.height / 2) / self.focal
        x, y = np.meshgrid(cols, -rows)
        local = np.stack([x, y, np.ones_like(x)], axis=-1).reshape(-1, 3)
        return _normalize(local @ self.rotation).astype(np.float32)


def initial_facing(joints: np.ndarray, seconds: float = 0.5, fps: float = JOINTS_FPS) -> np.ndarray:
    """Horizontal unit facing direction (3,) over the first `seconds` of joints (F, 22, 3)."""
    head = joints[: max(1, int(round(seconds * fps)))]
    across = (head[:, _J["left_hip"]] - head[:, _J["right_hip"]]) + (
        head[:, _J["left_shoulder"]] - head[:, _J["right_shoulder"]]
    )
    across = across.mean(axis=0) * np.array([1.0, 0.0, 1.0])
    if np.linalg.norm(across) < 1e-6:
        raise ValueError("cannot find the facing: hips and shoulders coincide in the first frames")
    return _normalize(np.cross(across, UP))


def follow_camera(joints: np.ndarray, config: RenderConfig) -> Camera:
    """Place the camera for joints (F, 22, 3) at `config.fps`, floor at y = 0.

    The camera sits `camera_distance` from the smoothed pelvis track, in the direction of
    the initial facing turned by `azimuth_deg` toward the person's left, and keeps that
    offset (and so its orientation) for the whole clip.
    """
    forward = initial_facing(joints, fps=config.fps)
    left = np.cross(UP, forward)
    azimuth = np.radians(config.azimuth_deg)
    toward_camera = np.cos(azimuth) * forward + np.sin(azimuth) * left

    track = joints[:, _J["pelvis"]].astype(np.float64)
    sigma = config.track_smoothing_s * config.fps
    if sigma > 0 and len(track) > 1:
        track = gaussian_filter1d(track, sigma, axis=0, mode="nearest")
    targets = np.stack([track[:, 0], np.full(len(track), config.look_at_height), track[:, 2]], axis=1)
    origins = targets + config.camera_distance * toward_camera
    origins[:, 1] = config.camera_height

    view = _normalize(targets[0] - origins[0])
    right = _normalize(np.cross(view, UP))
    rotation = np.stack([right, np.cross(right, view), view])
    return Camera(rotation, origins, config.focal_px, config.width, config.height)


# ---------------------------------------------------------------------------------------
# Ray casting.

NEAR = 0.05  # metres: surfaces closer to the camera than this are not drawn
# Light (sRGB multipliers): sun from above, behind the camera and to its right, plus sky.
SUN_FROM_CAMERA = np.array([0.45, 1.0, -0.55])  # (right, up, forward) in camera axes, toward the sun
SUN, AMBIENT, SKY_FILL = 0.65, 0.30, 0.12
SKY_HORIZON, SKY_ZENITH = np.array([0.86, 0.90, 0.95]), np.array([0.42, 0.62, 0.88])
FOG_DISTANCE = 30.0  # metres over which the ground colour fades to the horizon colour
TILE_M, TILE_CONTRAST = 1.0, 0.06  # ground tiles: size and brightness difference
SHADOW_STRENGTH = 0.55
# Occlusion edges: a surface within EDGE_PX pixels of one at least EDGE_DEPTH_M nearer is
# darkened by the factor EDGE_DARKEN.
EDGE_PX, EDGE_DEPTH_M, EDGE_DARKEN = 2, 0.04, 0.55


def _sphere_hit(offset: np.ndarray, direction: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Ray parameter (N,) of the first hit of rays (origin - centre = offset) on spheres, inf on a miss."""
    b = _dot(offset, direction)
    c = _dot(offset, offset) - radius * radius
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc >= 0) & (t > NEAR), t, np.inf)


def _cone_axes(start: np.ndarray, end: np.ndarray, radii: np.ndarray):
    """Return axis (N, 3), length, sin(theta), slope m and start radius rho0 of round-cone sides.

    The side of the convex hull of spheres (start, r0) and (end, r1) is a cone whose radius
    at axial position s is rho0 + m s. It touches the spheres at s = r0 sin(theta) and
    s = length + r1 sin(theta), where sin(theta) = (r0 - r1) / length.
    """
    axis = end - start
    length = np.maximum(np.linalg.norm(axis, axis=-1), 1e-6)
    axis = axis / length[:, None]
    sin = np.clip((radii[:, 0] - radii[:, 1]) / length, -0.95, 0.95)
    cos = np.sqrt(1.0 - sin * sin)
    return axis, length, sin, -sin / cos, radii[:, 0] / cos


def _round_cone_hit(origin, direction, start, end, radii):
    """First hit (N,) and the part hit (0 start sphere, 1 end sphere, 2 side) of rays on round cones."""
    t_start = _sphere_hit(origin - start, direction, radii[:, 0])
    t_end = _sphere_hit(origin - end, direction, radii[:, 1])

    axis, length, sin, slope, rho0 = _cone_axes(start, end, radii)
    offset = origin - start
    s0 = _dot(offset, axis)
    dw = _dot(direction, axis)
    k0 = rho0 + slope * s0
    a = 1.0 - dw * dw * (1.0 + slope * slope)
    b = _dot(offset, direction) - dw * (s0 + slope * k0)
    c = _dot(offset, offset) - s0 * s0 - k0 * k0
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    safe_a = np.where(np.abs(a) < 1e-6, 1e-6, a)
    t_side = np.full_like(a, np.inf)
    for sign in (-1.0, 1.0):
        t = (-b + sign * root) / safe_a
        s = s0 + t * dw
        ok = (disc >= 0) & (t > NEAR) & (s >= radii[:, 0] * sin) & (s <= length + radii[:, 1] * sin)
        t_side = np.where(ok & (t < t_side), t, t_side)

    hits = np.stack([t_start, t_end, t_side])
    part = np.argmin(hits, axis=0)
    return np.take_along_axis(hits, part[None], axis=0)[0], part


def _round_cone_normal(points, start, end, radii, part):
    """Outward unit normal (N, 3) at hit points on round cones, given the part hit."""
    axis, _, _, slope, _ = _cone_axes(start, end, radii)
    offset = points - start
    radial = offset - _dot(offset, axis)[..., None] * axis
    side = _normalize(_normalize(radial) - slope[:, None] * axis)
    normal = np.where((part == 0)[:, None], _normalize(points - start), side)
    return np.where((part == 1)[:, None], _normalize(points - end), normal)


def _to_local(vectors: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Vectors (N, 3) in world axes to the axes of rotations (N, 3, 3): R^T v."""
    return np.einsum("nij,ni->nj", rotation, vectors)


def _ellipsoid_hit(origin, direction, centre, rotation, radii):
    """First hit (N,) of rays on ellipsoids and the hit point in unit-sphere coordinates (N, 3)."""
    o = _to_local(origin - centre, rotation) / radii
    d = _to_local(direction, rotation) / radii
    a = _dot(d, d)
    b = _dot(o, d)
    c = _dot(o, o) - 1.0
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    t = np.where((disc >= 0) & (t > NEAR), t, np.inf)
    return t, o + np.where(np.isfinite(t), t, 0.0)[:, None] * d


def _paint_face(unit: np.ndarray, skin: np.ndarray, hair: np.ndarray) -> np.ndarray:
    """Albedo (N, 3) of head points given in unit-sphere coordinates (x left, y up, z forward).

    Hair covers the crown and the back; eyes, brows and mouth sit on the front (z > 0.5).
    """
    x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
    colour = np.broadcast_to(skin, unit.shape).copy()
    front = z > 0.5
    eye_x, eye_y = np.abs(x) - 0.36, y - 0.10
    sclera = front & ((eye_x / 0.15) ** 2 + (eye_y / 0.08) ** 2 < 1.0)
    iris = front & ((eye_x / 0.065) ** 2 + (eye_y / 0.075) ** 2 < 1.0)
    brow = front & (np.abs(eye_x) < 0.17) & (y > 0.24) & (y < 0.30)
    mouth = front & (np.abs(x) < 0.22) & (np.abs(y + 0.47) < 0.035)
    hairline = 0.45 - 0.7 * np.clip(0.6 - z, 0.0, 1.2)
    colour[sclera] = (0.95, 0.95, 0.93)
    colour[iris] = (0.10, 0.07, 0.05)
    colour[brow] = hair * 0.8
    colour[mouth] = skin * np.array([0.7, 0.35, 0.35])
    colour[y > hairline] = hair
    return colour


def _paint_neckline(unit: np.ndarray, shirt: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Albedo (N, 3) of chest points in unit-sphere coordinates: shirt with a V-neck in front.

    The V-neck marks the front of the torso. With it MediaPipe mistook the front for the
    back in 2 instead of 6 frames of a 55-frame raise-both-hands clip.
    """
    neckline = (unit[:, 2] > 0.2) & (unit[:, 1] > 0.5 + 1.6 * np.abs(unit[:, 0]))
    return np.where(neckline[:, None], skin, shirt)


def _box_entries(lo: np.ndarray, hi: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Primitive index and pixel index (N,) of every pixel in every primitive's screen box.

    lo, hi (K, 2) are integer (column, row) corners with hi exclusive. Empty boxes give no entries.
    """
    size = np.maximum(hi - lo, 0)
    counts = size[:, 0] * size[:, 1]
    primitive = np.repeat(np.arange(len(lo)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    columns = lo[primitive, 0] + local % size[primitive, 0]
    rows = lo[primitive, 1] + local // size[primitive, 0]
    return primitive, rows * width + columns


class ClipRenderer:
    """Renderer of one clip: built once per clip, then `frame(i)` renders frame i."""

    def __init__(self, joints: np.ndarray, config: RenderConfig, appearance: Appearance):
        self.config = config
        self.appearance = appearance
        figure = build_figure(joints, appearance)
        self.joints, self.figure = _shift_to_floor(joints.astype(np.float32), figure)
        self.camera = follow_camera(self.joints, config)
        self.directions = self.camera.ray_directions()
        self.sun = _normalize(SUN_FROM_CAMERA @ self.camera.rotation).astype(np.float32)
        self.colours = np.array([
            appearance.skin, appearance.skin, appearance.shirt, appearance.trousers, appearance.shoes, appearance.shirt,
        ], dtype=np.float32)
        self._prepare_background()

    def __len__(self) -> int:
        return len(self.joints)

    def _prepare_background(self) -> None:
        """Sky per pixel, and for ground pixels the hit offset from the camera and the fog."""
        width, height = self.config.width, self.config.height
        dy = self.directions[:, 1]
        sky_mix = np.clip(dy, 0.0, 1.0)[:, None] ** 0.6
        self.background = ((1 - sky_mix) * SKY_HORIZON + sky_mix * SKY_ZENITH).astype(np.float32)
        # No roll: a pixel row is all sky or all ground, so the ground is the rows from here down.
        ground_rows = np.flatnonzero(dy.reshape(height, width)[:, 0] < -1e-4)
        self.ground_row = int(ground_rows[0]) if len(ground_rows) else height
        ground = self.directions[self.ground_row * width:]
        t = self.config.camera_height / -ground[:, 1]
        self.ground_offset = (t[:, None] * ground[:, [0, 2]]).astype(np.float32)
        fog = (1 - np.exp(-t / FOG_DISTANCE))[:, None]
        base = np.asarray(self.appearance.ground) * (0.55 + 0.45 * self.sun[1])
        self.ground_base = ((1 - fog) * base + fog * SKY_HORIZON).astype(np.float32)
        self.tile_contrast = (TILE_CONTRAST * np.exp(-t / 8.0)).astype(np.float32)

    def frame(self, index: int) -> np.ndarray:
        """Render frame `index` as (H, W, 3) uint8 RGB."""
        width, height = self.config.width, self.config.height
        origin = self.camera.origins[index].astype(np.float32)
        image = self.background.copy()
        self._draw_ground(image, origin, index)
        self._draw_figure(image, origin, index)
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(height, width, 3)

    def _draw_ground(self, image: np.ndarray, origin: np.ndarray, index: int) -> None:
        start = self.ground_row * self.config.width
        gx = self.ground_offset[:, 0] + origin[0]
        gz = self.ground_offset[:, 1] + origin[2]
        parity = (np.floor(gx / TILE_M) + np.floor(gz / TILE_M)) % 2.0 - 0.5
        ground = self.ground_base + (self.tile_contrast * parity)[:, None]
        ground *= self._shadow(gx, gz, index)[:, None]
        image[start:] = ground

    def _shadow(self, gx: np.ndarray, gz: np.ndarray, index: int) -> np.ndarray:
        """Light factor (N,) for ground points: soft blobs cast along the sun by the figure."""
        f = self.figure
        middles = 0.5 * (f.cap_start[index] + f.cap_end[index])
        centres = np.concatenate([f.ell_centre[index], f.cap_start[index], middles, f.cap_end[index]])
        radii = np.concatenate([f.ell_radii[:, 0], f.cap_radii[:, 0], f.cap_radii.mean(axis=1), f.cap_radii[:, 1]])
        heights = np.maximum(centres[:, 1], 0.0)
        cast_x = centres[:, 0] - self.sun[0] * heights / self.sun[1]
        cast_z = centres[:, 2] - self.sun[2] * heights / self.sun[1]
        reach = radii * (1.2 + 0.25 * heights)
        darkness = SHADOW_STRENGTH * np.exp(-heights / 1.5)

        light = np.ones_like(gx)
        box = (
            (gx > (cast_x - reach).min()) & (gx < (cast_x + reach).max())
            & (gz > (cast_z - reach).min()) & (gz < (cast_z + reach).max())
        )
        inside = np.flatnonzero(box)
        if len(inside) == 0:
            return light
        dx = (gx[inside, None] - cast_x) / reach
        dz = (gz[inside, None] - cast_z) / reach
        edge = np.clip((1.0 - (dx * dx + dz * dz)) / 0.6, 0.0, 1.0)
        light[inside] = 1.0 - (darkness * edge).max(axis=1)
        return light

    def _boxes(self, centres: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Screen boxes (K, 2) lo and hi (exclusive) of spheres with world centres (K, 3), radii (K,)."""
        local = (centres - self._origin) @ self.camera.rotation.T
        r = radii[:, None]
        near = np.maximum(local[:, 2:3] - r, NEAR)
        far = local[:, 2:3] + r
        corners = np.concatenate([(local[:, :2] + sign * r) / depth for sign in (-1, 1) for depth in (near, far)], axis=1)
        u = self.config.width / 2 + self.camera.focal * corners[:, 0::2]
        v = self.config.height / 2 - self.camera.focal * corners[:, 1::2]
        lo = np.stack([u.min(axis=1), v.min(axis=1)], axis=1)
        hi = np.stack([u.max(axis=1), v.max(axis=1)], axis=1)
        limit = np.array([self.config.width, self.config.height])
        lo = np.clip(np.floor(lo) - 1, 0, limit).astype(np.int64)
        hi = np.clip(np.ceil(hi) + 1, 0, limit).astype(np.int64)
        hi[local[:, 2] + radii < NEAR] = lo[local[:, 2] + radii < NEAR]  # behind the camera
        return lo, hi

    def _draw_figure(self, image: np.ndarray, origin: np.ndarray, index: int) -> None:
        f = self.figure
        self._origin = origin
        start, end = f.cap_start[index], f.cap_end[index]
        cap_centre = 0.5 * (start + end)
        cap_radius = 0.5 * np.linalg.norm(end - start, axis=1) + f.cap_radii.max(axis=1)
        cap, cap_pixel = _box_entries(*self._boxes(cap_centre, cap_radius), self.config.width)
        ell, ell_pixel = _box_entries(*self._boxes(f.ell_centre[index], f.ell_radii.max(axis=1)), self.config.width)

        cap_dir = self.directions[cap_pixel]
        cap_t, cap_part = _round_cone_hit(origin, cap_dir, start[cap], end[cap], f.cap_radii[cap])
        ell_dir = self.directions[ell_pixel]
        ell_t, ell_unit = _ellipsoid_hit(origin, ell_dir, f.ell_centre[index][ell], f.ell_rotation[index][ell], f.ell_radii[ell])

        depth = np.full(self.config.width * self.config.height, np.inf, dtype=np.float32)
        np.minimum.at(depth, cap_pixel, cap_t)
        np.minimum.at(depth, ell_pixel, ell_t)

        won = np.flatnonzero(np.isfinite(cap_t) & (cap_t <= depth[cap_pixel]))
        if len(won):
            k = cap[won]
            points = origin + cap_t[won, None] * cap_dir[won]
            normal = _round_cone_normal(points, start[k], end[k], f.cap_radii[k], cap_part[won])
            image[cap_pixel[won]] = self._shade(self.colours[f.cap_material[k]], normal)

        won = np.flatnonzero(np.isfinite(ell_t) & (ell_t <= depth[ell_pixel]))
        if len(won):
            k = ell[won]
            unit = ell_unit[won]
            normal = _normalize(np.einsum("nij,nj->ni", f.ell_rotation[index][k], unit / f.ell_radii[k]))
            albedo = self.colours[f.ell_material[k]]
            head = f.ell_material[k] == FACE
            if head.any():
                albedo[head] = _paint_face(unit[head], self.colours[SKIN], np.asarray(self.appearance.hair, np.float32))
            chest = f.ell_material[k] == CHEST
            if chest.any():
                albedo[chest] = _paint_neckline(unit[chest], self.colours[SHIRT], self.colours[SKIN])
            image[ell_pixel[won]] = self._shade(albedo, normal)
        self._darken_occluded_edges(image, depth, np.concatenate([cap_pixel, ell_pixel]))

    def _darken_occluded_edges(self, image: np.ndarray, depth: np.ndarray, pixels: np.ndarray) -> None:
        """Darken surfaces next to a nearer surface, a cheap stand-in for contact shadows.

        Without it two overlapping limbs of one colour merge into one shape and MediaPipe
        confuses them. On 8 walking and running clips it cut frames with swapped ankles
        from 86 to 64.
        """
        if len(pixels) == 0:
            return
        width, height = self.config.width, self.config.height
        rows, cols = np.divmod(pixels, width)
        top, bottom = max(rows.min() - EDGE_PX, 0), min(rows.max() + EDGE_PX + 1, height)
        left, right = max(cols.min() - EDGE_PX, 0), min(cols.max() + EDGE_PX + 1, width)
        box = depth.reshape(height, width)[top:bottom, left:right]
        nearest = box.copy()
        for shift in range(1, EDGE_PX + 1):
            nearest[shift:] = np.minimum(nearest[shift:], box[:-shift])
            nearest[:-shift] = np.minimum(nearest[:-shift], box[shift:])
            nearest[:, shift:] = np.minimum(nearest[:, shift:], box[:, :-shift])
            nearest[:, :-shift] = np.minimum(nearest[:, :-shift], box[:, shift:])
        finite = np.isfinite(box)
        behind = np.zeros_like(finite)
        behind[finite] = box[finite] - nearest[finite] > EDGE_DEPTH_M
        view = image.reshape(height, width, 3)[top:bottom, left:right]
        view[behind] *= EDGE_DARKEN

    def _shade(self, albedo: np.ndarray, normal: np.ndarray) -> np.ndarray:
        """Lambert shading (N, 3): ambient, sky fill from above and the sun."""
        sun = np.maximum(normal @ self.sun, 0.0)
        light = AMBIENT + SKY_FILL * (0.5 + 0.5 * normal[:, 1]) + SUN * sun
        return albedo * light[:, None]


# ---------------------------------------------------------------------------------------
# Public API: frames, files, evaluation.


def _check_joints(joints: np.ndarray) -> np.ndarray:
    joints = np.asarray(joints)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"expected joints (F, {NUM_JOINTS}, 3), got shape {joints.shape}")
    if len(joints) < 2:
        raise ValueError(f"need at least 2 frames of joints to render, got {len(joints)}")
    if not np.all(np.isfinite(joints)):
        raise ValueError("joints contain NaN or inf values; fill or drop those frames before rendering")
    return joints


def clip_renderer(joints: np.ndarray, config: RenderConfig, seed: int | str = 0, joints_fps: float = JOINTS_FPS) -> ClipRenderer:
    """Build the renderer of joints (F, 22, 3) at `joints_fps`, resampled by time to `config.fps`."""
    joints = _check_joints(joints)
    video_joints = resample(joints.astype(np.float64), fps=joints_fps, target_fps=config.fps)
    return ClipRenderer(video_joints, config, appearance_for(seed))


def render_frames(
    joints: np.ndarray, config: RenderConfig = RenderConfig(), seed: int | str = 0, joints_fps: float = JOINTS_FPS
) -> Iterator[np.ndarray]:
    """Yield the rendered frames (H, W, 3) uint8 RGB of joints (F, 22, 3) at `config.fps`.

    F joints at `joints_fps` give floor((F - 1) * fps / joints_fps) + 1 frames.
    """
    renderer = clip_renderer(joints, config, seed, joints_fps)
    for index in range(len(renderer)):
        yield renderer.frame(index)


def open_encoder(path: Path, config: RenderConfig) -> tuple[av.container.OutputContainer, av.video.stream.VideoStream]:
    """Open an output file and a yuv420p video stream with the config's size, rate, codec and CRF."""
    container = av.open(str(path), mode="w")
    try:
        stream = container.add_stream(config.codec, rate=Fraction(config.fps).limit_denominator(1001))
    except (ValueError, av.error.FFmpegError) as error:
        container.close()
        raise ValueError(f"encoder {config.codec!r} not found in PyAV ({error}); use libx264") from error
    stream.width, stream.height = config.width, config.height
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": str(config.crf), "preset": config.preset}
    return container, stream


def render_clip(
    joints: np.ndarray, out_path: str | os.PathLike, config: RenderConfig = RenderConfig(), seed: int | str = 0,
    joints_fps: float = JOINTS_FPS,
) -> RenderStats:
    """Render joints (F, 22, 3) at `joints_fps` into a video file at `out_path`.

    `seed` (an int or a clip id) picks the colours. The container follows the file
    extension (.mp4 or .mkv), and frames are encoded as they are rendered.
    """
    renderer = clip_renderer(joints, config, seed, joints_fps)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    render_seconds = encode_seconds = 0.0
    container, stream = open_encoder(out_path, config)
    try:
        for index in range(len(renderer)):
            start = time.perf_counter()
            image = renderer.frame(index)
            middle = time.perf_counter()
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
            render_seconds += middle - start
            encode_seconds += time.perf_counter() - middle
        start = time.perf_counter()
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()
    encode_seconds += time.perf_counter() - start
    return RenderStats(
        path=str(out_path), frames=len(renderer), width=config.width, height=config.height, fps=config.fps,
        bytes=out_path.stat().st_size, render_seconds=render_seconds, encode_seconds=encode_seconds,
        appearance=asdict(renderer.appearance),
    )


def kabsch(source: np.ndarray, target: np.ndarray, translate: bool = True) -> np.ndarray:
    """Rigidly align points source (N, 3) to target (N, 3) and return the moved source (N, 3).

    Rotation (no reflection, no scale) by the Kabsch SVD solution, plus a translation
    when `translate` is set.
    """
    source_mean = source.mean(axis=0) if translate else np.zeros(3)
    target_mean = target.mean(axis=0) if translate else np.zeros(3)
    a, b = source - source_mean, target - target_mean
    u, _, vt = np.linalg.svd(a.T @ b)
    flip = np.sign(np.linalg.det(u @ vt))
    rotation = u @ np.diag([1.0, 1.0, flip]) @ vt
    return a @ rotation + target_mean


def _project_estimate(joints: np.ndarray, config: RenderConfig) -> np.ndarray:
    """Pixels (..., 2) of estimated joints in the estimator's camera axes (x right, y up, z toward camera)."""
    depth = np.maximum(-joints[..., 2], 1e-6)
    u = config.width / 2 + config.focal_px * joints[..., 0] / depth
    v = config.height / 2 - config.focal_px * joints[..., 1] / depth
    return np.stack([u, v], axis=-1)


# Left/right check: a joint pair is swapped in a frame when pairing the estimated left joint
# with the rendered right one (and right with left) lies closer in the image than the
# direct pairing. Frames where the two rendered joints are closer than SIDE_CHECK_MIN_PX
# pixels are ambiguous and skipped.
SIDE_CHECK_MIN_PX = 12.0
SIDE_PAIRS = {"wrists": ("left_wrist", "right_wrist"), "ankles": ("left_ankle", "right_ankle")}


def _side_swaps(estimated_px: np.ndarray, truth_px: np.ndarray) -> dict[str, tuple[int, int]]:
    """Count (checked, swapped) frames per pair in SIDE_PAIRS from pixels (F, 22, 2)."""
    counts = {}
    for pair, (left_name, right_name) in SIDE_PAIRS.items():
        left, right = _J[left_name], _J[right_name]

        def gap(a, b):
            return np.linalg.norm(estimated_px[:, a] - truth_px[:, b], axis=-1)

        apart = np.linalg.norm(truth_px[:, left] - truth_px[:, right], axis=-1) > SIDE_CHECK_MIN_PX
        crossed = gap(left, right) + gap(right, left) < gap(left, left) + gap(right, right)
        counts[pair] = (int(apart.sum()), int((apart & crossed).sum()))
    return counts


def _group_errors(errors: np.ndarray) -> dict[str, float]:
    """Mean of per-joint errors (F, 22) metres per joint group and overall, in mm."""
    result = {group: float(errors[:, list(joints)].mean() * 1000) for group, joints in JOINT_GROUPS.items()}
    result["all"] = float(errors.mean() * 1000)
    return result


def score_track(track: "PoseTrack", renderer: ClipRenderer) -> dict:
    """Compare a `toau.pose.base.PoseTrack` estimated on a rendered video with the rendered joints.

    Returns the frame count, detection rate, left/right checks of wrists and ankles in the
    image ("side_checks": pair -> (checked, swapped) frames) and MPJPE in mm per joint
    group after two alignments: one rigid transform for the whole clip
    ("mpjpe_clip_mm"), and per-frame pelvis centring plus one rotation for the whole clip
    ("mpjpe_centred_mm"). Errors and checks are left out when fewer than 2 frames have a person.
    """
    config = renderer.config
    if len(track) != len(renderer):
        raise ValueError(
            f"track has {len(track)} frames but the renderer has {len(renderer)}; pass the track of the rendered clip"
        )
    result = {"frames": len(track), "detection_rate": track.detection_rate}
    found = track.detected
    if found.sum() < 2:
        return result
    estimated = track.joints[found].astype(np.float64)
    # The estimator works in the moving camera's axes turned Y up (x right, y up, z toward
    # the camera), so the rendered joints are compared in those axes too.
    truth = renderer.camera.to_camera(renderer.joints.astype(np.float64))[found] * np.array([1.0, 1.0, -1.0])

    placed = -estimated[:, :, 2].min(axis=1) > 0.3  # frames whose root translation fit gave a depth
    truth_px = _project_estimate(truth[placed], config)
    result["side_checks"] = _side_swaps(_project_estimate(estimated[placed], config), truth_px)

    aligned = kabsch(estimated.reshape(-1, 3), truth.reshape(-1, 3)).reshape(truth.shape)
    result["mpjpe_clip_mm"] = _group_errors(np.linalg.norm(aligned - truth, axis=-1))
    pelvis = _J["pelvis"]
    centred_est = estimated - estimated[:, pelvis : pelvis + 1]
    centred_truth = truth - truth[:, pelvis : pelvis + 1]
    aligned = kabsch(centred_est.reshape(-1, 3), centred_truth.reshape(-1, 3), translate=False).reshape(truth.shape)
    result["mpjpe_centred_mm"] = _group_errors(np.linalg.norm(aligned - centred_truth, axis=-1))
    return result


def evaluate_clip(joints: np.ndarray, video_path: str | os.PathLike, config: RenderConfig, seed: int | str, estimator) -> dict:
    """Render joints (F, 22, 3) to `video_path`, estimate the pose on the decoded video, and score it.

    The estimator's own left/right repair is off, so swaps are MediaPipe's. Returns
    `score_track`'s record plus the render speed.
    """
    from toau.pose.base import estimate_video

    stats = render_clip(joints, video_path, config, seed)
    track = estimate_video(video_path, estimator, fix_swaps=False)
    return {**score_track(track, clip_renderer(joints, config, seed)), "render_fps": stats.render_fps}


def evaluate_render(
    clip_ids, prepared, config: RenderConfig = RenderConfig(), estimator=None, max_frames: int | None = None
) -> dict:
    """Measure how well MediaPipe reads rendered clips: detection, left/right swaps, MPJPE per group.

    clip_ids name clips of `prepared`, a `toau.data.prepared.PreparedData`. Each clip is
    cut to its first `max_frames` joint frames when that is given, and rendered into a
    temporary file with its id as the seed. `estimator` defaults to the MediaPipe
    estimator with the renderer's focal length. Returns per-clip results under
    "clips" (see `score_track`) and their pooled summary (see `summarize`).
    """
    from toau.pose.base import get_estimator

    owned = estimator is None
    if owned:
        estimator = get_estimator("mediapipe", focal_length_ratio=config.focal_length_ratio)
    clips = []
    try:
        with tempfile.TemporaryDirectory(prefix="toau_render_") as folder:
            for clip_id in clip_ids:
                path = Path(folder) / f"{clip_id}.mp4"
                joints = prepared.joints(clip_id)[:max_frames]
                result = evaluate_clip(joints, path, config, clip_id, estimator)
                clips.append({"clip_id": clip_id, **result})
                log.info("%s: person detected in %.1f%% of frames", clip_id, 100 * result["detection_rate"])
                path.unlink()
    finally:
        if owned:
            estimator.close()
    return {"clips": clips, **summarize(clips)}


def summarize(clips: list[dict]) -> dict:
    """Pool per-clip results of `evaluate_clip` over all frames.

    Returns the frame count, the pooled and the lowest per-clip detection rate, the
    fraction of checked frames with swapped wrists and with swapped ankles, and MPJPE per
    joint group averaged over clips weighted by their detected frames.
    """
    frames = np.array([c["frames"] for c in clips], dtype=float)
    detected = np.array([c["frames"] * c["detection_rate"] for c in clips])
    summary = {
        "frames": int(frames.sum()),
        "detection_rate": float(detected.sum() / frames.sum()),
        "min_clip_detection_rate": float(min(c["detection_rate"] for c in clips)),
    }
    for pair in SIDE_PAIRS:
        checked = sum(c["side_checks"][pair][0] for c in clips if "side_checks" in c)
        swapped = sum(c["side_checks"][pair][1] for c in clips if "side_checks" in c)
        summary[f"{pair}_swap_rate"] = swapped / checked if checked else float("nan")
    for key in ("mpjpe_clip_mm", "mpjpe_centred_mm"):
        scored = [c for c in clips if key in c]
        weights = np.array([c["frames"] * c["detection_rate"] for c in scored])
        summary[key] = {
            group: float(np.average([c[key][group] for c in scored], weights=weights)) for group in scored[0][key]
        } if scored else {}
    return summary
