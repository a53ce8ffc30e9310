"""Video decoding: timestamps from pts, rotation metadata, resizing, streaming, errors.

The tests encode synthetic clips with PyAV and edit metadata with the ffmpeg binary that
imageio-ffmpeg ships. The real clips come from the shared data folder.
"""

import subprocess
from fractions import Fraction

import av
import imageio_ffmpeg
import numpy as np
import pytest

from toau.io.video import Frame, VideoError, iter_frames, probe_video, read_video, sample_frames

WIDTH, HEIGHT = 64, 48
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def marker_image(index: int = 0) -> np.ndarray:
    """A dark frame with a bright block in the top-left corner and a grey level per index."""
    image = np.full((HEIGHT, WIDTH, 3), 40 + 10 * index, dtype=np.uint8)
    image[:16, :16] = 250
    return image


def write_video(path, times_ms, codec="libx264", rotation=None, options=None) -> None:
    """Encode one marker frame per timestamp (milliseconds) with a 1/1000 s time base."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index, time_ms in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(marker_image(index), format="rgb24")
            frame.pts, frame.time_base = time_ms, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def run_ffmpeg(*args) -> bytes:
    return subprocess.run([FFMPEG, "-y", "-loglevel", "error", *map(str, args)], check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def plain_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "plain.mp4"
    write_video(path, [0, 100, 200, 300, 400])
    return path


def test_read_shape_and_dtype(plain_video):
    clip = read_video(plain_video)
    assert clip.frames.shape == (5, HEIGHT, WIDTH, 3)
    assert clip.frames.dtype == np.uint8


def test_read_colours_are_rgb(plain_video):
    image = read_video(plain_video, max_frames=1).frames[0].astype(int)
    assert np.abs(image[4:12, 4:12] - 250).max() < 12
    assert np.abs(image[30:, 30:] - 40).max() < 12


def test_timestamps_follow_pts(tmp_path):
    times_ms = [0, 30, 70, 100, 180, 200]  # variable frame rate
    path = tmp_path / "vfr.mp4"
    write_video(path, times_ms)
    np.testing.assert_allclose(read_video(path).timestamps, np.array(times_ms) / 1000, atol=1e-9)


def test_max_frames(plain_video):
    assert len(read_video(plain_video, max_frames=2)) == 2


def test_max_frames_invalid(plain_video):
    with pytest.raises(ValueError, match="max_frames"):
        read_video(plain_video, max_frames=0)


def test_max_side_downscales(plain_video):
    frames = read_video(plain_video, max_side=32).frames
    assert frames.shape[1:] == (24, 32, 3)


def test_display_rotation_matches_ffmpeg(tmp_path):
    """ffmpeg's own autorotation is the reference for how a rotated file should look."""
    path = tmp_path / "rotated.mp4"
    write_video(path, [0, 100, 200], rotation=90)
    expected = run_ffmpeg("-i", path, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-")
    expected = np.frombuffer(expected, np.uint8).reshape(WIDTH, HEIGHT, 3).astype(int)
    image = read_video(path, max_frames=1).frames[0]
    assert image.shape == (WIDTH, HEIGHT, 3)
    assert np.abs(image.astype(int) - expected).mean() < 2.0


def test_display_rotation_upright(tmp_path):
    """90 degrees counter-clockwise display: the top-left marker ends up bottom-left."""
    path = tmp_path / "rotated.mp4"
    write_video(path, [0], rotation=90)
    image = read_video(path).frames[0]
    assert image[-8:, :8].mean() > 200
    assert image[:8, :8].mean() < 100


def test_probe_rotated_size(tmp_path):
    path = tmp_path / "rotated.mp4"
    write_video(path, [0, 100], rotation=-90)
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (HEIGHT, WIDTH, 270)


def test_rotate_tag_is_clockwise(plain_video, tmp_path):
    """The legacy `rotate` tag counts clockwise; ffmpeg 9 keeps it only as a Matroska tag."""
    path = tmp_path / "tagged.mkv"
    run_ffmpeg("-i", plain_video, "-c", "copy", "-metadata:s:v", "rotate=90", path)
    upright = read_video(plain_video, max_frames=1).frames[0]
    image = read_video(path, max_frames=1).frames[0]
    np.testing.assert_array_equal(image, np.rot90(upright, -1))


def test_probe_real_video(data_dir):
    info = probe_video(data_dir / "videos/pose2sim/cam01.mp4")
    assert (info.width, info.height) == (1080, 1920)
    assert info.fps == 60.0
    assert info.frame_count == 100
    assert info.codec == "h264"
    assert info.duration == pytest.approx(100 / 60, abs=1e-3)


def test_real_video_timestamps(data_dir):
    clip = read_video(data_dir / "videos/sports2d/demo.mp4", max_frames=4, max_side=480)
    np.testing.assert_allclose(clip.timestamps, np.arange(4) / 30, atol=1e-6)
    assert clip.frames.shape == (4, 270, 480, 3)


def test_raw_stream_uses_nominal_rate(plain_video, tmp_path):
    """A raw H.264 stream has no pts, so timestamps come from the demuxer's nominal 25 fps."""
    path = tmp_path / "raw.h264"
    run_ffmpeg("-i", plain_video, "-c", "copy", "-bsf:v", "h264_mp4toannexb", path)
    np.testing.assert_allclose(read_video(path).timestamps, np.arange(5) / 25)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.mp4"
    with pytest.raises(VideoError, match="absent.mp4 not found"):
        read_video(path)


def test_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video")
    with pytest.raises(VideoError, match="cannot open .*notes.mp4.*re-encode"):
        read_video(path)


def test_audio_only(tmp_path):
    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoError, match="no video stream .*audio"):
        read_video(path)


