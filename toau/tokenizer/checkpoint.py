"""Save and load tokenizer checkpoints, and load the public T2M-GPT release.

A checkpoint is a folder:
  model.safetensors    the model state dict (release parameter names, no prefix) plus the
                       feature statistics under `normalization.mean` and `normalization.std`
  config.json          {"format", "step", "model": VQVAEConfig fields}
  training_state.pt    what resuming needs: quantizer EMA buffers, optimizer state, RNG
                       states, loss history (a torch file read with weights_only=True)

Weights and statistics always travel together: features are normalised with the statistics
used in training, and other statistics silently shift every input of the encoder.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from toau.tokenizer.vqvae import VQVAE, VQVAEConfig

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_STATE_FILE = "training_state.pt"
CHECKPOINT_FORMAT = "toau-vqvae-1"
MEAN_KEY = "normalization.mean"
STD_KEY = "normalization.std"
RELEASE_PREFIX = "vqvae."
STEP_FOLDER = re.compile(r"^step_(\d+)$")
MAX_LISTED_KEYS = 10


def checkpoint_folder(out_dir: str | os.PathLike, step: int) -> Path:
    """Return the folder name used for the checkpoint of `step` inside a training folder."""
    return Path(out_dir) / f"step_{step:07d}"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """Return the complete checkpoint folder with the highest step in out_dir, or None."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    candidates = []
    for child in out_dir.iterdir():
        match = STEP_FOLDER.match(child.name)
        if match and (child / CONFIG_FILE).is_file() and (child / MODEL_FILE).is_file():
            candidates.append((int(match.group(1)), child))
    return max(candidates)[1] if candidates else None


def save_checkpoint(
    model: VQVAE,
    mean: np.ndarray,
    std: np.ndarray,
    folder: str | os.PathLike,
    step: int,
    optimizer_state: dict | None = None,
    resume_state: dict | None = None,
) -> Path:
    """Write model weights, statistics mean/std (D,), config and training state to folder.

    resume_state contains extra picklable entries for resuming (RNG states, history); it must
    contain only tensors, numbers, strings, lists and dicts so weights_only loading accepts it.
    The folder is written beside its final name and renamed at the end, so a crash leaves
    either the old checkpoint or the new one, never half of one.
    """
    folder = Path(folder)
    mean_tensor, std_tensor = _check_statistics(mean, std, model.config.input_dim)
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)

    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    tensors[MEAN_KEY] = mean_tensor
    tensors[STD_KEY] = std_tensor
    save_file(tensors, partial / MODEL_FILE)

    config = {"format": CHECKPOINT_FORMAT, "step": step, "model": model.config.to_dict()}
    (partial / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    training_state = dict(resume_state or {})
    training_state["step"] = step
    training_state["optimizer"] = optimizer_state
    training_state["quantizer_ema"] = model.quantizer.ema_state() if model.quantizer is not None else None
    torch.save(training_state, partial / TRAINING_STATE_FILE)

    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    logger.info("saved tokenizer checkpoint of step %d to %s", step, folder)
    return folder


def load_checkpoint(
    folder: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[VQVAE, np.ndarray, np.ndarray, VQVAEConfig]:
    """Load a checkpoint folder; return (model in eval mode, mean (D,), std (D,), config).

    The quantizer's EMA buffers are restored too, so training can continue from the model.
    """
    folder = Path(folder)
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found; is {folder} a tokenizer checkpoint folder?")

    metadata = json.loads((folder / CONFIG_FILE).read_text())
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{folder / CONFIG_FILE} has format {metadata.get('format')!r}; expected {CHECKPOINT_FORMAT!r}")
    config = VQVAEConfig.from_dict(metadata["model"])

    tensors = load_file(folder / MODEL_FILE)
    if MEAN_KEY not in tensors or STD_KEY not in tensors:
        raise ValueError(f"{folder / MODEL_FILE} lacks {MEAN_KEY!r} or {STD_KEY!r}; weights without statistics cannot be used")
    mean = tensors.pop(MEAN_KEY).numpy()
    std = tensors.pop(STD_KEY).numpy()
    model = VQVAE(config)
    model.load_state_dict(tensors, strict=True)

    state = load_training_state(folder)
    if state is not None and state.get("quantizer_ema") is not None and model.quantizer is not None:
        model.quantizer.load_ema_state(state["quantizer_ema"])
    return model.to(device).eval(), mean, std, config


def load_training_state(folder: str | os.PathLike) -> dict | None:
    """Return the training state saved beside a checkpoint (tensors on CPU), or None."""
    path = Path(folder) / TRAINING_STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def load_t2m_gpt_release(
    path: str | os.PathLike, mean: np.ndarray, std: np.ndarray, device: str | torch.device = "cpu"
) -> tuple[VQVAE, np.ndarray, np.ndarray, VQVAEConfig]:
    """Load the T2M-GPT HumanML3D VQ-VAE release (`net_last.pth`) with its statistics.

    The file is a torch pickle whose key `net` is a state dict with `vqvae.`-prefixed keys.
    It stores no statistics, and the release was trained with the mean/std that T2M-GPT
    keeps beside its text-motion evaluator, not HumanML3D's Mean.npy/Std.npy. The caller must
    therefore pass the statistics it was trained with; they come back checked, in the same
    (model, mean, std, config) form as `load_checkpoint`.
    """
    config = VQVAEConfig()
    mean, std = (tensor.numpy() for tensor in _check_statistics(mean, std, config.input_dim))

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("net"), dict):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a T2M-GPT checkpoint: expected a dict with a state dict under 'net', found {found}")

    model = VQVAE(config)
    state = _strip_release_prefix(checkpoint["net"], model.state_dict(), path)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), mean, std, config


