"""Train the VQ-VAE on normalised HumanML3D features and measure its reconstruction.

`train_vqvae` follows the T2M-GPT recipe (random 64-frame windows, AdamW, linear warm-up,
step decay, SmoothL1 losses) and resumes from the latest checkpoint in its output folder.
With the same seed and device, a resumed run ends with the same weights as an uninterrupted one.
`evaluate_vqvae` reports MPJPE in millimetres and codebook use over a whole split.
"""

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from toau.motion.humanml3d import features_to_joints
from toau.tokenizer.checkpoint import (
    checkpoint_folder,
    latest_checkpoint,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
)
from toau.tokenizer.quantizer import code_perplexity
from toau.tokenizer.vqvae import VQVAE, VQVAEConfig, VQVAEOutput

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"


@dataclass
class TrainParams:
    """Optimisation settings. The defaults are the T2M-GPT HumanML3D release recipe.

    velocity_channels: feature channels [start, end) of the release's "velocity" loss. The
    release uses (4, 67), which are root-relative joint positions, not velocities; the joint
    velocities are (193, 259).
    lr_milestones: steps after which the learning rate is multiplied by lr_gamma, counted
    from step 1 including warm-up (the release counts them after its warm-up).
    """

    iterations: int = 300_000
    batch_size: int = 256
    window: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_iterations: int = 1_000
    lr_milestones: tuple[int, ...] = (200_000,)
    lr_gamma: float = 0.05
    commit_weight: float = 0.02
    velocity_weight: float = 0.5
    velocity_channels: tuple[int, int] = (4, 67)
    log_every: int = 200
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        # YAML 1.1 reads 2e-4 (no decimal point) as a string, so numbers are converted here.
        for name in ("lr", "weight_decay", "lr_gamma", "commit_weight", "velocity_weight"):
            setattr(self, name, float(getattr(self, name)))
        self.betas = tuple(float(beta) for beta in self.betas)
        self.lr_milestones = tuple(self.lr_milestones)
        self.velocity_channels = tuple(self.velocity_channels)
        if self.checkpoint_every % self.log_every:
            raise ValueError(
                f"checkpoint_every {self.checkpoint_every} is not a multiple of log_every {self.log_every}; "
                "a resumed run would lose the partly averaged log interval"
            )
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints is {self.keep_checkpoints}; keep at least 1 to be able to resume")
        start, end = self.velocity_channels
        if not 0 <= start < end:
            raise ValueError(f"velocity_channels {self.velocity_channels} is not a channel range [start, end)")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainParams":
        """Build parameters from a mapping such as a params.yaml section, rejecting unknown keys."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown tokenizer training keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


def learning_rate(step: int, params: TrainParams) -> float:
    """Return the learning rate of 1-based `step`: linear warm-up, then x lr_gamma per milestone passed."""
    warmup = min(1.0, step / params.warmup_iterations) if params.warmup_iterations > 0 else 1.0
    decays = sum(step > milestone for milestone in params.lr_milestones)
    return params.lr * warmup * params.lr_gamma**decays


def usable_clips(features_list: list[np.ndarray], window: int) -> list[np.ndarray]:
    """Return the clips (T, D) with at least `window` frames; shorter ones are skipped, as in T2M-GPT."""
    clips = [clip for clip in features_list if len(clip) >= window]
    skipped = len(features_list) - len(clips)
    if skipped:
        logger.info("skipped %d of %d clips shorter than the %d-frame training window", skipped, len(features_list), window)
    if not clips:
        raise ValueError(f"none of the {len(features_list)} clips has {window} frames; lower the training window")
    return clips


def sample_windows(clips: list[np.ndarray], batch_size: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a batch (B, window, D): clips uniformly with replacement, then a uniform start in each."""
    chosen = rng.integers(len(clips), size=batch_size)
    starts = [int(rng.integers(len(clips[i]) - window + 1)) for i in chosen]
    return np.stack([clips[i][start : start + window] for i, start in zip(chosen, starts)]).astype(np.float32)


