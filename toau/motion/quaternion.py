"""Quaternion and rotation helpers on NumPy arrays.

Quaternions are (w, x, y, z), unit length, and rotate column vectors: v' = q v q*.
All functions broadcast over leading dimensions.
"""

import numpy as np


def qnormalize(q: np.ndarray) -> np.ndarray:
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def qinv(q: np.ndarray) -> np.ndarray:
    """Conjugate, which is the inverse of a unit quaternion."""
    return q * np.array([1.0, -1.0, -1.0, -1.0], dtype=q.dtype)


def qmul(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Hamilton product q r: the rotation r followed by q."""
    w1, x1, y1, z1 = np.moveaxis(q, -1, 0)
    w2, x2, y2, z2 = np.moveaxis(r, -1, 0)
    return np.stack([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ], axis=-1)


def qrot(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) by quaternions q (..., 4)."""
    w = q[..., :1]
    u = q[..., 1:]
    uv = np.cross(u, v)
    return v + 2.0 * (w * uv + np.cross(u, uv))


def qbetween(v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
    """Shortest-arc rotation that takes direction v0 to direction v1 (undefined for opposite vectors)."""
    axis = np.cross(v0, v1)
    w = np.sqrt((v0 ** 2).sum(-1, keepdims=True) * (v1 ** 2).sum(-1, keepdims=True)) + (v0 * v1).sum(-1, keepdims=True)
    return qnormalize(np.concatenate([w, axis], axis=-1))


def qyaw(angle: np.ndarray) -> np.ndarray:
    """Rotation by `angle` radians about +Y, (...,) -> (..., 4)."""
    half = np.asarray(angle, dtype=np.float64) / 2.0
    zero = np.zeros_like(half)
    return np.stack([np.cos(half), zero, np.sin(half), zero], axis=-1)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) -> (..., 3, 3)."""
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=-1).reshape(q.shape[:-1] + (3, 3))


def quat_to_cont6d(q: np.ndarray) -> np.ndarray:
    """Continuous 6D rotation: the matrix's first column, then its second, (..., 4) -> (..., 6)."""
    m = quat_to_matrix(q)
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def euler_to_matrix(angles: np.ndarray, order: str) -> np.ndarray:
    """Intrinsic Euler angles in radians, (..., 3) in the order of `order` (e.g. "ZXY") -> (..., 3, 3).

    BVH channels apply in the order they are listed: R = R_first @ R_second @ R_third.
    """
    if len(order) != 3 or not set(order) <= set("XYZ"):
        raise ValueError(f"Euler order must be three of X, Y, Z, got {order!r}")
    result = None
    for i, axis in enumerate(order):
        c, s = np.cos(angles[..., i]), np.sin(angles[..., i])
        one, zero = np.ones_like(c), np.zeros_like(c)
        if axis == "X":
            rows = (one, zero, zero, zero, c, -s, zero, s, c)
        elif axis == "Y":
            rows = (c, zero, s, zero, one, zero, -s, zero, c)
        else:
            rows = (c, -s, zero, s, c, zero, zero, zero, one)
        m = np.stack(rows, axis=-1).reshape(angles.shape[:-1] + (3, 3))
        result = m if result is None else result @ m
    return result
