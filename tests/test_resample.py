import numpy as np
import pytest

from toau.motion.resample import resample, snap_fps


def test_30_to_20_fps_frame_count():
    assert len(resample(np.zeros((90, 22, 3)), fps=30)) == 60


def test_linear_motion_interpolates_exactly():
    times = np.arange(90) / 30
    values = np.stack([times, 2 * times], axis=-1)
    out = resample(values, fps=30)
    grid = np.arange(60) / 20
    np.testing.assert_allclose(out, np.stack([grid, 2 * grid], axis=-1), atol=1e-12)


def test_near_60_fps_snaps():
    assert snap_fps(59.9999885) == 60.0
    assert snap_fps(29.97) == pytest.approx(29.97)


def test_near_60_fps_picks_every_third_frame():
    # 120 frames at "59.9999885" fps: 40 frames at 20 fps that are exactly frames 0, 3, 6, ...
    values = np.random.default_rng(0).normal(size=(120, 5))
    out = resample(values, fps=59.9999885)
    assert out.shape == (40, 5)
    np.testing.assert_allclose(out, values[::3], atol=1e-12)


def test_timestamps_with_jitter():
    rng = np.random.default_rng(1)
    times = np.arange(100) / 60 + rng.uniform(-0.002, 0.002, 100)
    values = 3.0 * times[:, None]
    out = resample(values, timestamps=times)
    grid = times[0] + np.arange(len(out)) / 20
    np.testing.assert_allclose(out[:, 0], 3.0 * grid, atol=1e-9)


def test_29_97_fps_keeps_duration():
    # 300 frames at 29.97 fps last 9.977 s: 200 frames at 20 fps (0 .. 9.95 s).
    assert len(resample(np.zeros((300, 2)), fps=29.97)) == 200


def test_single_frame_returns_it():
    np.testing.assert_array_equal(resample(np.ones((1, 3)), fps=30), np.ones((1, 3)))


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one"),
    ({"fps": 30, "timestamps": np.arange(4)}, "exactly one"),
    ({"fps": 0}, "positive"),
    ({"timestamps": np.array([0.0, 0.1, 0.1, 0.2])}, "strictly increasing"),
    ({"timestamps": np.arange(3)}, "does not match"),
])
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resample(np.zeros((4, 2)), **kwargs)
