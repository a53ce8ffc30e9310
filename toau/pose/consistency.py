"""Cross-view consistency: how well joint trajectories estimated from synchronised views agree.

Each view's joints live in its own camera-aligned frame, so before comparing, every frame
is root-centred (pelvis at the origin) and one rigid rotation per clip and pair of views
(Kabsch, no scale) maps one view onto the other. What remains is disagreement in body
pose, reported as MPJPE in millimetres, overall and per `toau.skeleton.JOINT_GROUPS`.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from toau.skeleton import JOINT_GROUPS, JOINT_INDEX, NUM_JOINTS

ROOT = JOINT_INDEX["pelvis"]


def kabsch_rotation(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Return the proper rotation R (3, 3) minimising sum |R @ s - t|^2 over point pairs (N, 3).

    The points are used as given (not centred), so centre them first for a rigid fit.
    """
    covariance = target.T @ source
    u, _, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag([1.0, 1.0, sign]) @ vt


def root_centre(joints: np.ndarray) -> np.ndarray:
    """Subtract the pelvis from every joint in each frame: (F, 22, 3) -> (F, 22, 3)."""
    return joints - joints[:, ROOT : ROOT + 1]


def align_to(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Root-centre both clips and rotate `source` onto `target` with one rotation.

    source and target (F, 22, 3); frames with any NaN in either clip are left out of the
    fit (and stay NaN). Returns the aligned source (F, 22, 3).
    """
    if source.shape != target.shape or source.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"expected two (F, {NUM_JOINTS}, 3) arrays, got {source.shape} and {target.shape}")
    source, target = root_centre(source), root_centre(target)
    valid = np.isfinite(source).all(axis=(1, 2)) & np.isfinite(target).all(axis=(1, 2))
    if not valid.any():
        raise ValueError("no frame has finite joints in both clips")
    rotation = kabsch_rotation(source[valid].reshape(-1, 3), target[valid].reshape(-1, 3))
    return source @ rotation.T


def mpjpe_mm(prediction: np.ndarray, target: np.ndarray, joints: Sequence[int] | None = None) -> float:
    """Mean per-joint position error in mm over finite frames, for all or the given joints."""
    error = np.linalg.norm(prediction - target, axis=-1)
    if joints is not None:
        error = error[:, list(joints)]
    return float(np.nanmean(error) * 1000.0)


def _common_finite_frames(views: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Keep the frames where every view has finite joints."""
    valid = np.logical_and.reduce([np.isfinite(view).all(axis=(1, 2)) for view in views])
    if not valid.any():
        raise ValueError("no frame has finite joints in every view")
    return [view[valid] for view in views]


def cross_view_mpjpe(views: Sequence[np.ndarray], canonical: bool = True) -> dict[str, dict[str, float]]:
    """Compare every pair of synchronised views: views is a list of joints (F, 22, 3).

    Only frames with finite joints in every view count. With `canonical`, each view first
    goes through `toau.motion.humanml3d.canonicalize` (bones rescaled to the HumanML3D
    skeleton, floor, origin and facing fixed), as the motion features see it.
    Returns {"a-b": {"all": mm, "torso": mm, "legs": mm, "arms": mm}, ...} for each pair
    of view indices a < b, plus "mean", the average over pairs. The pelvis is 0 after
    root-centring and counts in "all" and "torso", as in the usual root-relative MPJPE.
    """
    if len(views) < 2:
        raise ValueError(f"need at least two views, got {len(views)}")
    frames = {len(view) for view in views}
    if len(frames) != 1:
        raise ValueError(f"views must have the same number of frames, got {sorted(frames)}")
    views = _common_finite_frames([np.asarray(view, dtype=np.float64) for view in views])
    if canonical:
        from toau.motion.humanml3d import canonicalize

        views = [canonicalize(view) for view in views]

    results = {}
    for a, b in itertools.combinations(range(len(views)), 2):
        aligned = align_to(views[a], views[b])
        target = root_centre(views[b])
        scores = {"all": mpjpe_mm(aligned, target)}
        for group, joints in JOINT_GROUPS.items():
            scores[group] = mpjpe_mm(aligned, target, joints)
        results[f"{a}-{b}"] = scores
    keys = next(iter(results.values())).keys()
    results["mean"] = {key: float(np.mean([pair[key] for pair in results.values()])) for key in keys}
    return results
