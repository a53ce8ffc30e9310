"""Edge pipeline: video -> pose -> features -> VQ-VAE indices -> packet, offline and streaming.

Unless build/tokenizer contains a trained tokenizer, the tokenizer is a tiny randomly
initialised VQ-VAE (width 16, K = 512) with HumanML3D's feature statistics. Its packets
carry meaningless indices, so these tests judge only the path: shapes, errors, timings,
packet round trips, and that streaming gives the offline indices.
Pose comes from the MediaPipe tracks that tests/test_pose.py caches under cache_root(),
replayed by timestamp, except in the tests that run MediaPipe itself.
"""

import argparse
import json
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

import toau.pose.base as base
from toau.channel.codec import INDEX_MODEL_FILE, TokenizerNotFoundError, load_tokenizer
from toau.channel.entropy import IndexModel
from toau.channel.packet import CRC_SIZE, HEADER_SIZE, decode_packet
from toau.config import PROJECT_ROOT
from toau.edge import commands
from toau.edge.pipeline import (
    ClipTooShortError,
    EdgeParams,
    EdgeStream,
    FrameSampler,
    PoseGapError,
    encode_track,
    encoder_receptive_field,
    resolve_tokenizer,
    run_edge,
    stream_video,
)
from toau.edge.preview import project_joints, write_preview
from toau.io.video import Frame, VideoError, iter_frames, sample_frames
from toau.pose.base import FramePose, NoPersonError, PoseEstimator, PoseTrack
from toau.tokenizer.checkpoint import save_checkpoint
from toau.tokenizer.vqvae import VQVAE, VQVAEConfig

from test_pose import VIEWS, cached_track

TINY = VQVAEConfig(width=16)
TRAINED_TOKENIZER = PROJECT_ROOT / "build" / "tokenizer"


class ReplayEstimator(PoseEstimator):
    """Return the poses of a recorded track for frames at its timestamps."""

    name = "replay"

    def __init__(self, track: PoseTrack):
        self.track = track

    def process_frame(self, frame, timestamp):
        position = int(np.argmin(np.abs(self.track.timestamps - timestamp)))
        assert abs(self.track.timestamps[position] - timestamp) < 1e-6, f"no recorded pose at {timestamp} s"
        return FramePose(self.track.joints[position], self.track.confidence[position], bool(self.track.detected[position]))


class NullEstimator(PoseEstimator):
    """For streams fed with push_pose only."""

    def process_frame(self, frame, timestamp):
        raise AssertionError("push_pose streams never estimate")


@pytest.fixture(scope="module")
def tiny_dir(reference_dir, tmp_path_factory):
    """A random tiny tokenizer folder with a uniform IndexModel."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("edge") / "tiny"
    mean, std = np.load(reference_dir / "Mean.npy"), np.load(reference_dir / "Std.npy")
    save_checkpoint(VQVAE(TINY).eval(), mean, std, folder, step=0)
    IndexModel(np.ones(TINY.nb_code, dtype=np.int64)).save(folder / INDEX_MODEL_FILE)
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_dir):
    return TRAINED_TOKENIZER if (TRAINED_TOKENIZER / "model.safetensors").is_file() else tiny_dir


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def tracks(data_dir):
    return {view: cached_track(data_dir / f"videos/pose2sim/{view}.mp4") for view in VIEWS}


@pytest.fixture(scope="module")
def offline(data_dir, tracks, tokenizer):
    """run_edge on the four Pose2Sim views with replayed MediaPipe poses (about 1 s per view)."""
    return {
        view: run_edge(data_dir / f"videos/pose2sim/{view}.mp4", tokenizer, estimator=ReplayEstimator(tracks[view]))
        for view in VIEWS
    }


def write_flat_video(path, frames=10, fps=20, level=128):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), level, np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def ping_pong(track: PoseTrack, seconds: float) -> PoseTrack:
    """Play a 20 fps track forward and backward until it lasts `seconds`."""
    order = np.concatenate([np.arange(len(track)), np.arange(len(track) - 2, 0, -1)])
    frames = int(seconds * 20)
    order = np.resize(order, frames)
    return PoseTrack(track.joints[order], track.confidence[order], track.detected[order], np.arange(frames) / 20)


def push_track(stream: EdgeStream, track: PoseTrack) -> None:
    for joints, confidence, detected, timestamp in zip(track.joints, track.confidence, track.detected, track.timestamps):
        stream.push_pose(FramePose(joints, confidence, bool(detected)), timestamp)


def constant_track(frames: int, detected=None) -> PoseTrack:
    """A rest pose made of 0.2 m bones along the skeleton's rest directions, moving 1 cm per frame along X."""
    from toau.skeleton import PARENTS, RAW_OFFSETS

    rest = np.zeros((22, 3))
    for joint in range(1, 22):
        rest[joint] = rest[PARENTS[joint]] + 0.2 * RAW_OFFSETS[joint]
    joints = rest[None] + np.arange(frames)[:, None, None] * np.array([0.01, 0.0, 0.0])
    detected = np.ones(frames, bool) if detected is None else np.asarray(detected)
    joints[~detected] = np.nan
    return PoseTrack(joints, np.where(detected[:, None], 1.0, 0.0) * np.ones((1, 22)), detected, np.arange(frames) / 20)