def training_loss(output: VQVAEOutput, target: torch.Tensor, params: TrainParams) -> dict[str, torch.Tensor]:
    """Return the weighted total and its terms for a batch target (B, T, D) and its reconstruction."""
    start, end = params.velocity_channels
    reconstruction = F.smooth_l1_loss(output.reconstruction, target)
    velocity = F.smooth_l1_loss(output.reconstruction[..., start:end], target[..., start:end])
    total = reconstruction + params.commit_weight * output.commitment_loss + params.velocity_weight * velocity
    return {"loss": total, "reconstruction": reconstruction, "commitment": output.commitment_loss, "velocity": velocity}


def train_vqvae(
    features_list: list[np.ndarray],
    config: VQVAEConfig,
    params: TrainParams,
    out_dir: str | os.PathLike,
    resume: bool = True,
    *,
    mean: np.ndarray,
    std: np.ndarray,
) -> list[dict]:
    """Train a VQ-VAE on normalised clips (T, D); return the logged history.

    mean and std (D,) are the statistics the clips were normalised with; every checkpoint
    stores them beside the weights. Checkpoints go to out_dir/step_NNNNNNN (the last
    `keep_checkpoints` are kept). With resume, training continues from the latest one.
    History entries average each `log_every` steps: step, lr, loss, reconstruction,
    commitment, velocity, perplexity (None without quantizer).
    """
    out_dir = Path(out_dir)
    window = params.window
    if window % config.frames_per_index:
        raise ValueError(f"training window {window} is not a multiple of {config.frames_per_index} frames per index")
    clips = usable_clips(features_list, window)

    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    device = torch.device(params.device)
    model = VQVAE(config).to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.lr, betas=params.betas, weight_decay=params.weight_decay
    )
    history: list[dict] = []
    start_step = 0

    latest = latest_checkpoint(out_dir)
    if latest is not None and not resume:
        raise FileExistsError(f"{out_dir} already contains checkpoints ({latest.name}); pass resume=True or use an empty folder")
    if latest is not None:
        start_step, history = _restore(latest, model, optimizer, rng, config, mean, std)
        logger.info("resuming tokenizer training from %s (step %d)", latest, start_step)
    if start_step >= params.iterations:
        logger.warning("checkpoint step %d already reaches %d iterations; nothing to train", start_step, params.iterations)
        return history

    sums: dict[str, float] = {}
    steps = tqdm(range(start_step + 1, params.iterations + 1), initial=start_step, total=params.iterations,
                 desc="vqvae", disable=not params.progress)
    for step in steps:
        lr = learning_rate(step, params)
        for group in optimizer.param_groups:
            group["lr"] = lr

        batch = torch.from_numpy(sample_windows(clips, params.batch_size, window, rng)).to(device)
        output = model(batch)
        terms = training_loss(output, batch, params)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()

        _accumulate(sums, terms, output)
        if step % params.log_every == 0 or step == params.iterations:
            entry = _history_entry(sums, step, lr)
            history.append(entry)
            sums = {}
            steps.set_postfix(loss=f"{entry['loss']:.4f}", ppl=entry["perplexity"])
        if step % params.checkpoint_every == 0 or step == params.iterations:
            _checkpoint(model, optimizer, rng, history, out_dir, step, mean, std, params.keep_checkpoints)

    (out_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n")
    return history


def _accumulate(sums: dict[str, float], terms: dict[str, torch.Tensor], output: VQVAEOutput) -> None:
    values = {name: value.detach().item() for name, value in terms.items()}
    if output.perplexity is not None:
        values["perplexity"] = float(output.perplexity)
    values["count"] = 1.0
    for name, value in values.items():
        sums[name] = sums.get(name, 0.0) + value


def _history_entry(sums: dict[str, float], step: int, lr: float) -> dict:
    count = sums.pop("count")
    entry = {"step": step, "lr": lr, "perplexity": None}
    entry.update({name: total / count for name, total in sums.items()})
    return entry


def _checkpoint(model, optimizer, rng, history, out_dir: Path, step: int, mean, std, keep: int) -> None:
    resume_state = {"torch_rng": torch.get_rng_state(), "numpy_rng": rng.bit_generator.state, "history": history}
    if torch.cuda.is_available():
        resume_state["cuda_rng"] = torch.cuda.get_rng_state_all()
    save_checkpoint(model, mean, std, checkpoint_folder(out_dir, step), step, optimizer.state_dict(), resume_state)

    older = sorted(path for path in out_dir.glob("step_*") if path.is_dir() and not path.name.endswith(".partial"))
    for path in older[:-keep]:
        shutil.rmtree(path)


def _restore(folder: Path, model, optimizer, rng, config: VQVAEConfig, mean, std) -> tuple[int, list[dict]]:
    saved_model, saved_mean, saved_std, saved_config = load_checkpoint(folder)
    if saved_config != config:
        raise ValueError(
            f"{folder} was trained with {saved_config}, not {config}; use another output folder or resume=False"
        )
    if not (np.array_equal(saved_mean, np.asarray(mean, np.float32)) and np.array_equal(saved_std, np.asarray(std, np.float32))):
        raise ValueError(f"{folder} was trained with other feature statistics; use another output folder")
    state = load_training_state(folder)
    if state is None or state.get("optimizer") is None:
        raise ValueError(f"{folder} has no optimizer state to resume from; start a new output folder")

    model.load_state_dict(saved_model.state_dict())
    if model.quantizer is not None:
        model.quantizer.load_ema_state(saved_model.quantizer.ema_state())
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    rng.bit_generator.state = state["numpy_rng"]
    return int(state["step"]), list(state["history"])


def frame_errors_mm(predicted: np.ndarray, target: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Return the pelvis-aligned mean joint error per frame (T,) in millimetres.

    predicted and target are normalised features (T, 263). Both are de-normalised and turned
    into joints (T, 22, 3) in metres, and each frame is shifted to put its pelvis at the origin.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {predicted.shape} and target {target.shape} features differ in shape")
    joints = [features_to_joints(features.astype(np.float64) * std + mean) for features in (predicted, target)]
    aligned = [positions - positions[:, :1] for positions in joints]
    return 1000.0 * np.linalg.norm(aligned[0] - aligned[1], axis=-1).mean(axis=-1)


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, features_list: list[np.ndarray], mean: np.ndarray, std: np.ndarray) -> dict:
    """Reconstruct every normalised clip (T, 263) and return split-level metrics.

    Each clip is cut to its first 4 * floor(T / 4) frames, which are the frames the tokenizer
    codes. Clips under 4 frames are skipped and counted. Keys: clips, frames, skipped_clips,
    mpjpe_mm (mean over all frames of the split, so long clips weigh more), and for a
    quantizing model codes_used (distinct codes used at least once), codebook_size and
    perplexity of code usage over the split. The last three are None without a quantizer.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    step = model.config.frames_per_index
    quantized = model.config.quantize
    counts = torch.zeros(model.config.nb_code, dtype=torch.int64)
    error_sum, frames, clips, skipped = 0.0, 0, 0, 0

    for clip in features_list:
        usable = len(clip) // step * step
        if usable == 0:
            skipped += 1
            continue
        output = model(torch.as_tensor(clip[None, :usable], dtype=torch.float32, device=device))
        reconstruction = output.reconstruction[0].cpu().numpy()
        error_sum += float(frame_errors_mm(reconstruction, clip[:usable], mean, std).sum())
        frames += usable
        clips += 1
        if output.indices is not None:
            counts += torch.bincount(output.indices.flatten().cpu(), minlength=model.config.nb_code)

    model.train(was_training)
    if clips == 0:
        raise ValueError(f"none of the {len(features_list)} clips has {step} frames to evaluate")
    return {
        "clips": clips,
        "frames": frames,
        "skipped_clips": skipped,
        "mpjpe_mm": error_sum / frames,
        "codes_used": int((counts > 0).sum()) if quantized else None,
        "codebook_size": model.config.nb_code if quantized else None,
        "perplexity": float(code_perplexity(counts)) if quantized else None,
    }
