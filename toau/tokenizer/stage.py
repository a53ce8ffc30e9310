"""The tokenizer stage: train the VQ-VAE and its continuous bound, evaluate them, and write the results.

`run_tokenizer_stage` reads the prepared dataset and the `tokenizer` section of params.yaml and writes
  out_dir/                       the tokenizer folder that `toau.channel.codec.load_tokenizer` reads,
                                 plus history.json and autoencoder/ (the continuous bound)
  results_dir/tokenizer_metrics.json, tokenizer_metrics.md, figures/tokenizer_loss.png

Training runs in `runs_dir/<kind>-<key>`, where the key hashes everything that shapes the weights
(model and training settings, statistics, training code). A rerun with the same key resumes an
interrupted run or reuses a finished one, so the stage can rebuild out_dir without retraining.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from toau.channel.codec import INDEX_MODEL_FILE, MEAN_FILE, STD_FILE, Tokenizer, packet_bytes
from toau.channel.entropy import IndexModel
from toau.channel.packet import payload_bits
from toau.config import cache_root
from toau.data.prepared import PreparedData, stats_checksum
from toau.provenance import provenance
from toau.tokenizer import checkpoint as checkpoint_module
from toau.tokenizer import quantizer as quantizer_module
from toau.tokenizer import train as train_module
from toau.tokenizer import vqvae as vqvae_module
from toau.tokenizer.checkpoint import latest_checkpoint, load_checkpoint, load_training_state, save_checkpoint
from toau.tokenizer.train import HISTORY_FILE, TrainParams, evaluate_vqvae, train_vqvae
from toau.tokenizer.vqvae import VQVAE, VQVAEConfig

logger = logging.getLogger(__name__)

METRICS_FILE = "tokenizer_metrics.json"
TABLE_FILE = "tokenizer_metrics.md"
LOSS_FIGURE = Path("figures") / "tokenizer_loss.png"
BOUND_FOLDER = "autoencoder"
TIMING_FILE = "timing.json"
# Training settings that change no weight, so they stay out of the run key.
BOOKKEEPING = ("log_every", "checkpoint_every", "keep_checkpoints", "progress")
# NOTE: other code, such as the torch version, is not in the run key; delete runs_dir after changing it.
TRAINING_SOURCES = (vqvae_module, quantizer_module, train_module, checkpoint_module)
# Targets on the test split that this project set for the tokenizer. They are reported, not enforced.
TARGET_MPJPE_MM = 40.0
TARGET_CODES_USED = 460
STAGE_DEFAULTS = {
    "threads": 1,
    "bound": {"iterations": 2000},
    "entropy": {"fit_split": "train", "eval_split": "test"},
    "eval_splits": ["val", "test"],
    "velocity_eval_channels": [[4, 67], [193, 259]],
}


# ---------------------------------------------------------------- helpers


def normalise(features_list: list[np.ndarray], mean: np.ndarray, std: np.ndarray) -> list[np.ndarray]:
    """Return (features - mean) / std as float32 for every clip (T, 263)."""
    return [((features - mean) / std).astype(np.float32) for features in features_list]


def stage_params(params: dict) -> dict:
    """Return the `tokenizer` section with STAGE_DEFAULTS filled in for missing keys."""
    merged = {**STAGE_DEFAULTS, **params}
    for key in ("model", "train"):
        if key not in merged:
            raise KeyError(f"the tokenizer parameters lack the {key!r} section; see params.yaml")
    return merged


def run_key(config: VQVAEConfig, params: TrainParams, mean: np.ndarray, std: np.ndarray) -> str:
    """Return a 12-hex-digit key of the settings, statistics and training code that shape the weights."""
    settings = {name: value for name, value in dataclasses.asdict(params).items() if name not in BOOKKEEPING}
    digest = hashlib.sha256(json.dumps([config.to_dict(), settings], sort_keys=True).encode())
    digest.update(stats_checksum(mean, std).encode())
    for module in TRAINING_SOURCES:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


def train_run(
    clips: list[np.ndarray], config: VQVAEConfig, params: TrainParams, runs_dir: Path, mean, std
) -> tuple[VQVAE, list[dict], dict]:
    """Train (or resume, or reuse) a run on normalised clips; return (model, history, timing).

    timing: seconds of training summed over the invocations that trained, and the iterations.
    """
    kind = "vqvae" if config.quantize else "autoencoder"
    folder = runs_dir / f"{kind}-{run_key(config, params, mean, std)}"
    timing_path = folder / TIMING_FILE
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"seconds": 0.0}

    latest = latest_checkpoint(folder)
    state = load_training_state(latest) if latest is not None else None
    if state is not None and state["step"] == params.iterations:
        logger.info("reusing the finished %s run in %s", kind, folder)
        history = list(state["history"])
    else:
        start = time.perf_counter()
        history = train_vqvae(clips, config, params, folder, mean=mean, std=std)
        timing["seconds"] += time.perf_counter() - start
        timing["iterations"] = params.iterations
        timing_path.write_text(json.dumps(timing) + "\n")

    model, _, _, _ = load_checkpoint(latest_checkpoint(folder))
    logger.info("%s run %s: %d iterations, %.0f s of training", kind, folder, params.iterations, timing["seconds"])
    return model, history, timing


@torch.no_grad()
def encode_clips(model: VQVAE, clips: list[np.ndarray]) -> list[np.ndarray]:
    """Return the indices (T // 4,) of each normalised clip (T, 263); clips under 4 frames give none."""
    model.eval()
    step = model.config.frames_per_index
    indices = []
    for clip in clips:
        if len(clip) < step:
            indices.append(np.zeros(0, dtype=np.int64))
            continue
        indices.append(model.encode(torch.as_tensor(clip[None]))[0].numpy())
    return indices


@torch.no_grad()
def channel_losses(model: VQVAE, clips: list[np.ndarray], ranges: list[list[int]]) -> dict[str, float]:
    """Return the SmoothL1 reconstruction loss of each channel range [start, end), averaged over all frames.

    Keys are "start:end". The training loss uses the same measure on one range (velocity_channels).
    """
    model.eval()
    step = model.config.frames_per_index
    sums = {f"{start}:{end}": 0.0 for start, end in ranges}
    frames = 0
    for clip in clips:
        usable = len(clip) // step * step
        if usable == 0:
            continue
        target = torch.as_tensor(clip[None, :usable])
        reconstruction = model(target).reconstruction
        for start, end in ranges:
            loss = F.smooth_l1_loss(reconstruction[..., start:end], target[..., start:end], reduction="sum")
            sums[f"{start}:{end}"] += float(loss) / (end - start)
        frames += usable
    return {name: total / frames for name, total in sums.items()}


def packet_sizes(tokenizer: Tokenizer, indices_list: list[np.ndarray], frame_counts: list[int]) -> dict:
    """Return bits per frame of fixed and range-coded packets over clips, frame-weighted.

    Frames are the 4N feature frames that the N indices cover. payload: index bits only
    (fixed: 9N; range-coded: the coded bytes, without the model hash). packet: every byte
    sent (header, model hash, payload, CRC). Clips without indices are left out.
    """
    covered = sum(len(indices) * tokenizer.frames_per_index for indices in indices_list)
    result = {"clips": sum(len(indices) > 0 for indices in indices_list), "frames": covered, "fps": tokenizer.fps}
    for name, entropy in (("fixed", False), ("entropy", True)):
        payload = packet = 0
        for indices, frame_count in zip(indices_list, frame_counts):
            if len(indices) == 0:
                continue
            payload += payload_bits(indices, name, tokenizer.index_model, codebook_size=tokenizer.codebook_size)
            packet += 8 * len(packet_bytes(tokenizer, indices, frame_count, entropy=entropy))
        result[name] = {
            "payload_bits_per_frame": payload / covered,
            "packet_bits_per_frame": packet / covered,
            "packet_bits_per_second": packet / covered * tokenizer.fps,
        }
    return result


# ---------------------------------------------------------------- reports


def metrics_table(metrics: dict) -> str:
    """Return a Markdown summary of the metrics written by `run_tokenizer_stage`."""
    lines = [
        "| model | split | MPJPE (mm) | codes used | perplexity | clips | frames |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind in ("vqvae", "autoencoder"):
        for split, row in metrics[kind]["splits"].items():
            codes = "-" if row["codes_used"] is None else f"{row['codes_used']} / {row['codebook_size']}"
            perplexity = "-" if row["perplexity"] is None else f"{row['perplexity']:.1f}"
            lines.append(
                f"| {kind} | {split} | {row['mpjpe_mm']:.1f} | {codes} | {perplexity} | {row['clips']} | {row['frames']} |"
            )
    packets = metrics["packets"]
    lines += [
        "",
        f"Packets on the {packets['split']} split ({packets['clips']} clips, {packets['frames']} frames at {packets['fps']} fps):",
        "",
        "| payload | payload bits/frame | packet bits/frame | packet bits/s |",
        "|---|---:|---:|---:|",
    ]
    for name in ("fixed", "entropy"):
        row = packets[name]
        lines.append(
            f"| {name} | {row['payload_bits_per_frame']:.3f} | {row['packet_bits_per_frame']:.3f} | "
            f"{row['packet_bits_per_second']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_losses(histories: dict[str, list[dict]], path: Path) -> None:
    """Plot training loss terms and code perplexity against the step, one line per model and term."""
    import pandas as pd
    import seaborn as sns
    from matplotlib.figure import Figure  # no pyplot, so a notebook's plotting backend stays as it is

    rows = [
        {"model": kind, "step": entry["step"], "term": term, "value": entry[term], "perplexity": entry["perplexity"]}
        for kind, history in histories.items()
        for entry in history
        for term in ("loss", "reconstruction", "velocity", "commitment")
        if entry.get(term)
    ]
    frame = pd.DataFrame(rows)
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    sns.lineplot(data=frame, x="step", y="value", hue="term", style="model", ax=axes[0])
    axes[0].set(yscale="log", ylabel="loss (normalised features)", title="Training loss")
    axes[0].legend(fontsize=8, ncol=2)
    perplexity = frame[frame["perplexity"].notna()].drop_duplicates(["model", "step"])
    sns.lineplot(data=perplexity, x="step", y="perplexity", ax=axes[1])
    axes[1].set(ylabel="code perplexity per batch", title="VQ-VAE codebook use")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------- stage


def fit_index_model(model: VQVAE, mean, std, clips: list[np.ndarray]) -> Tokenizer:
    """Return the tokenizer of a trained model with an IndexModel fitted on the indices of normalised clips."""
    index_model = IndexModel.fit(encode_clips(model, clips), model.config.nb_code)
    return Tokenizer(model, mean, std, index_model)


def evaluate_model(model: VQVAE, split_clips: dict[str, list[np.ndarray]], mean, std, ranges) -> dict:
    """Return evaluate_vqvae metrics and channel-range losses of each split."""
    return {
        "splits": {split: evaluate_vqvae(model, clips, mean, std) for split, clips in split_clips.items()},
        "channel_losses": {split: channel_losses(model, clips, ranges) for split, clips in split_clips.items()},
    }


def write_tokenizer(folder: Path, model: VQVAE, mean, std, index_model: IndexModel, history: list[dict], step: int) -> None:
    """Write the tokenizer folder that `load_tokenizer` reads, replacing any earlier one."""
    save_checkpoint(model, mean, std, folder, step)
    np.save(folder / MEAN_FILE, mean)
    np.save(folder / STD_FILE, std)
    index_model.save(folder / INDEX_MODEL_FILE)
    (folder / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n")


def run_tokenizer_stage(
    prepared_dir: str | os.PathLike,
    params: dict,
    out_dir: str | os.PathLike,
    results_dir: str | os.PathLike,
    runs_dir: str | os.PathLike | None = None,
) -> dict:
    """Train, evaluate and write the tokenizer and its results; return the metrics dict.

    params: the `tokenizer` section of params.yaml (model, train, bound, entropy, eval_splits,
    velocity_eval_channels, threads). runs_dir: training runs (default cache_root()/tokenizer_runs).
    """
    params = stage_params(params)
    out_dir, results_dir = Path(out_dir), Path(results_dir)
    runs_dir = Path(runs_dir) if runs_dir is not None else cache_root() / "tokenizer_runs"
    if runs_dir.resolve().is_relative_to(out_dir.resolve()):
        raise ValueError(f"runs_dir {runs_dir} is inside out_dir {out_dir}, which the stage replaces; choose another")
    torch.set_num_threads(int(params["threads"]))

    data = PreparedData(prepared_dir)
    mean, std = data.stats()
    loaded: dict[str, list[np.ndarray]] = {}

    def clips_of(split: str) -> list[np.ndarray]:
        if split not in loaded:
            loaded[split] = normalise(data.features(split), mean, std)
        return loaded[split]

    train_clips = clips_of("train")
    split_clips = {split: clips_of(split) for split in params["eval_splits"]}

    config = VQVAEConfig.from_dict(params["model"])
    train_params = TrainParams.from_dict({**params["train"], "progress": False})
    model, history, timing = train_run(train_clips, config, train_params, runs_dir, mean, std)

    bound_config = dataclasses.replace(config, quantize=False)
    bound_params = dataclasses.replace(train_params, **params["bound"])
    bound, bound_history, bound_timing = train_run(train_clips, bound_config, bound_params, runs_dir, mean, std)

    entropy = params["entropy"]
    tokenizer = fit_index_model(model, mean, std, clips_of(entropy["fit_split"]))
    packet_clips = clips_of(entropy["eval_split"])
    packets = packet_sizes(tokenizer, encode_clips(model, packet_clips), [len(clip) for clip in packet_clips])
    packets["split"] = entropy["eval_split"]
    index_model = tokenizer.index_model

    ranges = params["velocity_eval_channels"]
    metrics = {
        "vqvae": {**evaluate_model(model, split_clips, mean, std, ranges), "training": timing},
        "autoencoder": {**evaluate_model(bound, split_clips, mean, std, ranges), "training": bound_timing},
        "packets": packets,
        "codebook_hash": tokenizer.hash.hex(),
        "index_model_hash": index_model.hash.hex(),
    }
    test = metrics["vqvae"]["splits"].get("test")
    if test is not None:
        metrics["targets"] = {
            "mpjpe_mm": TARGET_MPJPE_MM,
            "codes_used": TARGET_CODES_USED,
            "met": bool(test["mpjpe_mm"] <= TARGET_MPJPE_MM and test["codes_used"] >= TARGET_CODES_USED),
        }

    write_tokenizer(out_dir, model, mean, std, index_model, history, train_params.iterations)
    save_checkpoint(bound, mean, std, out_dir / BOUND_FOLDER, bound_params.iterations)
    (out_dir / BOUND_FOLDER / HISTORY_FILE).write_text(json.dumps(bound_history, indent=1) + "\n")

    results_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "provenance": provenance(
            params=params, seed=train_params.seed, split={"train": "train", "eval": params["eval_splits"]},
            prepared_dir=str(prepared_dir), stats_sha256=stats_checksum(mean, std),
        ),
        **metrics,
    }
    (results_dir / METRICS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    (results_dir / TABLE_FILE).write_text(metrics_table(metrics))
    plot_losses({"vqvae": history, "autoencoder": bound_history}, results_dir / LOSS_FIGURE)
    return metrics