# --- four real views, offline -----------------------------------------------------------


def test_views_give_packets(offline, tokenizer):
    for view, result in offline.items():
        packet = decode_packet(result.packet, expected_hash=tokenizer.hash)
        assert np.array_equal(packet.indices, result.indices), view


def test_views_shapes(offline):
    # 100 frames at 60 fps last 1.65 s: 34 frames at 20 fps, 33 feature rows, 8 indices.
    for view, result in offline.items():
        assert result.joints.shape == (34, 22, 3), view
        assert result.features.shape == (33, 263), view
        assert result.indices.shape == (8,), view
        assert result.frames_decoded == 100, view


def test_views_detection_rate(offline):
    for view, result in offline.items():
        assert result.detection_rate >= 0.95, f"{view}: {result.detection_rate:.2f}"


def test_views_timings_positive(offline):
    for view, result in offline.items():
        for stage, milliseconds in result.timings_ms.as_dict().items():
            assert milliseconds > 0, f"{view} {stage}"
        assert result.after_last_frame_ms > 0, view


def test_views_packet_size(offline):
    # 8 indices of 9 bits are 9 bytes, after a 27-byte header and before a 4-byte CRC.
    for view, result in offline.items():
        assert result.packet_size == HEADER_SIZE + 9 + CRC_SIZE, view
        assert result.bits_per_frame == pytest.approx(8 * 40 / 32), view


# --- streaming --------------------------------------------------------------------------


def test_stream_real_view_matches(data_dir, tracks, tokenizer, offline):
    """33 feature rows are fewer than lookahead + receptive field, so all the work is in finish."""
    result = stream_video(data_dir / "videos/pose2sim/cam02.mp4", tokenizer, estimator=ReplayEstimator(tracks["cam02"]))
    assert np.array_equal(result.indices, offline["cam02"].indices)
    assert result.packet == offline["cam02"].packet
    assert result.stream.emitted == 0


def test_stream_long_matches_offline(tracks, tokenizer):
    track = ping_pong(tracks["cam01"], seconds=15.0)
    expected = encode_track(track, tokenizer, EdgeParams())
    stream = EdgeStream(tokenizer, estimator=NullEstimator())
    push_track(stream, track)
    result = stream.finish()
    assert np.array_equal(result.indices, expected.indices)
    assert result.stream.windows == 74
    # A window j is encoded early once 4 j + 4 + 88 <= rows - 81: 32 of 74 at the last of 299 rows.
    assert result.stream.emitted == 32
    assert result.stream.kept == result.stream.emitted


def test_stream_reencodes_changed_rows(tokenizer):
    """A last frame below the floor so far shifts every root height, so emitted chunks are encoded again."""
    track = constant_track(300)
    track.joints[-1, :, 1] -= 0.5
    expected = encode_track(track, tokenizer, EdgeParams())
    stream = EdgeStream(tokenizer, estimator=NullEstimator())
    push_track(stream, track)
    result = stream.finish()
    assert np.array_equal(result.indices, expected.indices)
    assert result.stream.emitted > 0
    assert result.stream.kept < result.stream.emitted


