"""Tests of the codec sweep on a short rendered clip."""

import numpy as np
import pytest

from toau.baselines.codec import (
    CODECS, CodecSetting, EncoderNotFoundError, check_encoder, decode, encode, psnr, sweep,
)
from toau.baselines.render import RenderConfig, render_clip
from toau.data.prepared import PreparedData

FRAMES = 31  # 1 s at 30 fps
CRFS = {"libx264": (18, 30, 42), "libx265": (18, 30, 42), "libaom-av1": (20, 38, 56), "libsvtav1": (20, 38, 56)}


@pytest.fixture(scope="session")
def tiny_video(prepared_small, tmp_path_factory):
    """1 s of a real walk rendered at 320x180."""
    joints = PreparedData(prepared_small).joints("dataset-1_walk_angry_001")[:21]
    path = tmp_path_factory.mktemp("codec") / "walk.mp4"
    render_clip(joints, path, RenderConfig(width=320, height=180), seed=1)
    return path


@pytest.fixture(scope="session")
def x264_records(tiny_video):
    sizes = ((160, 90), (80, 46), (32, 32))
    return sweep(tiny_video, [CodecSetting("libx264", w, h, crf) for w, h in sizes for crf in CRFS["libx264"]])


def test_sweep_sizes(x264_records):
    assert {(r["width"], r["height"]) for r in x264_records} == {(160, 90), (80, 46), (32, 32)}
    assert all(r["frames"] == FRAMES for r in x264_records)


@pytest.mark.parametrize("size", [(160, 90), (80, 46), (32, 32)])
def test_bytes_fall_with_crf(x264_records, size):
    payload = [r["payload_bytes"] for r in x264_records if (r["width"], r["height"]) == size]
    assert payload == sorted(payload, reverse=True)
    assert payload[0] > payload[-1]


def test_psnr_finite_and_falls_with_crf(x264_records):
    for size in {(r["width"], r["height"]) for r in x264_records}:
        values = [r["psnr_db"] for r in x264_records if (r["width"], r["height"]) == size]
        assert all(np.isfinite(values))
        assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_each_codec_round_trips(tiny_video, codec):
    record = sweep(tiny_video, [CodecSetting(codec, 80, 46, CRFS[codec][1])])[0]
    assert record["frames"] == FRAMES
    assert 20.0 < record["psnr_db"] < 60.0
    assert 0 < record["payload_bytes"] < record["bytes"]


def test_decode_gives_timestamps(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(5, 46, 80, 3), dtype=np.uint8)
    path = tmp_path / "noise.mp4"
    encode(frames, path, "libx264", 0, fps=30.0)
    decoded, timestamps, _ = decode(path)
    assert decoded.shape == frames.shape
    assert np.allclose(timestamps, np.arange(5) / 30.0, atol=1e-3)


def test_missing_encoder_named():
    with pytest.raises(EncoderNotFoundError, match="'libnothing'") as error:
        check_encoder("libnothing")
    assert "libx264" in str(error.value)


def test_sweep_checks_encoders_first(tiny_video):
    with pytest.raises(EncoderNotFoundError, match="libnothing"):
        sweep(tiny_video, [CodecSetting("libx264", 32, 32, 30), CodecSetting("libnothing", 32, 32, 30)])


def test_odd_size_rejected():
    with pytest.raises(ValueError, match="even"):
        CodecSetting("libx264", 81, 46, 23)


def test_crf_outside_scale_rejected():
    with pytest.raises(ValueError, match="0-51"):
        CodecSetting("libx264", 80, 46, 60)


def test_psnr_values():
    reference = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    assert psnr(reference, reference) == float("inf")
    assert psnr(reference, reference + 1) == pytest.approx(20 * np.log10(255), abs=1e-9)
