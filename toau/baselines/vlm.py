"""Qwen3-VL answering questions straight from video, and the exact number of tokens it reads.

This is the video baseline for users who have Qwen3-VL weights (none can be downloaded here, so
the tests run it on a tiny randomly initialised Qwen3-VL). `visual_token_count` reproduces the
token arithmetic of the transformers 5.25 Qwen3-VL processors without running them:

- frames are sampled at `SAMPLE_FPS` (2 fps), `MIN_FRAMES` to `MAX_FRAMES` of them, as
  `sample_frame_indices` does;
- each frame is resized to multiples of patch_size * merge_size (32 pixels) so that the padded
  clip's pixel count lies within [min_pixels, max_pixels];
- frames go in temporal groups of `temporal_patch_size` (2), and an odd frame count is padded by
  repeating the last frame;
- every group gives (h / 32) * (w / 32) `<|video_pad|>` tokens, and the prompt wraps it in
  "<t seconds><|vision_start|> ... <|vision_end|>", which are counted apart as text tokens.

A single frame cannot go through the video processor, which raises for fewer frames than the
temporal patch, so it is sent as an image through the image processor. Images have their own
pixel limits and no timestamp, and the image processor tiles the frame over the temporal patch.

Tokens per 4 s clip at the processor's default 2 fps sampling (8 frames, 4 temporal groups), with
the pixel limits of the Qwen3-VL checkpoints (`VIDEO_MIN_PIXELS`, `VIDEO_MAX_PIXELS`), next to the
motion tokens of a TOAU packet for the same 4 s (`token_table`). The text tokens are 4 x (6 + 2):
6 per timestamp is an estimate for the Qwen2 tokenizer (`timestamp_token_count`).

| video (w x h) | resized | grid (t, h, w) | visual tokens | text tokens | motion tokens, per frame | per index |
|---|---|---|---|---|---|---|
| 320 x 180 | 320 x 192 | 4, 12, 20 | 240 | 32 | 76 | 19 |
| 160 x 90 | 160 x 96 | 4, 6, 10 | 60 | 32 | 76 | 19 |
| 80 x 46 | 64 x 32 | 4, 2, 4 | 8 | 32 | 76 | 19 |
| 32 x 32 | 32 x 32 | 4, 2, 2 | 4 | 32 | 76 | 19 |

The motion counts follow the packet rules: 80 joint frames at 20 fps give 79 feature frames, 19
codebook indices, and 76 decoded frames.
"""

import importlib.util
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from transformers import (
    AutoProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen3VLForConditionalGeneration,
)

from toau.cloud.projector import FRAMES_PER_INDEX, num_motion_tokens
from toau.motion.humanml3d import FPS as MOTION_FPS

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- defaults
# Processor settings of the Qwen3-VL checkpoints (video_preprocessor_config.json and
# preprocessor_config.json). NOTE: the pixel limits come from public copies of those files, not
# from a checkpoint read here. The transformers 5.25 class defaults differ (video size 131072 to
# 786432), and `visual_token_count_for_processor` reads the values a processor really has.
PATCH_SIZE = 16  # pixels per side of a vision patch
MERGE_SIZE = 2  # merge_size x merge_size patches become one LLM token
TEMPORAL_PATCH_SIZE = 2  # frames per temporal group
VIDEO_MIN_PIXELS = 4096  # size["shortest_edge"]: bound on t * h * w over the padded frame count
VIDEO_MAX_PIXELS = 25165824  # size["longest_edge"]: likewise
IMAGE_MIN_PIXELS = 65536  # image size["shortest_edge"]: bound on h * w of one image
IMAGE_MAX_PIXELS = 16777216  # image size["longest_edge"]
MAX_VIDEO_TOKENS = 768  # per-frame token ceiling that cap_pixels_per_frame applies
SAMPLE_FPS = 2.0  # frames sampled per second of video
MIN_FRAMES = 4
MAX_FRAMES = 768
MAX_ASPECT_RATIO = 200  # the processors reject frames more elongated than this

