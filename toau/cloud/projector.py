"""Motion projector: a two-layer MLP from normalised 263-dim motion features to LLM embeddings.

Two granularities (`ProjectorConfig.tokens_per`):
- "frame": one LLM token per feature frame, (T, 263) -> (T, d_model);
- "index": one LLM token per VQ-VAE codebook index, i.e. per `frames_per_index` = 4 frames. The 4
  frames of a group are concatenated (not pooled), so the MLP keeps their order:
  (T, 263) -> (ceil(T / 4), d_model). A last, partial group is filled by repeating its final frame.
"""

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from toau.motion.humanml3d import FEATURE_DIM

FRAMES_PER_INDEX = 4  # VQ-VAE temporal downsampling: one codebook index per 4 frames
TOKENS_PER_MODES = ("frame", "index")
WEIGHTS_FILE = "projector.safetensors"
CONFIG_FILE = "projector.json"


@dataclass(frozen=True)
class ProjectorConfig:
    llm_hidden_size: int  # d_model of the language backbone
    tokens_per: Literal["frame", "index"] = "frame"
    feature_dim: int = FEATURE_DIM
    frames_per_index: int = FRAMES_PER_INDEX
    hidden_size: int | None = None  # width of the MLP's hidden layer; None means llm_hidden_size

    def __post_init__(self):
        if self.tokens_per not in TOKENS_PER_MODES:
            raise ValueError(f"tokens_per={self.tokens_per!r} is invalid; expected one of {TOKENS_PER_MODES}")

    @property
    def frames_per_token(self) -> int:
        return 1 if self.tokens_per == "frame" else self.frames_per_index


def num_motion_tokens(num_frames: int, tokens_per: str = "frame", frames_per_index: int = FRAMES_PER_INDEX) -> int:
    """Return how many LLM tokens a motion of `num_frames` feature frames becomes."""
    if tokens_per not in TOKENS_PER_MODES:
        raise ValueError(f"tokens_per={tokens_per!r} is invalid; expected one of {TOKENS_PER_MODES}")
    if num_frames < 1:
        raise ValueError(f"a motion needs at least 1 frame, got {num_frames}")
    return num_frames if tokens_per == "frame" else math.ceil(num_frames / frames_per_index)


class MotionProjector(nn.Module):
    """Linear -> GELU -> Linear from motion frames (or groups of frames) to LLM input embeddings."""

    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        in_features = config.feature_dim * config.frames_per_token
        hidden = config.hidden_size or config.llm_hidden_size
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, config.llm_hidden_size))

    def num_tokens(self, num_frames: int) -> int:
        return num_motion_tokens(num_frames, self.config.tokens_per, self.config.frames_per_index)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project features (..., T, feature_dim) to embeddings (..., num_tokens(T), llm_hidden_size)."""
        if features.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"motion features have width {features.shape[-1]}, expected {self.config.feature_dim}: "
                f"pass (T, {self.config.feature_dim}) normalised HumanML3D features"
            )
        group = self.config.frames_per_token
        num_frames = features.shape[-2]
        short = -num_frames % group
        if short:
            last = features[..., -1:, :].expand(*features.shape[:-2], short, features.shape[-1])
            features = torch.cat([features, last], dim=-2)
        grouped = features.reshape(*features.shape[:-2], -1, group * self.config.feature_dim)
        return self.mlp(grouped)


def save_projector(projector: MotionProjector, folder: str | os.PathLike) -> Path:
    """Write the weights (safetensors) and the config (JSON) into `folder` and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in projector.state_dict().items()}
    save_file(state, folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(projector.config), indent=2) + "\n")
    return folder


def load_projector(folder: str | os.PathLike) -> MotionProjector:
    """Read a projector written by `save_projector`."""
    folder = Path(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"projector file {folder / name} not found; train one with train_projector")
    config = ProjectorConfig(**json.loads((folder / CONFIG_FILE).read_text()))
    projector = MotionProjector(config)
    projector.load_state_dict(load_file(folder / WEIGHTS_FILE))
    return projector