def _strip_release_prefix(release: dict, expected: dict, path) -> dict:
    """Map `vqvae.`-prefixed release tensors onto model names; raise listing every mismatch."""
    renamed = {}
    unexpected = []
    for key, value in release.items():
        name = key[len(RELEASE_PREFIX):]
        if key.startswith(RELEASE_PREFIX) and name in expected:
            renamed[name] = value
        else:
            unexpected.append(key)
    missing = sorted(RELEASE_PREFIX + name for name in expected if name not in renamed)
    mismatched = sorted(
        f"{RELEASE_PREFIX + name}: file {tuple(getattr(value, 'shape', ()))}, model {tuple(expected[name].shape)}"
        for name, value in renamed.items()
        if not isinstance(value, torch.Tensor) or value.shape != expected[name].shape
    )
    problems = [
        f"{label} ({len(items)}): {_abbreviate(items)}"
        for label, items in (("missing keys", missing), ("unexpected keys", sorted(unexpected)), ("shape mismatches", mismatched))
        if items
    ]
    if problems:
        raise ValueError(
            f"{path} does not match the T2M-GPT HumanML3D VQ-VAE (width 512, K 512): " + "; ".join(problems)
        )
    return renamed


def _abbreviate(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED_KEYS])
    hidden = len(items) - MAX_LISTED_KEYS
    return shown + (f", ... and {hidden} more" if hidden > 0 else "")


def _check_statistics(mean, std, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return mean and std as float32 tensors (dim,), checking shape, finiteness and std > 0."""
    mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
    std = torch.as_tensor(np.asarray(std, dtype=np.float32))
    for name, value in (("mean", mean), ("std", std)):
        if tuple(value.shape) != (dim,):
            raise ValueError(f"feature {name} has shape {tuple(value.shape)}; expected ({dim},)")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"feature {name} contains NaN or infinite values")
    if not bool((std > 0).all()):
        raise ValueError(f"feature std has {int((std <= 0).sum())} non-positive entries; normalisation would divide by zero")
    return mean.contiguous(), std.contiguous()
