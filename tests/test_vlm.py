"""Qwen3-VL baseline: token counts against the real transformers processors, and a tiny random model end to end.

No Qwen3-VL weights can be downloaded here, so the model is a randomly initialised 2-layer Qwen3-VL built
from a config. It checks code paths only, and its outputs are never results.
"""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
import transformers.processing_utils
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.video_processing_utils import BaseVideoProcessor, VideoProcessorMixin
from transformers.video_utils import VideoMetadata

from toau.baselines import vlm
from toau.cloud.llm import tiny_tokenizer

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
VISION_TOKENS = ["<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"]
RESOLUTIONS = [(320, 180), (160, 90), (80, 46), (32, 32), (1920, 1080)]  # (width, height)
FRAME_COUNTS = [2, 3, 4, 5, 8, 17]
# 13 frames of 1080p fit max_pixels only because t is rounded half to even (to 12, not 14);
# 20 x 12 is smaller than one 32-pixel merged patch, so the processor scales it up first.
ARITHMETIC_CASES = [(w, h, n) for w, h in RESOLUTIONS + [(20, 12)] for n in FRAME_COUNTS + [13]]
CHECKPOINT_VIDEO_SIZE = {"shortest_edge": vlm.VIDEO_MIN_PIXELS, "longest_edge": vlm.VIDEO_MAX_PIXELS}
CHECKPOINT_IMAGE_SIZE = {"shortest_edge": vlm.IMAGE_MIN_PIXELS, "longest_edge": vlm.IMAGE_MAX_PIXELS}
CLASS_DEFAULT_VIDEO_SIZE = {"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768}  # transformers 5.25

# The Qwen3-VL chat template's rendering of content items, without its system and tool parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------- processors without torchvision


class _TorchPixelOps(BaseVideoProcessor):
    """The three torchvision pixel operations of the video path, in plain torch."""

    def convert_to_rgb(self, video, input_data_format=None):
        return video  # the test frames are RGB already

    def resize(self, image, size, resample=None, **kwargs):
        shape = image.shape
        flat = image.reshape(-1, *shape[-3:]).float()
        resized = F.interpolate(flat, size=(size.height, size.width), mode="bicubic", antialias=True)
        return resized.clamp(0, 255).round().to(image.dtype).reshape(*shape[:-2], size.height, size.width)

    def normalize(self, image, mean, std, inplace=False, **kwargs):
        mean = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
        std = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
        return (image - mean) / std


class TorchOnlyQwen3VLVideoProcessor(Qwen3VLVideoProcessor, _TorchPixelOps):
    """Qwen3VLVideoProcessor with only its pixel operations replaced; sampling, sizes and patches are its own.

    NOTE: the PyPI torchvision fails to import beside the CPU build of torch installed here, so the
    real class is used only where torchvision imports. The interpolation differs slightly from
    torchvision's, which changes pixel values but no shape or token count.
    """


def video_processor(**options) -> Qwen3VLVideoProcessor:
    cls = Qwen3VLVideoProcessor if HAS_TORCHVISION else TorchOnlyQwen3VLVideoProcessor
    options.setdefault("cap_pixels_per_frame", False)
    return cls(**options)


def image_processor(**options) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(patch_size=vlm.PATCH_SIZE, merge_size=vlm.MERGE_SIZE, **options)


def build_processor(video_size=CHECKPOINT_VIDEO_SIZE) -> Qwen3VLProcessor:
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    videos = video_processor(size=video_size)
    images = image_processor(size=CHECKPOINT_IMAGE_SIZE)
    with pytest.MonkeyPatch.context() as patch:
        # Without torchvision, transformers hides the video processor base class that the processor checks against.
        module = transformers.processing_utils.transformers_module
        patch.setattr(module, "VideoProcessorMixin", VideoProcessorMixin, raising=False)
        return Qwen3VLProcessor(
            image_processor=images, tokenizer=tokenizer, video_processor=videos, chat_template=CHAT_TEMPLATE
        )


def build_tiny_model(tokenizer, seed: int = 0) -> Qwen3VLForConditionalGeneration:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 2048,
            # mrope_section splits head_dim / 2 = 4 rotary pairs over time, height and width.
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,
            "patch_size": vlm.PATCH_SIZE,
            "spatial_merge_size": vlm.MERGE_SIZE,
            "temporal_patch_size": vlm.TEMPORAL_PATCH_SIZE,
            "num_position_embeddings": 64,  # an 8 x 8 grid of learned position embeddings
            "deepstack_visual_indexes": [0],
        },
        video_token_id=ids["<|video_pad|>"],
        image_token_id=ids["<|image_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    return Qwen3VLForConditionalGeneration(config).eval()


def random_frames(count: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def processor():
    return build_processor()


@pytest.fixture(scope="module")
def tiny_model(processor):
    return build_tiny_model(processor.tokenizer)


# ---------------------------------------------------------------- frame sampling


SAMPLING_CASES = [(80, 20.0), (120, 30.0), (3, 20.0), (1, 20.0), (70, 29.97), (40000, 30.0)]  # (total frames, fps)


@pytest.mark.parametrize("total, video_fps", SAMPLING_CASES)
def test_sampling_matches_processor(total, video_fps):
    metadata = VideoMetadata(total_num_frames=total, fps=video_fps)
    expected = video_processor().sample_frames(metadata=metadata)
    assert vlm.sample_frame_indices(total, video_fps).tolist() == list(expected)


def test_sampled_frame_count():
    assert vlm.sampled_frame_count(4.0, 20.0) == 8
    assert vlm.sampled_frame_count(4.0, 30.0) == 8
    assert vlm.sampled_frame_count(1.0, 20.0) == vlm.MIN_FRAMES
    assert vlm.sampled_frame_count(0.1, 20.0) == 2
    assert vlm.sampled_frame_count(3600.0, 30.0) == vlm.MAX_FRAMES


# ---------------------------------------------------------------- counts against the video processor


def _processed_grid(processor_, frames: np.ndarray) -> tuple[int, ...]:
    out = processor_(videos=[frames], do_sample_frames=False, return_tensors="pt")
    return tuple(int(value) for value in out["video_grid_thw"][0])


@pytest.mark.parametrize("width, height", RESOLUTIONS[:4])
def test_video_count_matches_processor(width, height):
    processor_ = video_processor(size=CHECKPOINT_VIDEO_SIZE)
    for count in FRAME_COUNTS:
        expected = _processed_grid(processor_, random_frames(count, width, height))
        result = vlm.visual_token_count(count, height, width)
        assert result.grid == expected, f"{count} frames"
        assert result.visual_tokens == np.prod(expected) // vlm.MERGE_SIZE**2, f"{count} frames"


@pytest.mark.parametrize("count", [2, 3])
def test_1080p_count_matches_processor(count):
    processor_ = video_processor(size=CHECKPOINT_VIDEO_SIZE)
    expected = _processed_grid(processor_, random_frames(count, 1920, 1080))
    assert vlm.visual_token_count(count, 1080, 1920).grid == expected


@pytest.mark.parametrize("cap", [False, True])
@pytest.mark.parametrize("size", [CHECKPOINT_VIDEO_SIZE, CLASS_DEFAULT_VIDEO_SIZE], ids=["checkpoint", "class-default"])
def test_count_matches_processor_arithmetic(size, cap):
    """The processor's own patch count, for every resolution and frame count (no pixels processed)."""
    processor_ = video_processor(size=size, cap_pixels_per_frame=cap)
    for width, height, count in ARITHMETIC_CASES:
        expected = processor_.get_num_of_video_patches(count, height, width) // vlm.MERGE_SIZE**2
        result = vlm.visual_token_count_for_processor(processor_, count, height, width)
        assert result.visual_tokens == expected, f"{width} x {height}, {count} frames"


def test_class_defaults_upscale_small_video():
    processor_ = video_processor(size=CLASS_DEFAULT_VIDEO_SIZE)
    expected = _processed_grid(processor_, random_frames(8, 80, 46))
    result = vlm.visual_token_count_for_processor(processor_, 8, 46, 80)
    assert result.grid == expected
    assert result.visual_tokens > vlm.visual_token_count(8, 46, 80).visual_tokens


def test_capped_1080p_matches_processor():
    processor_ = video_processor(size=CHECKPOINT_VIDEO_SIZE, cap_pixels_per_frame=True)
    expected = _processed_grid(processor_, random_frames(2, 1920, 1080))
    assert vlm.visual_token_count(2, 1080, 1920, cap_pixels_per_frame=True).grid == expected


def test_single_frame_video_raises():
    with pytest.raises(ValueError, match="temporal_factor"):
        _processed_grid(video_processor(size=CHECKPOINT_VIDEO_SIZE), random_frames(1, 32, 32))


@pytest.mark.parametrize("width, height", RESOLUTIONS)
def test_single_frame_matches_image_processor(width, height):
    out = image_processor(size=CHECKPOINT_IMAGE_SIZE)(images=[random_frames(1, width, height)[0]], return_tensors="pt")
    expected = tuple(int(value) for value in out["image_grid_thw"][0])
    result = vlm.visual_token_count(1, height, width)
    assert result.modality == "image"
    assert result.grid == expected
    assert result.visual_tokens == np.prod(expected) // vlm.MERGE_SIZE**2


def test_count_rejects_bad_input():
    with pytest.raises(ValueError, match="num_frames"):
        vlm.visual_token_count(0, 32, 32)
    with pytest.raises(ValueError, match="aspect ratio"):
        vlm.visual_token_count(4, 32, 32 * 201)
    with pytest.raises(ValueError, match="frame_times"):
        vlm.visual_token_count(4, 32, 32, frame_times=[0.0, 0.5])


# ---------------------------------------------------------------- counts against the full processor's input_ids


def _count_ids(input_ids: torch.Tensor, processor_, token: str) -> int:
    return int((input_ids == processor_.tokenizer.convert_tokens_to_ids(token)).sum())


def _text_only_length(processor_, question: str) -> int:
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    text = processor_.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(processor_.tokenizer(text)["input_ids"])


@pytest.mark.parametrize("width, height", RESOLUTIONS[:4])
def test_video_pads_match_count(processor, width, height):
    """A 4 s clip at 20 fps, sampled by the processor, costs what token_table reports."""
    question = "what is the person doing?"
    frames = random_frames(80, width, height)
    _, inputs = vlm.prompt_inputs(processor, frames, 20.0, question)
    times = vlm.sample_frame_indices(80, 20.0) / 20.0
    expected = vlm.visual_token_count_for_processor(processor, len(times), height, width, frame_times=times.tolist())
    input_ids = inputs["input_ids"]
    (row,) = vlm.token_table([(width, height)], [4.0])

    assert _count_ids(input_ids, processor, "<|video_pad|>") == expected.visual_tokens
    assert row["visual_tokens"] == expected.visual_tokens
    assert _count_ids(input_ids, processor, "<|vision_start|>") == expected.grid[0]
    assert input_ids.shape[1] == _text_only_length(processor, question) + expected.total_tokens


@pytest.mark.parametrize("count", [2, 3, 5, 17])
def test_odd_frame_counts_in_input_ids(processor, count):
    frames = random_frames(count, 160, 90)
    # 2 fps input keeps every frame: the processor samples int(count / 2 * 2) = count of them.
    _, inputs = vlm.prompt_inputs(processor, frames, vlm.SAMPLE_FPS, "q")
    expected = vlm.visual_token_count_for_processor(processor, count, 90, 160, frame_times=list(np.arange(count) / 2))
    assert _count_ids(inputs["input_ids"], processor, "<|video_pad|>") == expected.visual_tokens
    assert inputs["input_ids"].shape[1] == _text_only_length(processor, "q") + expected.total_tokens


def test_image_pads_match_count(processor):
    _, inputs = vlm.prompt_inputs(processor, random_frames(1, 80, 46), 20.0, "q")
    expected = vlm.visual_token_count_for_processor(processor, 1, 46, 80)
    assert _count_ids(inputs["input_ids"], processor, "<|image_pad|>") == expected.visual_tokens
    assert inputs["input_ids"].shape[1] == _text_only_length(processor, "q") + expected.total_tokens


def test_timestamp_token_estimate():
    assert vlm.timestamp_token_count(0.25) == 6  # "<", "0", ".", "2", " seconds", ">"
    assert vlm.timestamp_token_count(12.5) == 7


def test_group_timestamps_pad_last_frame():
    assert vlm.group_timestamps([0.0, 1.0, 2.0]) == [0.5, 2.0]


# ---------------------------------------------------------------- comparison with TOAU packets


def test_motion_tokens_of_4s_clip():
    assert vlm.motion_token_count(4.0, "frame") == 76
    assert vlm.motion_token_count(4.0, "index") == 19


def test_token_table_rows():
    rows = vlm.token_table()
    assert [row["visual_tokens"] for row in rows] == [240, 60, 8, 4]
    assert all(row["sampled_frames"] == 8 for row in rows)
    assert all(row["text_tokens"] == 4 * (6 + 2) for row in rows)
    assert vlm.format_token_table(rows).count("\n") == len(rows) + 1


# ---------------------------------------------------------------- tiny model end to end


def test_answer_generates_text(processor, tiny_model):
    answer = vlm.answer_from_video(tiny_model, processor, random_frames(4, 32, 32), 20.0, "what?", max_new_tokens=3)
    assert isinstance(answer.text, str)
    assert answer.scores is None
    assert answer.visual_tokens == vlm.visual_token_count_for_processor(processor, 4, 32, 32).visual_tokens
    assert answer.grid == (2, 2, 2)


def test_answer_scores_choices(processor, tiny_model):
    choices = ["walk", "run", "jump"]
    answer = vlm.answer_from_video(tiny_model, processor, random_frames(5, 32, 32), 20.0, "what?", choices)
    assert answer.scores.shape == (3,)
    assert np.all(np.isfinite(answer.scores))
    assert np.all(answer.scores < 0)
    assert answer.choice == int(np.argmax(answer.scores))
    assert answer.text == "ABC"[answer.choice]


def test_batched_scores_match_single_rows(processor, tiny_model):
    """Right padding in the scoring batch must not change any choice's score."""
    frames = random_frames(4, 32, 32)
    question = vlm.multiple_choice_prompt("what?", ["walk", "run"])
    _, inputs = vlm.prompt_inputs(processor, frames, 20.0, question)
    completions = [vlm.completion_text(processor, "video", question, text) for text in ("A", "B and more words")]
    batched = vlm.score_completions(tiny_model, processor, inputs, completions)
    single = [vlm.score_completions(tiny_model, processor, inputs, [completion])[0] for completion in completions]
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_single_frame_answer_uses_image(processor, tiny_model):
    answer = vlm.answer_from_video(tiny_model, processor, random_frames(1, 32, 32), 20.0, "what?", ["a", "b"])
    assert answer.scores.shape == (2,)
    assert answer.visual_tokens == vlm.visual_token_count(1, 32, 32).visual_tokens


def test_answer_rejects_bad_frames(processor, tiny_model):
    with pytest.raises(ValueError, match="uint8"):
        vlm.answer_from_video(tiny_model, processor, np.zeros((4, 32, 32, 3), np.float32), 20.0, "q")
    with pytest.raises(ValueError, match="fps"):
        vlm.answer_from_video(tiny_model, processor, random_frames(4, 32, 32), 0.0, "q")


def test_too_many_choices_raise():
    with pytest.raises(ValueError, match="27 choices"):
        vlm.multiple_choice_prompt("q", ["x"] * 27)


# ---------------------------------------------------------------- loading


def test_missing_model_folder_raises(tmp_path):
    missing = tmp_path / "qwen3-vl"
    with pytest.raises(FileNotFoundError, match=str(missing)) as error:
        vlm.load_qwen3_vl(missing)
    assert vlm.QWEN3_VL_ID in str(error.value)


def test_folder_without_config_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        vlm.load_qwen3_vl(tmp_path)