def test_stream_rejects_old_timestamp(tokenizer):
    stream = EdgeStream(tokenizer, estimator=NullEstimator())
    stream.push_pose(FramePose.missing(), 0.5)
    with pytest.raises(ValueError, match=r"timestamp 0.500000 s is not after the previous frame's 0.500000 s"):
        stream.push_pose(FramePose.missing(), 0.5)


def test_stream_finish_twice(tokenizer):
    stream = EdgeStream(tokenizer, estimator=NullEstimator())
    push_track(stream, constant_track(9))
    stream.finish()
    with pytest.raises(RuntimeError, match="already called"):
        stream.finish()


def test_receptive_field_release_layout():
    assert encoder_receptive_field(VQVAE(VQVAEConfig(width=8)).encoder, 4) == (86, 86)


def test_receptive_field_is_exact():
    """Rows just outside the field leave index j's latent unchanged; its first and last rows change it."""
    torch.manual_seed(1)
    model = VQVAE(VQVAEConfig(width=8, depth=2)).eval()
    left, right = encoder_receptive_field(model.encoder, 4)
    features = torch.randn(1, 200, 263)
    window = 25
    first, last = 4 * window - left, 4 * window + 3 + right

    def latent_after_change(row):
        changed = features.clone()
        changed[0, row] += 3.0
        with torch.no_grad():
            return model._encode_latents(changed)[0, window]

    with torch.no_grad():
        reference = model._encode_latents(features)[0, window]
    assert torch.equal(latent_after_change(first - 1), reference)
    assert torch.equal(latent_after_change(last + 1), reference)
    assert not torch.equal(latent_after_change(first), reference)
    assert not torch.equal(latent_after_change(last), reference)


def test_sampler_matches_sample_frames():
    rng = np.random.default_rng(0)
    for times in (np.arange(100) / 60, np.arange(90) * 1001 / 30000, np.cumsum(rng.uniform(0.01, 0.08, 200))):
        frames = [Frame(None, float(t)) for t in times]
        expected = [frame.timestamp for frame in sample_frames(frames, 20.0)]
        sampler = FrameSampler(20.0)
        assert [t for t in times if sampler.keep(float(t))] == expected


# --- errors -----------------------------------------------------------------------------


def test_too_short_clip(tokenizer):
    stream = EdgeStream(tokenizer, estimator=NullEstimator())
    push_track(stream, constant_track(4))
    with pytest.raises(ClipTooShortError, match="gives 4 frames at 20 fps, but one codebook index needs at least 5"):
        stream.finish()


def test_shortest_clip_gives_one_index(tokenizer):
    assert len(encode_track(constant_track(5), tokenizer, EdgeParams()).indices) == 1


def test_long_gap(tokenizer):
    detected = np.ones(40, bool)
    detected[10:25] = False
    with pytest.raises(PoseGapError, match=r"no person in 15 consecutive frames \(0.50 s to 1.20 s\), more than max_gap_frames=10"):
        encode_track(constant_track(40, detected), tokenizer, EdgeParams())


def test_short_gap_filled(tokenizer):
    detected = np.ones(40, bool)
    detected[10:20] = False
    result = encode_track(constant_track(40, detected), tokenizer, EdgeParams())
    assert result.joints.shape == (40, 22, 3)


def test_flat_video_no_person(tmp_path, tokenizer):
    path = tmp_path / "flat.mp4"
    write_flat_video(path)
    with pytest.raises(NoPersonError, match=r"0 of 10 frames, fraction 0.00 < required 0.50"):
        run_edge(path, tokenizer)


def test_missing_video(tmp_path, tokenizer):
    with pytest.raises(VideoError, match="not found; check the path"):
        run_edge(tmp_path / "absent.mp4", tokenizer, estimator=NullEstimator())


