"""Resampling of per-frame values to a fixed rate by timestamps."""

import numpy as np

TARGET_FPS = 20.0

# Capture rates such as 59.9999885 fps (a 60 fps stream with rounded frame times) are snapped to
# the nearest integer rate when they lie this close to it, so that timing noise never drops or
# duplicates a frame.
FPS_SNAP_TOLERANCE = 1e-3


def snap_fps(fps: float) -> float:
    """Return the nearest integer rate when `fps` is within FPS_SNAP_TOLERANCE of it, else `fps`."""
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"frame rate must be a positive number, got {fps}")
    nearest = round(fps)
    return float(nearest) if nearest > 0 and abs(fps - nearest) <= FPS_SNAP_TOLERANCE * nearest else float(fps)


def resample(
    values: np.ndarray,
    *,
    fps: float | None = None,
    timestamps: np.ndarray | None = None,
    target_fps: float = TARGET_FPS,
) -> np.ndarray:
    """Linearly interpolate per-frame values onto a regular grid at `target_fps`.

    values: (F, ...) samples; give either their constant `fps` or their `timestamps` (F,) in seconds.
    Returns (F', ...) with F' = floor(duration * target_fps) + 1 samples at t0 + k / target_fps,
    where duration = t_last - t0; 90 frames at 30 fps (2.967 s) give 60 frames at 20 fps.
    """
    values = np.asarray(values)
    if values.ndim < 1 or len(values) == 0:
        raise ValueError(f"resample needs at least one frame, got an array of shape {values.shape}")
    if (fps is None) == (timestamps is None):
        raise ValueError("resample needs exactly one of fps= or timestamps=")
    if target_fps <= 0:
        raise ValueError(f"target_fps must be positive, got {target_fps}")

    if timestamps is None:
        times = np.arange(len(values)) / snap_fps(fps)
    else:
        times = np.asarray(timestamps, dtype=np.float64)
        if times.shape != (len(values),):
            raise ValueError(f"timestamps shape {times.shape} does not match {len(values)} frames")
        if np.any(np.diff(times) <= 0):
            raise ValueError("timestamps must be strictly increasing; sort frames or drop duplicates first")

    # A small epsilon keeps the last grid point when the duration is a whole number of target steps.
    duration = times[-1] - times[0]
    count = int(np.floor(duration * target_fps + 1e-6)) + 1
    grid = times[0] + np.arange(count) / target_fps

    if len(times) == 1:
        return values[:1].astype(np.float64 if not np.issubdtype(values.dtype, np.floating) else values.dtype)

    # Interpolate every channel at once: position of each grid time between its two neighbours.
    right = np.clip(np.searchsorted(times, grid, side="right"), 1, len(times) - 1)
    left = right - 1
    span = times[right] - times[left]
    weight = np.clip((grid - times[left]) / span, 0.0, 1.0)
    weight = weight.reshape((-1,) + (1,) * (values.ndim - 1))
    out = values[left] * (1.0 - weight) + values[right] * weight
    return out.astype(values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64)