CODEC_RESOLUTIONS = ((320, 180), (160, 90), (80, 46), (32, 32))  # (width, height) of the video baselines
DEFAULT_MAX_NEW_TOKENS = 64
CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
VISION_START_END_TOKENS = 2  # <|vision_start|> and <|vision_end|> around each group or image
QWEN3_VL_ID = "Qwen/Qwen3-VL-8B-Instruct"
DOWNLOAD_HINT = (
    f"download {QWEN3_VL_ID} with the Hugging Face CLI (`hf download {QWEN3_VL_ID} --local-dir DIR`, "
    f"or `huggingface-cli download` in older huggingface_hub releases) and pass its path"
)


# ---------------------------------------------------------------- frame sampling


def sample_frame_indices(
    total_frames: int,
    video_fps: float,
    *,
    fps: float = SAMPLE_FPS,
    min_frames: int = MIN_FRAMES,
    max_frames: int = MAX_FRAMES,
) -> np.ndarray:
    """Return the indices (N,) of the frames that the Qwen3-VL video processor samples.

    N is int(seconds * fps) clamped to [min_frames, max_frames] and to total_frames, spread evenly
    from the first to the last frame and rounded half to even, as numpy rounds.
    """
    if total_frames < 1:
        raise ValueError(f"a video needs at least 1 frame, got total_frames={total_frames}")
    if not video_fps > 0 or not fps > 0:
        raise ValueError(f"frame rates must be positive, got video_fps={video_fps} and fps={fps}")
    count = int(total_frames / video_fps * fps)
    count = min(max(count, min_frames), max_frames, total_frames)
    return np.linspace(0, total_frames - 1, count).round().astype(int)


def sampled_frame_count(
    duration_s: float,
    video_fps: float,
    *,
    fps: float = SAMPLE_FPS,
    min_frames: int = MIN_FRAMES,
    max_frames: int = MAX_FRAMES,
) -> int:
    """Return how many frames the processor samples from a clip of round(duration_s * video_fps) frames."""
    total_frames = round(duration_s * video_fps)
    indices = sample_frame_indices(total_frames, video_fps, fps=fps, min_frames=min_frames, max_frames=max_frames)
    return len(indices)


# ---------------------------------------------------------------- resize rules


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height} x {width} (height x width)")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"a {height} x {width} frame has aspect ratio {ratio:.1f}; Qwen3-VL accepts at most {MAX_ASPECT_RATIO}"
        )