def test_garbage_video(tmp_path, tokenizer):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(b"not a video" * 100)
    with pytest.raises(VideoError, match="cannot open .*garbage.mp4 as a video"):
        run_edge(path, tokenizer, estimator=NullEstimator())


def test_missing_tokenizer_first(tmp_path):
    """The tokenizer is checked before the video is read."""
    with pytest.raises(TokenizerNotFoundError, match="no tokenizer in .*absent"):
        run_edge(tmp_path / "absent.mp4", tmp_path / "absent")


def test_entropy_without_model(tokenizer):
    bare = (tokenizer.model, tokenizer.mean, tokenizer.std)
    with pytest.raises(ValueError, match="entropy coding needs the tokenizer's IndexModel"):
        resolve_tokenizer(bare, entropy=True)


def test_entropy_packet(tracks, tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    result = encode_track(tracks["cam03"], tokenizer, EdgeParams(entropy=True))
    packet = decode_packet(result.packet, expected_hash=tokenizer.hash, model=tokenizer.index_model)
    assert np.array_equal(packet.indices, result.indices)


# --- real MediaPipe -----------------------------------------------------------------------


@pytest.mark.slow
def test_mediapipe_end_to_end(data_dir, tokenizer):
    """MediaPipe itself on cam01 (about 4 s on 2 shared CPU cores)."""
    result = run_edge(data_dir / "videos/pose2sim/cam01.mp4", tokenizer)
    assert result.detection_rate >= 0.95
    assert np.array_equal(decode_packet(result.packet).indices, result.indices)


# --- preview and command line -------------------------------------------------------------


def test_project_centre_and_offset():
    joints = np.array([[0.0, 0.0, -2.0], [0.5, 0.25, -2.0], [0.0, 0.0, 1.0]])
    pixels = project_joints(joints, (200, 100), focal_length_ratio=0.5)
    np.testing.assert_allclose(pixels[0], [100, 50])
    np.testing.assert_allclose(pixels[1], [100 + 100 * 0.25, 50 - 100 * 0.125])
    assert np.isnan(pixels[2]).all()


def test_preview_draws_skeleton(data_dir, tracks, tmp_path):
    video = data_dir / "videos/pose2sim/cam01.mp4"
    output = tmp_path / "preview.mp4"
    assert write_preview(video, tracks["cam01"], output, max_side=192) == 100
    with av.open(str(output)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    drawn = next(iter_frames(output)).image.astype(int)
    source = next(iter_frames(video, max_side=192)).image[:, : drawn.shape[1]].astype(int)
    assert drawn.shape == (192, 108, 3)
    assert (np.abs(drawn - source).max(axis=2) > 100).sum() > 50  # skeleton pixels


def edge_command(*argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["edge", *map(str, argv)])
    return args.handler(args)


def test_cli_writes_packet_and_joints(data_dir, tracks, tokenizer_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(base._REGISTRY, "replay", lambda: ReplayEstimator(tracks["cam04"]))
    packet_path, joints_path = tmp_path / "clip.toau", tmp_path / "joints.npy"
    video = data_dir / "videos/pose2sim/cam04.mp4"
    status = edge_command(video, "-o", packet_path, "--tokenizer", tokenizer_dir, "--estimator", "replay",
                          "--save-joints", joints_path, "--json")
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["packet_bytes"] == packet_path.stat().st_size
    assert len(decode_packet(packet_path.read_bytes()).indices) == summary["indices"]
    assert np.load(joints_path).shape == (34, 22, 3)


def test_cli_table(data_dir, tracks, tokenizer_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(base._REGISTRY, "replay", lambda: ReplayEstimator(tracks["cam04"]))
    video = data_dir / "videos/pose2sim/cam04.mp4"
    edge_command(video, "-o", tmp_path / "clip.toau", "--tokenizer", tokenizer_dir, "--estimator", "replay", "--stream")
    table = capsys.readouterr().out
    for stage in ("decode", "pose", "features", "tokenizer", "packing", "total"):
        assert f"\n{stage} " in table, stage
    assert "detection rate: 1.00" in table
    assert "40 bytes, 8 indices, 10.00 bits per frame" in table
