"""Instruction tuning of the motion projector: the LLM stays frozen, AdamW updates only the projector.

Training runs through progressive stages, e.g. captions first and question answering next, each
given as `(name, samples, steps)`. Batches are drawn from a seeded permutation per stage and epoch,
so step s of a stage always sees the same samples, and a run resumed from its checkpoint ends
with the same weights as an uninterrupted one.

Files in `out_dir`: `projector.safetensors` + `projector.json` (the final projector),
`history.json` (the loss of every step) and `checkpoint/` (what a resumed run needs).
"""

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from toau.cloud.model import MotionLanguageModel, Sample
from toau.cloud.projector import load_projector, save_projector

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
HISTORY_FILE = "history.json"

Stage = tuple[str, Sequence[Sample], int]  # (name, samples, number of optimiser steps)


@dataclass(frozen=True)
class TrainParams:
    lr: float = 1e-3  # LLaVA-style projector alignment uses 1e-3 with AdamW
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_clip: float = 1.0  # max global L2 norm of the projector gradient
    checkpoint_every: int = 100  # steps; a checkpoint is also written at the end of every stage
    seed: int = 0


def as_train_params(params: TrainParams | dict | None) -> TrainParams:
    if params is None or isinstance(params, TrainParams):
        return params or TrainParams()
    known = {field.name for field in fields(TrainParams)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown training parameters {unknown}; known ones are {sorted(known)}")
    return TrainParams(**params)


# ---------------------------------------------------------------- batch order


@lru_cache(maxsize=64)
def _epoch_permutation(num_samples: int, seed: int, stage_index: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, stage_index, epoch]).permutation(num_samples)


def batch_indices(num_samples: int, batch_size: int, seed: int, stage_index: int, step: int) -> list[int]:
    """Return the sample indices of one step: consecutive slices of per-epoch seeded permutations."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    return [
        int(_epoch_permutation(num_samples, seed, stage_index, position // num_samples)[position % num_samples])
        for position in positions
    ]


# ---------------------------------------------------------------- checkpoints


def _save_checkpoint(out_dir: Path, model: MotionLanguageModel, optimizer: torch.optim.Optimizer, state: dict):
    """Write the checkpoint to a temporary folder and swap it in, so a crash never leaves half of one."""
    folder = out_dir / CHECKPOINT_DIR
    staging = out_dir / f"{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    save_projector(model.projector, staging)
    torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
    (staging / STATE_FILE).write_text(json.dumps(state) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def _resume(out_dir: Path, model: MotionLanguageModel, optimizer: torch.optim.Optimizer, stages: list[Stage]) -> dict:
    """Load the checkpoint in `out_dir` if there is one and return the training state."""
    folder = out_dir / CHECKPOINT_DIR
    if not (folder / STATE_FILE).is_file():
        return {"stage_names": [], "stage_index": 0, "step": 0, "history": []}
    state = json.loads((folder / STATE_FILE).read_text())
    names = [name for name, _, _ in stages]
    done = state["stage_names"][: state["stage_index"] + 1]
    if names[: len(done)] != done:
        raise ValueError(
            f"the checkpoint in {folder} was written for stages {state['stage_names']}, not {names}; "
            f"use a new out_dir or delete {folder}"
        )
    current_steps = stages[state["stage_index"]][2] if state["stage_index"] < len(stages) else 0
    if state["step"] > current_steps:
        raise ValueError(
            f"the checkpoint in {folder} is at step {state['step']} of stage {done[-1]!r}, "
            f"which now has only {current_steps} steps; use a new out_dir"
        )
    model.projector.load_state_dict(load_projector(folder).state_dict())
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, weights_only=True))
    log.info("resuming from %s at stage %d, step %d", folder, state["stage_index"], state["step"])
    return state


# ---------------------------------------------------------------- training loop


def _check_frozen(model: MotionLanguageModel):
    trainable = [name for name, parameter in model.llm.named_parameters() if parameter.requires_grad]
    if trainable:
        raise ValueError(f"the LLM must be frozen, but {trainable[:3]} require grad; call toau.cloud.llm.freeze")


def _check_no_llm_grad(model: MotionLanguageModel):
    with_grad = [name for name, parameter in model.llm.named_parameters() if parameter.grad is not None]
    if with_grad:
        raise RuntimeError(f"LLM parameters {with_grad[:3]} received gradients; only the projector may learn")


def train_projector(
    model: MotionLanguageModel,
    stages: Sequence[Stage],
    params: TrainParams | dict | None,
    out_dir: str | os.PathLike,
) -> list[dict]:
    """Train `model.projector` through `stages` in order and return the loss history.

    Each history entry is {"stage": name, "step": step within the stage, "loss": float}. If
    `out_dir` contains a checkpoint of the same stages, training continues from it.
    """
    params = as_train_params(params)
    stages = list(stages)
    for name, samples, steps in stages:
        if steps > 0 and len(samples) == 0:
            raise ValueError(f"stage {name!r} has {steps} steps but no samples")
    _check_frozen(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    optimizer = torch.optim.AdamW(model.projector.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    state = _resume(out_dir, model, optimizer, stages)
    state["stage_names"] = [name for name, _, _ in stages]
    state["params"] = asdict(params)
    model.train()

    for stage_index in range(state["stage_index"], len(stages)):
        name, samples, steps = stages[stage_index]
        start = state["step"] if stage_index == state["stage_index"] else 0
        progress = tqdm(range(start, steps), desc=f"projector {name}", initial=start, total=steps)
        for step in progress:
            indices = batch_indices(len(samples), params.batch_size, params.seed, stage_index, step)
            loss = model.loss([samples[i] for i in indices])
            loss.backward()
            _check_no_llm_grad(model)
            torch.nn.utils.clip_grad_norm_(model.projector.parameters(), params.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            state["history"].append({"stage": name, "step": step, "loss": loss.item()})
            progress.set_postfix(loss=f"{loss.item():.4f}")
            state.update(stage_index=stage_index, step=step + 1)
            if (step + 1) % params.checkpoint_every == 0 and step + 1 < steps:
                _save_checkpoint(out_dir, model, optimizer, state)
        # The stage is done: the next run starts at step 0 of the next stage.
        state.update(stage_index=stage_index + 1, step=0)
        _save_checkpoint(out_dir, model, optimizer, state)
        log.info("stage %s done after %d steps", name, steps)

    model.eval()
    save_projector(model.projector, out_dir)
    (out_dir / HISTORY_FILE).write_text(json.dumps(state["history"], indent=1) + "\n")
    return state["history"]