def test_no_decodable_frames(tmp_path):
    """An MP4 whose sample data is zeroed: the stream exists but no frame decodes."""
    path = tmp_path / "zeroed.mp4"
    write_video(path, [0, 100, 200], options={"movflags": "faststart"})
    data = bytearray(path.read_bytes())
    payload = data.find(b"mdat") + 4
    data[payload:] = bytes(len(data) - payload)
    path.write_bytes(bytes(data))
    with pytest.raises(VideoError, match="no decodable video frames"):
        read_video(path)
    with pytest.raises(VideoError, match="no decodable video frames"):
        list(iter_frames(path))


def test_iter_frames_is_lazy(plain_video):
    frames = iter_frames(plain_video)
    first = next(frames)
    frames.close()
    assert first.timestamp == 0.0


def fake_frames(times):
    return [Frame(np.zeros((2, 2, 3), np.uint8), t) for t in times]


def test_sample_60_to_20_fps():
    kept = [frame.timestamp for frame in sample_frames(fake_frames(np.arange(12) / 60), 20)]
    np.testing.assert_allclose(kept, np.arange(0, 12, 3) / 60)


def test_sample_30_to_20_fps():
    kept = [frame.timestamp for frame in sample_frames(fake_frames(np.arange(9) / 30), 20)]
    np.testing.assert_allclose(kept, np.array([0, 2, 3, 5, 6, 8]) / 30)


def test_sample_keeps_slower_streams():
    times = np.arange(6) / 10 + 3.5
    kept = [frame.timestamp for frame in sample_frames(fake_frames(times), 20)]
    np.testing.assert_allclose(kept, times)


def test_sample_rate_bound():
    """However irregular the input, at most fps frames per second come out (plus the first)."""
    times = np.cumsum(np.random.default_rng(0).uniform(0.001, 0.04, size=500))
    kept = np.array([frame.timestamp for frame in sample_frames(fake_frames(times), 20)])
    assert len(kept) <= (times[-1] - times[0]) * 20 + 1
    assert np.diff(kept).min() > 0


def test_sample_invalid_fps():
    with pytest.raises(ValueError, match="fps must be positive"):
        list(sample_frames(fake_frames([0.0]), 0))