def video_resize(
    num_frames: int, height: int, width: int, *, factor: int, temporal_factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Return the (height, width) that Qwen3-VL's video processor resizes every frame to.

    Both sides become multiples of `factor`, keeping the aspect ratio, so that t * h * w lies in
    [min_pixels, max_pixels]. Three quirks of transformers 5.25 are kept. For that comparison
    alone, t is num_frames rounded half to even to a multiple of `temporal_factor`. The scale
    itself uses the unpadded num_frames. A side shorter than `factor` is first scaled up to it.
    """
    if num_frames < temporal_factor:
        raise ValueError(
            f"the video processor needs at least temporal_patch_size={temporal_factor} frames, got {num_frames}; "
            f"send a single frame as an image"
        )
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    _check_size(height, width)

    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    padded_frames = round(num_frames / temporal_factor) * temporal_factor
    pixels = padded_frames * resized_height * resized_width
    if pixels > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        resized_height = max(factor, math.floor(height / beta / factor) * factor)
        resized_width = max(factor, math.floor(width / beta / factor) * factor)
    elif pixels < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        resized_height = math.ceil(height * beta / factor) * factor
        resized_width = math.ceil(width * beta / factor) * factor
    return resized_height, resized_width


def image_resize(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Return the (height, width) that the Qwen2-VL image processor (used by Qwen3-VL) resizes an image to."""
    _check_size(height, width)
    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    if resized_height * resized_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        resized_height = max(factor, math.floor(height / beta / factor) * factor)
        resized_width = max(factor, math.floor(width / beta / factor) * factor)
    elif resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_height = math.ceil(height * beta / factor) * factor
        resized_width = math.ceil(width * beta / factor) * factor
    return resized_height, resized_width


def capped_max_pixels(
    num_frames: int, *, factor: int, min_pixels: int, max_pixels: int, max_video_tokens: int = MAX_VIDEO_TOKENS
) -> int:
    """Return the clip's pixel budget under cap_pixels_per_frame (the qwen-vl-utils rule).

    Each frame gets min(max_video_tokens tokens' worth of pixels, max_pixels / num_frames), but at
    least 1.05 * min_pixels.
    """
    frame_cap = max_video_tokens * factor * factor
    per_frame = max(min(frame_cap, max_pixels // num_frames), int(min_pixels * 1.05))
    return per_frame * num_frames


# ---------------------------------------------------------------- timestamps


def group_timestamps(frame_times: Sequence[float], temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> list[float]:
    """Return one time (s) per temporal group: the mean of its first and last frame's times.

    The frame list is padded by repeating its last time, as the processor pads the frames.
    """
    times = list(frame_times)
    if not times:
        raise ValueError("frame_times is empty")
    times += [times[-1]] * (-len(times) % temporal_patch_size)
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]


def timestamp_text(seconds: float) -> str:
    return f"<{seconds:.1f} seconds>"


def timestamp_token_count(seconds: float, tokenizer: PreTrainedTokenizerBase | None = None) -> int:
    """Count the tokens of one group's timestamp text, e.g. "<0.5 seconds>".

    With a tokenizer the count is exact. Without one it assumes the Qwen2 tokenizer, whose
    pre-tokenizer splits every digit apart: "<", each digit, ".", " seconds" and ">".
    NOTE: without a tokenizer the count is an estimate; no Qwen tokenizer was at hand to check it.
    """
    text = timestamp_text(seconds)
    if tokenizer is not None:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    digits = sum(character.isdigit() for character in text)
    return digits + 4


# ---------------------------------------------------------------- token counts


@dataclass(frozen=True)
class VisualTokens:
    """Token cost of one clip for the LLM: visual placeholder tokens and the text tokens around them."""

    modality: str  # "video", or "image" for a single frame
    visual_tokens: int  # <|video_pad|> (or <|image_pad|>) tokens in input_ids
    grid: tuple[int, int, int]  # (t, h, w) in patches, the processor's video_grid_thw (image_grid_thw)
    resized: tuple[int, int]  # (height, width) in pixels after the resize
    text_tokens_per_group: tuple[int, ...]  # timestamp plus vision start/end tokens of each temporal group

    @property
    def text_tokens(self) -> int:
        return sum(self.text_tokens_per_group)

    @property
    def total_tokens(self) -> int:
        return self.visual_tokens + self.text_tokens


def image_token_count(
    height: int,
    width: int,
    *,
    patch_size: int = PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
) -> VisualTokens:
    """Count the tokens of one frame sent as an image (grid t is 1, no timestamp)."""
    resized = image_resize(height, width, factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels)
    grid = (1, resized[0] // patch_size, resized[1] // patch_size)
    return VisualTokens("image", grid[1] * grid[2] // merge_size**2, grid, resized, (VISION_START_END_TOKENS,))


def visual_token_count(
    num_frames: int,
    height: int,
    width: int,
    *,
    patch_size: int = PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    cap_pixels_per_frame: bool = False,
    max_video_tokens: int = MAX_VIDEO_TOKENS,
    image_min_pixels: int = IMAGE_MIN_PIXELS,
    image_max_pixels: int = IMAGE_MAX_PIXELS,
    frame_times: Sequence[float] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> VisualTokens:
    """Count the tokens Qwen3-VL reads for `num_frames` already-sampled frames of height x width.

    `min_pixels` and `max_pixels` bound t * h * w over the padded clip (the video processor's
    size["shortest_edge"] and size["longest_edge"]). `cap_pixels_per_frame` applies the per-frame
    cap of `capped_max_pixels`; transformers 5.25 leaves it off unless asked. One frame is counted
    as an image with the image limits. `frame_times` (s) are the sampled frames' times, which the
    processor takes as frame index / video fps; None spaces them 1 / SAMPLE_FPS apart from 0, which
    only matters for the digit count of timestamps from 10 s on. `tokenizer` makes the timestamp
    token count exact (see `timestamp_token_count`).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if num_frames == 1:
        return image_token_count(
            height,
            width,
            patch_size=patch_size,
            merge_size=merge_size,
            min_pixels=image_min_pixels,
            max_pixels=image_max_pixels,
        )

    factor = patch_size * merge_size
    if cap_pixels_per_frame:
        max_pixels = capped_max_pixels(
            num_frames, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels, max_video_tokens=max_video_tokens
        )
    resized = video_resize(
        num_frames,
        height,
        width,
        factor=factor,
        temporal_factor=temporal_patch_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    grid = (math.ceil(num_frames / temporal_patch_size), resized[0] // patch_size, resized[1] // patch_size)
    tokens_per_group = grid[1] * grid[2] // merge_size**2

    if frame_times is None:
        frame_times = [i / SAMPLE_FPS for i in range(num_frames)]
    if len(frame_times) != num_frames:
        raise ValueError(f"got {len(frame_times)} frame_times for {num_frames} frames")
    text = tuple(
        timestamp_token_count(time, tokenizer) + VISION_START_END_TOKENS
        for time in group_timestamps(frame_times, temporal_patch_size)
    )
    return VisualTokens("video", grid[0] * tokens_per_group, grid, resized, text)


def _size_bounds(size) -> tuple[int, int]:
    """Return (shortest_edge, longest_edge) of a processor's `size`, a dict or a SizeDict."""
    if isinstance(size, dict):
        return size["shortest_edge"], size["longest_edge"]
    return size.shortest_edge, size.longest_edge


def visual_token_count_for_processor(
    processor, num_frames: int, height: int, width: int, *, frame_times: Sequence[float] | None = None
) -> VisualTokens:
    """Count as `visual_token_count`, with the sizes read from a Qwen3VLProcessor (or its video processor).

    The processor's tokenizer, if it has one, makes the timestamp token count exact.
    """
    video = getattr(processor, "video_processor", processor)
    image = getattr(processor, "image_processor", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if num_frames == 1:
        if image is None:
            raise ValueError("a single frame is counted as an image, but the processor has no image_processor")
        image_min, image_max = _size_bounds(image.size)
        return image_token_count(
            height,
            width,
            patch_size=image.patch_size,
            merge_size=image.merge_size,
            min_pixels=image_min,
            max_pixels=image_max,
        )

    video_min, video_max = _size_bounds(video.size)
    return visual_token_count(
        num_frames,
        height,
        width,
        patch_size=video.patch_size,
        merge_size=video.merge_size,
        temporal_patch_size=video.temporal_patch_size,
        min_pixels=video_min,
        max_pixels=video_max,
        cap_pixels_per_frame=bool(video.cap_pixels_per_frame),  # None means off in transformers 5.25
        max_video_tokens=video.max_video_tokens,
        frame_times=frame_times,
        tokenizer=tokenizer,
    )


# ---------------------------------------------------------------- comparison with TOAU packets


def motion_token_count(duration_s: float, tokens_per: str = "frame") -> int:
    """Count the LLM tokens of a TOAU packet for a clip of `duration_s` seconds.

    A clip has round(duration_s * 20) joint frames and one feature frame fewer. Each codebook
    index covers `FRAMES_PER_INDEX` feature frames (a remainder is dropped) and decodes to as many
    frames. The projector makes one token per decoded frame ("frame") or per index ("index").
    """
    joint_frames = round(duration_s * MOTION_FPS)
    indices = (joint_frames - 1) // FRAMES_PER_INDEX
    if indices < 1:
        raise ValueError(f"a {duration_s} s clip has {joint_frames} joint frames, too few for one codebook index")
    return num_motion_tokens(indices * FRAMES_PER_INDEX, tokens_per)


def token_table(
    resolutions: Sequence[tuple[int, int]] = CODEC_RESOLUTIONS,
    durations: Sequence[float] = (4.0,),
    *,
    video_fps: float = MOTION_FPS,
    **count_options,
) -> list[dict]:
    """Return one row per (duration, resolution): Qwen3-VL's tokens next to a TOAU packet's.

    `resolutions` are (width, height); frames are sampled from a `video_fps` clip at the defaults
    of `sample_frame_indices`; `count_options` go to `visual_token_count`.
    """
    rows = []
    for duration in durations:
        total_frames = round(duration * video_fps)
        times = sample_frame_indices(total_frames, video_fps) / video_fps
        for width, height in resolutions:
            count = visual_token_count(len(times), height, width, frame_times=times.tolist(), **count_options)
            rows.append(
                {
                    "duration_s": duration,
                    "width": width,
                    "height": height,
                    "sampled_frames": len(times),
                    "resized_width": count.resized[1],
                    "resized_height": count.resized[0],
                    "grid_thw": count.grid,
                    "visual_tokens": count.visual_tokens,
                    "text_tokens": count.text_tokens,
                    "motion_tokens_frame": motion_token_count(duration, "frame"),
                    "motion_tokens_index": motion_token_count(duration, "index"),
                }
            )
    return rows


def format_token_table(rows: Sequence[dict]) -> str:
    """Render `token_table` rows as a Markdown table."""
    lines = [
        "| clip (s) | video (w x h) | resized | grid (t, h, w) | visual tokens | text tokens "
        "| motion tokens, per frame | per index |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        grid = ", ".join(str(value) for value in row["grid_thw"])
        lines.append(
            f"| {row['duration_s']:g} | {row['width']} x {row['height']} "
            f"| {row['resized_width']} x {row['resized_height']} | {grid} | {row['visual_tokens']} "
            f"| {row['text_tokens']} | {row['motion_tokens_frame']} | {row['motion_tokens_index']} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- loading


def load_qwen3_vl(
    path: str | os.PathLike, *, dtype: torch.dtype | str = "auto", device: str | torch.device | None = None
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a Qwen3-VL model and its processor from a local folder, never from the network."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Qwen3-VL model folder {folder} not found; {DOWNLOAD_HINT}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"Qwen3-VL model folder {folder} has no config.json; {DOWNLOAD_HINT}")
    # transformers 5.25 has no video processor without torchvision.
    if importlib.util.find_spec("torchvision") is None:
        raise ImportError(
            "Qwen3-VL's video processor needs torchvision; install the torchvision release built for your torch"
        )

    log.info("loading Qwen3-VL from %s", folder)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=dtype, local_files_only=True)
    if device is not None:
        model = model.to(device)
    return model.eval(), processor


# ---------------------------------------------------------------- answering


class VideoAnswer(NamedTuple):
    text: str  # the generated answer, or the letter of the best-scoring choice
    scores: np.ndarray | None  # (C,) log-likelihood of each choice's letter; None without choices
    choice: int | None  # index of the best-scoring choice; None without choices
    visual_tokens: int  # <|video_pad|> or <|image_pad|> tokens in the prompt
    prompt_tokens: int  # all tokens of the prompt, visual ones included
    grid: tuple[int, int, int]  # (t, h, w) in patches, as the processor produced it


def multiple_choice_prompt(question: str, choices: Sequence[str]) -> str:
    """Append the choices, lettered A., B., ..., and the instruction to answer with a letter."""
    if not 1 <= len(choices) <= len(CHOICE_LETTERS):
        raise ValueError(f"got {len(choices)} choices; between 1 and {len(CHOICE_LETTERS)} are supported")
    lines = [question] + [f"{letter}. {choice}" for letter, choice in zip(CHOICE_LETTERS, choices)]
    return "\n".join(lines + [CHOICE_INSTRUCTION])


def _messages(modality: str, question: str, answer: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": [{"type": modality}, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got shape {frames.shape} and dtype {frames.dtype}")
    if len(frames) == 0:
        raise ValueError("frames is empty; pass at least one frame")
    return frames


def prompt_inputs(processor, frames: np.ndarray, fps: float, question: str) -> tuple[str, dict]:
    """Render the chat prompt and run the processor on it: returns the modality and the inputs (batch of 1).

    The processor samples the frames (`sample_frame_indices` with its own settings) and takes
    frame index / fps as each frame's time.
    """
    if len(frames) == 1:
        text = processor.apply_chat_template(_messages("image", question), tokenize=False, add_generation_prompt=True)
        return "image", processor(text=[text], images=[frames[0]], return_tensors="pt")

    num_frames, height, width, _ = frames.shape
    metadata = {
        "total_num_frames": num_frames,
        "fps": float(fps),
        "height": height,
        "width": width,
        "frames_indices": list(range(num_frames)),
    }
    text = processor.apply_chat_template(_messages("video", question), tokenize=False, add_generation_prompt=True)
    return "video", processor(text=[text], videos=[frames], video_metadata=[metadata], return_tensors="pt")


def completion_text(processor, modality: str, question: str, answer: str) -> str:
    """Render the assistant turn that follows the generation prompt: the answer and the end-of-turn text."""
    prompt = processor.apply_chat_template(_messages(modality, question), tokenize=False, add_generation_prompt=True)
    full = processor.apply_chat_template(_messages(modality, question, answer), tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template does not render the assistant turn after the generation prompt, so the answer "
            f"tokens cannot be separated: prompt {prompt!r}, full chat {full!r}"
        )
    return full[len(prompt) :]


VISION_INPUTS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


@torch.no_grad()
def score_completions(model: PreTrainedModel, processor, inputs: dict, completions: Sequence[str]) -> np.ndarray:
    """Return the log-likelihood (C,) of each completion text after the prompt `inputs` (batch of 1).

    All completions run as one right-padded batch, each row with its own copy of the pixels.
    NOTE: the vision encoder therefore runs C times, where one shared encoder pass would do.
    """
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"inputs must contain one prompt, got a batch of {inputs['input_ids'].shape[0]}")
    tokenizer = processor.tokenizer
    rows = [tokenizer(completion, add_special_tokens=False)["input_ids"] for completion in completions]
    if not rows or min(len(row) for row in rows) == 0:
        raise ValueError(f"every completion needs at least one token, got {list(completions)!r}")
    prompt = inputs["input_ids"][0]
    prompt_length, longest = len(prompt), max(len(row) for row in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    ids = torch.full((len(rows), prompt_length + longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    targets = torch.zeros((len(rows), longest), dtype=torch.long)
    target_mask = torch.zeros((len(rows), longest), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :prompt_length] = prompt
        ids[i, prompt_length : prompt_length + len(row)] = torch.tensor(row)
        mask[i, : prompt_length + len(row)] = 1
        targets[i, : len(row)] = torch.tensor(row)
        target_mask[i, : len(row)] = True

    batch = {"input_ids": ids, "attention_mask": mask}
    # Completion tokens are text (type 0), and the prompt keeps its image and video types.
    token_types = torch.zeros_like(ids, dtype=inputs["mm_token_type_ids"].dtype)
    token_types[:, :prompt_length] = inputs["mm_token_type_ids"][0]
    batch["mm_token_type_ids"] = token_types
    for key in VISION_INPUTS:
        if inputs.get(key) is not None:
            batch[key] = torch.cat([inputs[key]] * len(rows))
    batch = {key: value.to(model.device) for key, value in batch.items()}

    # Position prompt_length - 1 + j predicts completion token j, so only the last longest + 1 logits are needed.
    logits = model(**batch, use_cache=False, logits_to_keep=longest + 1).logits[:, :longest]
    log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
    token_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_log_probs * target_mask).sum(dim=1).double().numpy()


@torch.no_grad()
def answer_from_video(
    model: PreTrainedModel,
    processor,
    frames: np.ndarray,
    fps: float,
    question: str,
    choices: Sequence[str] | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> VideoAnswer:
    """Answer a question about frames (T, H, W, 3) uint8 RGB shot at `fps` with a Qwen3-VL model.

    The user turn is the video followed by the question; a single frame goes in as an image. With
    `choices`, the prompt lists them lettered A, B, ... and each letter is scored by its
    log-likelihood as the whole assistant turn (letter plus the template's end-of-turn tokens), in
    one batch; nothing is generated. Without choices, the answer is decoded greedily.
    NOTE: frame times are taken as index / fps, so a variable-rate clip gets evenly spaced timestamps.
    """
    frames = _check_frames(frames)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    prompt_question = question if choices is None else multiple_choice_prompt(question, choices)
    modality, inputs = prompt_inputs(processor, frames, fps, prompt_question)

    placeholder_id = processor.image_token_id if modality == "image" else processor.video_token_id
    input_ids = inputs["input_ids"]
    visual_tokens = int((input_ids == placeholder_id).sum())
    grid_key = "image_grid_thw" if modality == "image" else "video_grid_thw"
    grid = tuple(int(value) for value in inputs[grid_key][0])
    counts = {"visual_tokens": visual_tokens, "prompt_tokens": input_ids.shape[1], "grid": grid}

    if choices is not None:
        letters = CHOICE_LETTERS[: len(choices)]
        completions = [completion_text(processor, modality, prompt_question, letter) for letter in letters]
        scores = score_completions(model, processor, inputs, completions)
        best = int(np.argmax(scores))
        return VideoAnswer(text=letters[best], scores=scores, choice=best, **counts)

    tokenizer = processor.tokenizer
    output = model.generate(
        **inputs.to(model.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    text = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()
    return VideoAnswer(text=text, scores=None, choice=None, **counts)
