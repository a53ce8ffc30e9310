"""Tests of the motion renderer: geometry, video output, camera, and MediaPipe on a rendered walk."""

import numpy as np
import pytest

from toau.baselines import render
from toau.baselines.render import RenderConfig, appearance_for, clip_renderer, kabsch, render_clip, render_frames
from toau.data.prepared import PreparedData
from toau.io.video import read_video
from toau.skeleton import JOINT_INDEX

WALK = "dataset-1_walk_angry_001"
SECONDS = 2.0


@pytest.fixture(scope="session")
def walk_joints(prepared_small) -> np.ndarray:
    """The first 2 s of a real walk, (41, 22, 3) at 20 fps."""
    return PreparedData(prepared_small).joints(WALK)[: int(SECONDS * 20) + 1]


@pytest.fixture(scope="session")
def rendered(walk_joints, tmp_path_factory):
    path = tmp_path_factory.mktemp("render") / "walk.mp4"
    stats = render_clip(walk_joints, path, RenderConfig(), seed=WALK)
    return path, stats


def test_video_frame_count(rendered):
    path, stats = rendered
    clip = read_video(path)
    assert stats.frames == 61  # 2 s at 30 fps, both ends included
    assert clip.frames.shape == (61, 360, 640, 3)
    assert np.allclose(np.diff(clip.timestamps), 1 / 30, atol=1e-3)


def test_stats_bytes_match_file(rendered):
    path, stats = rendered
    assert stats.bytes == path.stat().st_size


def test_colours_deterministic_per_seed():
    assert appearance_for(WALK) == appearance_for(WALK)
    assert appearance_for(WALK) != appearance_for("dataset-1_bow_happy_001")


def test_frames_vary_with_seed(walk_joints):
    config = RenderConfig(width=160, height=90)
    first = next(render_frames(walk_joints[:2], config, seed="a"))
    again = next(render_frames(walk_joints[:2], config, seed="a"))
    other = next(render_frames(walk_joints[:2], config, seed="b"))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_camera_keeps_pelvis_centred(walk_joints):
    config = RenderConfig()
    renderer = clip_renderer(walk_joints, config)
    pelvis = renderer.camera.project(renderer.joints)[:, JOINT_INDEX["pelvis"]]
    assert np.abs(pelvis[:, 0] - config.width / 2).max() < 0.1 * config.width
    assert np.abs(pelvis[:, 1] - config.height / 2).max() < 0.15 * config.height


def chromaticity(rgb) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=float)
    return rgb / rgb.sum()


def test_figure_drawn_where_joints_project(walk_joints):
    # Lambert shading scales the colour, so the chromaticity of a shaded pixel is the albedo's.
    config = RenderConfig()
    renderer = clip_renderer(walk_joints, config, WALK)
    appearance = renderer.appearance
    pixels = renderer.camera.project(renderer.joints)[0]
    frame = renderer.frame(0)
    thigh = np.round(0.5 * (pixels[JOINT_INDEX["left_hip"]] + pixels[JOINT_INDEX["left_knee"]])).astype(int)
    belly = np.round(pixels[JOINT_INDEX["spine2"]]).astype(int)
    assert np.allclose(chromaticity(frame[belly[1], belly[0]]), chromaticity(appearance.shirt), atol=0.02)
    assert np.allclose(chromaticity(frame[thigh[1], thigh[0]]), chromaticity(appearance.trousers), atol=0.02)


def test_mediapipe_reads_rendered_walk(rendered, walk_joints):
    from toau.pose.base import estimate_video, get_estimator

    path, _ = rendered
    config = RenderConfig()
    with get_estimator("mediapipe", focal_length_ratio=config.focal_length_ratio) as estimator:
        track = estimate_video(path, estimator, fix_swaps=False)
    score = render.score_track(track, clip_renderer(walk_joints, config, WALK))
    checked, swapped = score["side_checks"]["wrists"]
    assert score["detection_rate"] >= 0.98
    assert checked > 30
    assert swapped <= 0.05 * checked


def test_round_cone_hit_distances():
    # Ray along -Z from z = 5 toward a round cone lying on the X axis, radii 0.2 -> 0.1 over 1 m.
    origin = np.array([0.5, 0.0, 5.0], dtype=np.float32)
    start = np.array([[0.0, 0.0, 0.0]], dtype=np.float32)
    end = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    radii = np.array([[0.2, 0.1]], dtype=np.float32)
    direction = np.array([[0.0, 0.0, -1.0]], dtype=np.float32)
    t, part = render._round_cone_hit(origin, direction, start, end, radii)
    sin = 0.1
    radius = 0.2 / np.sqrt(1 - sin**2) - 0.5 * sin / np.sqrt(1 - sin**2)  # side radius at x = 0.5
    assert part[0] == 2
    assert t[0] == pytest.approx(5.0 - radius, abs=1e-5)


def test_round_cone_miss():
    origin = np.array([0.5, 0.5, 5.0], dtype=np.float32)
    t, _ = render._round_cone_hit(
        origin, np.array([[0.0, 0.0, -1.0]], np.float32), np.zeros((1, 3), np.float32),
        np.array([[1.0, 0.0, 0.0]], np.float32), np.array([[0.2, 0.1]], np.float32),
    )
    assert np.isinf(t[0])


def test_ellipsoid_hit_distance():
    rotation = np.eye(3, dtype=np.float32)[None]
    t, unit = render._ellipsoid_hit(
        np.array([0.0, 0.0, 5.0], np.float32), np.array([[0.0, 0.0, -1.0]], np.float32),
        np.zeros((1, 3), np.float32), rotation, np.array([[0.1, 0.2, 0.3]], np.float32),
    )
    assert t[0] == pytest.approx(4.7, abs=1e-5)
    assert np.allclose(unit[0], [0.0, 0.0, 1.0], atol=1e-5)


def test_kabsch_undoes_rigid_motion():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 3))
    angle = 0.7
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    moved = points @ rotation.T + np.array([1.0, -2.0, 0.5])
    assert np.allclose(kabsch(moved, points), points, atol=1e-9)


def test_rejects_bad_joints():
    with pytest.raises(ValueError, match=r"\(F, 22, 3\)"):
        next(render_frames(np.zeros((10, 21, 3))))


def test_rejects_odd_size():
    with pytest.raises(ValueError, match="even"):
        RenderConfig(width=641)
