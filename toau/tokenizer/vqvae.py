"""T2M-GPT motion VQ-VAE: 1D convolutional encoder, EMA-reset quantizer, upsampling decoder.

The layer layout and parameter names match the public T2M-GPT HumanML3D release, so that its
state dict (keys prefixed `vqvae.`) loads into `VQVAE(VQVAEConfig())` unchanged.

Public methods take channels-last features (B, T, 263) and use one code index per
`frames_per_index` = stride_t ** down_t = 4 frames. A clip whose length T is not a multiple
of 4 is cut to its first 4 * floor(T / 4) frames, as T2M-GPT's data loaders do. For example,
50 rows give 12 indices, and these decode to 48 frames that match rows 0..47.
"""

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from toau.tokenizer.quantizer import EMAQuantizer


@dataclass
class VQVAEConfig:
    """Architecture of the VQ-VAE. The defaults are the T2M-GPT HumanML3D release.

    code_dim None means "equal to width", as in the release, so that `width` alone switches
    between a small CPU model and the full 512-wide one. `quantize=False` builds the same
    encoder and decoder without a bottleneck: the continuous autoencoder bound.
    """

    input_dim: int = 263
    nb_code: int = 512
    code_dim: int | None = None
    width: int = 512
    depth: int = 3
    dilation_growth_rate: int = 3
    down_t: int = 2
    stride_t: int = 2
    ema_decay: float = 0.99
    reset_threshold: float = 1.0
    quantize: bool = True

    def __post_init__(self):
        if self.code_dim is None:
            self.code_dim = self.width
        self.ema_decay = float(self.ema_decay)
        self.reset_threshold = float(self.reset_threshold)
        for name in ("input_dim", "nb_code", "code_dim", "width", "depth", "down_t", "stride_t"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"VQVAEConfig.{name} is {value}; it must be a positive integer")
        if self.stride_t % 2:
            raise ValueError(
                f"VQVAEConfig.stride_t is {self.stride_t}; only even strides give "
                "floor(T / stride) frames with the release's kernel 2*stride, padding stride/2"
            )

    @property
    def frames_per_index(self) -> int:
        """Feature frames covered by one code index (4 in the release)."""
        return self.stride_t**self.down_t

    @classmethod
    def from_dict(cls, values: dict) -> "VQVAEConfig":
        """Build a config from a mapping such as a params.yaml section, rejecting unknown keys."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VQ-VAE config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class VQVAEOutput:
    """Result of `VQVAE.forward` on features (B, T, 263), with T' = 4 * floor(T / 4).

    reconstruction: (B, T', 263) decoded features.
    commitment_loss: scalar, MSE between encoder outputs and their codes (0 without quantizer).
    perplexity: scalar, exp(entropy) of code usage in the batch; None without quantizer.
    indices: (B, T' / 4) int64 code indices; None without quantizer.
    """

    reconstruction: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor | None
    indices: torch.Tensor | None


class ResidualBlock(nn.Module):
    """Pre-activation residual block: x + conv_k1(ReLU(conv_k3_dilated(ReLU(x))))."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ResidualStack(nn.Module):
    """`depth` residual blocks with dilations growth**(depth-1), ..., growth, 1 (9, 3, 1)."""

    def __init__(self, channels: int, depth: int, growth: int):
        super().__init__()
        dilations = [growth**level for level in reversed(range(depth))]
        self.model = nn.Sequential(*(ResidualBlock(channels, dilation) for dilation in dilations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _conv3(in_channels: int, out_channels: int) -> nn.Conv1d:
    return nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)


class Encoder(nn.Module):
    """Features (B, input_dim, T) -> latents (B, code_dim, T / stride_t**down_t)."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        stride = config.stride_t
        layers: list[nn.Module] = [_conv3(config.input_dim, config.width), nn.ReLU()]
        for _ in range(config.down_t):
            downsample = nn.Conv1d(config.width, config.width, kernel_size=2 * stride, stride=stride, padding=stride // 2)
            residual = ResidualStack(config.width, config.depth, config.dilation_growth_rate)
            layers.append(nn.Sequential(downsample, residual))
        layers.append(_conv3(config.width, config.code_dim))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Decoder(nn.Module):
    """Latents (B, code_dim, N) -> features (B, input_dim, N * stride_t**down_t), nearest upsampling."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        layers: list[nn.Module] = [_conv3(config.code_dim, config.width), nn.ReLU()]
        for _ in range(config.down_t):
            residual = ResidualStack(config.width, config.depth, config.dilation_growth_rate)
            upsample = nn.Upsample(scale_factor=config.stride_t, mode="nearest")
            layers.append(nn.Sequential(residual, upsample, _conv3(config.width, config.width)))
        layers += [_conv3(config.width, config.width), nn.ReLU(), _conv3(config.width, config.input_dim)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class VQVAE(nn.Module):
    """Motion tokenizer: features (B, T, 263) <-> code indices (B, T // 4).

    Submodules `encoder`, `decoder` and `quantizer` carry the release's parameter names.
    With `config.quantize` False, `quantizer` is None and only `forward` works.
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = (
            EMAQuantizer(config.nb_code, config.code_dim, config.ema_decay, config.reset_threshold)
            if config.quantize
            else None
        )

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Return the code indices (B, T // 4) int64 of features (B, T, 263)."""
        quantizer = self._require_quantizer("encode")
        latents = self._encode_latents(features)
        batch, length, width = latents.shape
        return quantizer.nearest(latents.reshape(batch * length, width)).view(batch, length)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Return the features (B, 4N, 263) decoded from code indices (B, N)."""
        quantizer = self._require_quantizer("decode")
        if indices.dim() != 2 or indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"indices have shape {tuple(indices.shape)} and dtype {indices.dtype}; expected (B, N) integers")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.config.nb_code):
            raise ValueError(
                f"indices span [{int(indices.min())}, {int(indices.max())}]; valid codes are 0..{self.config.nb_code - 1}"
            )
        return self._decode_latents(quantizer.lookup(indices.long()))

    def forward(self, features: torch.Tensor) -> VQVAEOutput:
        """Reconstruct features (B, T, 263) through the bottleneck; see `VQVAEOutput` for shapes."""
        latents = self._encode_latents(features)
        if self.quantizer is None:
            zero = latents.new_zeros(())
            return VQVAEOutput(self._decode_latents(latents), zero, None, None)

        batch, length, width = latents.shape
        quantized = self.quantizer(latents.reshape(batch * length, width))
        reconstruction = self._decode_latents(quantized.quantized.view(batch, length, width))
        indices = quantized.indices.view(batch, length)
        return VQVAEOutput(reconstruction, quantized.commitment_loss, quantized.perplexity, indices)

    def _encode_latents(self, features: torch.Tensor) -> torch.Tensor:
        """Features (B, T, 263) -> latents (B, T // 4, code_dim), dropping the last T mod 4 frames."""
        step = self.config.frames_per_index
        if features.dim() != 3 or features.shape[2] != self.config.input_dim:
            raise ValueError(f"features have shape {tuple(features.shape)}; expected (B, T, {self.config.input_dim})")
        if features.shape[1] < step:
            raise ValueError(f"a clip of {features.shape[1]} frames is too short; the tokenizer needs at least {step}")
        usable = features.shape[1] // step * step
        channels_first = features[:, :usable].float().transpose(1, 2)
        return self.encoder(channels_first).transpose(1, 2)

    def _decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, N, code_dim) -> features (B, 4N, 263); `forward` and `decode` share it."""
        return self.decoder(latents.transpose(1, 2)).transpose(1, 2)

    def _require_quantizer(self, method: str) -> EMAQuantizer:
        if self.quantizer is None:
            raise RuntimeError(f"VQVAE.{method} needs a codebook; this model was built with quantize=False")
        return self.quantizer
