"""Compress a video with H.264, H.265 and AV1 at small sizes, and measure bytes, time and PSNR.

This is the pixel baseline's transmission cost: the same clip sent as video instead of
motion indices. Encoders run in the ffmpeg binary that ships with imageio-ffmpeg, driven
through ffmpeg-python. Decoding goes through `toau.io.video` (PyAV), so the frames and
timestamps are the ones the cloud side would see.

Each size's reference frames are the source video downscaled once by ffmpeg (area
averaging) to RGB; they are both the encoder input and the PSNR reference, so PSNR
measures only the codec (including its yuv420p chroma subsampling). 32x32 squashes the
16:9 source to a square, as that size is defined.

CRF scales: libx264 and libx265 0-51, libaom-av1 0-63, libsvtav1 1-63 (lower is better
quality in all four). Speed presets are fast and fixed (`CODECS`): x264 and x265
`veryfast`, libaom `cpu-used 6` in good-quality mode, SVT-AV1 `preset 10`.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import ffmpeg
import imageio_ffmpeg
import numpy as np

from toau.io.video import probe_video, read_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodecSpec:
    """One encoder: its CRF scale, the CRFs swept by default and its speed options."""

    crf_range: tuple[int, int]
    default_crfs: tuple[int, ...]
    options: dict


# AV1 default CRFs are x264's (23, 33, 43) stretched to the 0-63 scale. libaom accepts
# cpu-used up to 8, but in good-quality mode 8 gave a file byte-identical to 6 (ffmpeg
# n9.0.2 shipped with imageio-ffmpeg 0.8.1, a 640x360 clip at 320x180), so 6 is stated.
CODECS = {
    "libx264": CodecSpec((0, 51), (23, 33, 43), {"preset": "veryfast"}),
    "libx265": CodecSpec((0, 51), (23, 33, 43), {"preset": "veryfast", "x265-params": "log-level=error"}),
    "libaom-av1": CodecSpec((0, 63), (28, 41, 53), {"cpu-used": 6, "row-mt": 1, "b:v": 0}),
    "libsvtav1": CodecSpec((1, 63), (28, 41, 53), {"preset": 10}),
}
SIZES = ((320, 180), (160, 90), (80, 46), (32, 32))
SCALE_FLAGS = "area"  # ffmpeg scaler; averaging avoids aliasing at 640 -> 32
THREADS = 1  # encoder threads; one thread makes times comparable per core
CONTAINER = ".mp4"


class EncoderNotFoundError(RuntimeError):
    """The ffmpeg binary lacks a requested encoder."""


@dataclass(frozen=True)
class CodecSetting:
    """One point of the sweep: encoder, output size (even, for yuv420p) and CRF."""

    codec: str
    width: int
    height: int
    crf: int

    def __post_init__(self) -> None:
        if self.width < 2 or self.height < 2 or self.width % 2 or self.height % 2:
            raise ValueError(
                f"size {self.width}x{self.height} is invalid: yuv420p needs even width and height of at least 2; "
                f"round to e.g. {self.width + self.width % 2}x{self.height + self.height % 2}"
            )
        if self.codec in CODECS:
            low, high = CODECS[self.codec].crf_range
            if not low <= self.crf <= high:
                raise ValueError(f"CRF {self.crf} is outside {self.codec}'s scale {low}-{high}")


def default_settings(codecs=tuple(CODECS), sizes=SIZES) -> list[CodecSetting]:
    """Return every codec x size x default CRF."""
    return [
        CodecSetting(codec, width, height, crf)
        for codec in codecs for width, height in sizes for crf in CODECS[codec].default_crfs
    ]


def _options(codec: str) -> dict:
    """Speed options of a known codec; other encoders run with ffmpeg's defaults."""
    return dict(CODECS[codec].options) if codec in CODECS else {}


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with imageio-ffmpeg."""
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def available_encoders(exe: str | None = None) -> tuple[str, ...]:
    """Names of the video encoders that `ffmpeg -encoders` lists."""
    exe = exe or ffmpeg_exe()
    listing = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True).stdout
    names = []
    for line in listing.splitlines():
        fields = line.split()
        # Encoder rows start with a six-letter flag column whose first letter is the kind (V = video).
        if len(fields) >= 2 and len(fields[0]) == 6 and fields[0][0] == "V" and fields[1] != "=":
            names.append(fields[1])
    return tuple(names)


def check_encoder(codec: str, exe: str | None = None) -> None:
    """Raise EncoderNotFoundError unless the ffmpeg binary has the video encoder `codec`."""
    exe = exe or ffmpeg_exe()
    names = available_encoders(exe)
    if codec not in names:
        raise EncoderNotFoundError(
            f"video encoder {codec!r} is not available in {exe}; available video encoders: {', '.join(names)}"
        )


def reference_frames(video_path: str | os.PathLike, width: int, height: int) -> np.ndarray:
    """Decode a video and scale it to width x height RGB with ffmpeg: (F, height, width, 3) uint8."""
    out, _ = (
        ffmpeg.input(str(video_path))
        .filter("scale", width, height, flags=SCALE_FLAGS)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .global_args("-hide_banner", "-loglevel", "error")
        .run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
    )
    return np.frombuffer(out, dtype=np.uint8).reshape(-1, height, width, 3)


def encode(frames: np.ndarray, out_path: str | os.PathLike, codec: str, crf: int, fps: float, threads: int = THREADS) -> float:
    """Encode RGB frames (F, H, W, 3) uint8 at `fps` to `out_path` as yuv420p and return the seconds taken.

    The time is the wall time of the ffmpeg process: reading raw frames, colour conversion,
    encoding and muxing. Raises EncoderNotFoundError for an encoder the binary lacks and
    RuntimeError with ffmpeg's message when encoding fails.
    """
    check_encoder(codec)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (F, H, W, 3) uint8, got shape {frames.shape}")
    _, height, width, _ = frames.shape
    CodecSetting(codec, width, height, crf)  # validates size and CRF
    stream = (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
        .output(str(out_path), vcodec=codec, pix_fmt="yuv420p", crf=crf, threads=threads, **_options(codec))
        .overwrite_output()
        .global_args("-hide_banner", "-loglevel", "error")
    )
    # SVT-AV1 logs through its own logger, which ffmpeg's -loglevel does not silence.
    env = {**os.environ, "SVT_LOG": "1"}
    start = time.perf_counter()
    process = subprocess.run(stream.compile(cmd=ffmpeg_exe()), input=frames.tobytes(), capture_output=True, env=env)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        message = process.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"ffmpeg failed to encode {codec} {width}x{height} CRF {crf}: {message}")
    return seconds


def decode(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, float]:
    """Decode a video to RGB frames (F, H, W, 3) uint8, timestamps (F,) seconds and the seconds taken."""
    start = time.perf_counter()
    clip = read_video(path)
    return clip.frames, clip.timestamps, time.perf_counter() - start


def payload_bytes(path: str | os.PathLike) -> int:
    """Bytes of the compressed video stream without the container (sum of packet sizes)."""
    with av.open(str(path)) as container:
        return sum(packet.size for packet in container.demux(container.streams.video[0]) if packet.size)


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Return the PSNR (dB) of uint8 arrays from the mean squared error over all values, inf when equal."""
    if reference.shape != decoded.shape:
        raise ValueError(f"PSNR needs equal shapes, got {reference.shape} and {decoded.shape}")
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def measure(setting: CodecSetting, reference: np.ndarray, fps: float, workdir: Path) -> dict:
    """Encode reference frames (F, H, W, 3) with one setting, decode them back, and score them."""
    path = workdir / f"{setting.codec}_{setting.width}x{setting.height}_crf{setting.crf}{CONTAINER}"
    encode_seconds = encode(reference, path, setting.codec, setting.crf, fps)
    frames, timestamps, decode_seconds = decode(path)
    if frames.shape != reference.shape:
        raise RuntimeError(f"{path.name} decoded to {frames.shape}, expected {reference.shape}")
    duration = len(frames) / fps
    size = path.stat().st_size
    spec = CODECS.get(setting.codec)
    return {
        **asdict(setting),
        "crf_scale": f"{spec.crf_range[0]}-{spec.crf_range[1]}" if spec else "unknown",
        "options": _options(setting.codec),
        "frames": len(frames),
        "duration_s": duration,
        "last_timestamp_s": float(timestamps[-1]),
        "bytes": size,
        "payload_bytes": payload_bytes(path),
        "kbit_per_s": size * 8 / 1000 / duration,
        "encode_s": encode_seconds,
        "decode_s": decode_seconds,
        "psnr_db": psnr(reference, frames),
    }


def sweep(video_path: str | os.PathLike, settings: list[CodecSetting] | None = None) -> list[dict]:
    """Encode a video with every setting (default: `default_settings()`) and return one record each.

    Records hold the setting, `bytes` (file) and `payload_bytes` (stream only), bit rate,
    encode and decode seconds, and PSNR against the source scaled to the same size.
    Encoders are checked before any work starts; encoded files go to a temporary folder
    that is removed afterwards.
    """
    settings = default_settings() if settings is None else list(settings)
    for codec in sorted({s.codec for s in settings}):
        check_encoder(codec)
    fps = probe_video(video_path).fps
    if not fps > 0:
        raise ValueError(f"{video_path} has no frame rate; re-encode it with a constant rate")

    records = []
    references: dict[tuple[int, int], np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="toau_codec_") as folder:
        for setting in settings:
            size = (setting.width, setting.height)
            if size not in references:
                references[size] = reference_frames(video_path, *size)
            records.append(measure(setting, references[size], fps, Path(folder)))
            log.info("%s %dx%d CRF %d: %d bytes, %.2f dB", setting.codec, *size, setting.crf,
                     records[-1]["bytes"], records[-1]["psnr_db"])
    return records
