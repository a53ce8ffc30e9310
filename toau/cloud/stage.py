"""The cloud stages: instruction tuning of the motion projector, and the motion QA benchmark.

`run_projector_stage` trains the projector on what the cloud receives. Each training motion
goes through the tokenizer (normalise, VQ-VAE encode, decode), so the projector learns on
decoded features (4N, 263), normalised with the tokenizer's statistics. Decoded motions are
cached one .npy file per motion in a folder named after the tokenizer's codebook hash, so a new
tokenizer never reuses them. Training runs in `runs_dir/projector-<key>`, where the key hashes
everything that shapes the weights, so a rerun resumes an interrupted run or reuses a finished
one. The stage writes
  out_dir/      projector.safetensors + projector.json (`load_projector`), history.json, cloud.json
  results_dir/  projector_metrics.json, figures/projector_loss.png

`run_benchmark_stage` answers the multiple-choice questions of one split by log-likelihood with
  packet       indices -> packet bytes -> decoded features -> projector -> LLM (the system)
  continuous   the original features without quantisation, same projector (an upper bound)
  shuffled     the packet path with the motion of another question of the same category, so the
               trained projector's answer priors stay but the question's own motion is gone
  no_motion    the question alone, with no motion tokens
  chance       a seeded uniform random choice
and writes results_dir/benchmark_motion.{json,csv,md} and figures/benchmark_accuracy.png.
"""

import csv
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from toau.bench import captions as captions_module
from toau.bench import labels as labels_module
from toau.bench import questions as questions_module
from toau.bench.captions import TextSample, training_samples
from toau.bench.questions import CROSSFADE_FRAMES, Question, build_benchmark, motion_features, question_features
from toau.bench.scoring import random_baseline, score, score_rows
from toau.channel.codec import Tokenizer, decode_motion, load_tokenizer, packet_bytes
from toau.cloud import model as model_module
from toau.cloud import projector as projector_module
from toau.cloud import train as train_module
from toau.cloud.llm import load_backbone, sha256_file
from toau.cloud.model import MotionLanguageModel, Sample
from toau.cloud.projector import WEIGHTS_FILE, MotionProjector, ProjectorConfig, load_projector, save_projector
from toau.cloud.train import CHECKPOINT_DIR, HISTORY_FILE, STATE_FILE, train_projector
from toau.config import cache_root
from toau.data.prepared import PreparedData, stats_checksum
from toau.motion.humanml3d import FEATURE_DIM
from toau.provenance import provenance
from toau.tokenizer.checkpoint import MODEL_FILE

log = logging.getLogger(__name__)

CLOUD_FILE = "cloud.json"
TIMING_FILE = "timing.json"
PROJECTOR_METRICS_FILE = "projector_metrics.json"
PROJECTOR_LOSS_FIGURE = Path("figures") / "projector_loss.png"
BENCHMARK_STEM = "benchmark_motion"
BENCHMARK_FIGURE = Path("figures") / "benchmark_accuracy.png"
CUSTOM_LLM = "custom"  # the LLM name recorded when the caller passes a loaded backbone

METHODS = ("packet", "continuous", "shuffled", "no_motion", "chance")
MOTION_METHODS = ("packet", "continuous", "shuffled", "no_motion")
BYTES_PER_KB = 1000
LOSS_WINDOW = 20  # steps averaged for the first and last loss of a training stage

# Bump when the sample building in this module changes, so that runs keyed before it are retrained.
SAMPLES_VERSION = 1
# Settings that change no weight, so they stay out of the run key.
BOOKKEEPING = ("threads", "device")
TRAIN_BOOKKEEPING = ("checkpoint_every",)
# Code that shapes the trained weights; its source enters the run key.
TRAINING_SOURCES = (train_module, model_module, projector_module, captions_module, questions_module, labels_module)

CLOUD_DEFAULTS = {
    "llm": "smollm2-135m-instruct",
    "tokens_per": "frame",
    "projector_hidden": None,
    "threads": 1,
    "device": "cpu",
    "max_frames": None,
    "sample_seed": 0,
    "stages": {"captions": 100, "qa": 100},
    "train": {},
}
BENCHMARK_DEFAULTS = {
    "split": "test",
    "seed": 0,
    "per_category": None,
    "threads": 1,
    "device": "cpu",
    "examples": 6,
    "max_new_tokens": 32,
}


# ---------------------------------------------------------------- parameters


def _with_defaults(params: dict, defaults: dict, section: str) -> dict:
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in the {section} parameters; known keys are {sorted(defaults)}")
    return {**defaults, **params}


def cloud_params(params: dict) -> dict:
    """Return the `cloud` section of params.yaml with CLOUD_DEFAULTS filled in, rejecting unknown keys."""
    return _with_defaults(params, CLOUD_DEFAULTS, "cloud")


def benchmark_params(params: dict) -> dict:
    """Return the `benchmark` section of params.yaml with BENCHMARK_DEFAULTS filled in, rejecting unknown keys."""
    return _with_defaults(params, BENCHMARK_DEFAULTS, "benchmark")


# ---------------------------------------------------------------- motion as the cloud receives it


def normalise(features: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """Return (features - mean) / std (T, 263) float32 with the tokenizer's statistics."""
    return ((features - tokenizer.mean) / tokenizer.std).astype(np.float32)


def decoded_features(tokenizer: Tokenizer, features: np.ndarray) -> np.ndarray:
    """Return the normalised features (4N, 263) that the cloud decodes from raw features (T, 263), N = T // 4."""
    return normalise(tokenizer.decode(tokenizer.encode(features)), tokenizer)


def packet_features(tokenizer: Tokenizer, features: np.ndarray) -> tuple[np.ndarray, bytes]:
    """Send raw features (T, 263) through a fixed-width packet; return normalised decoded features (4N, 263) and the packet."""
    data = packet_bytes(tokenizer, tokenizer.encode(features), len(features))
    decoded, _ = decode_motion(tokenizer, data)
    return normalise(decoded, tokenizer), data


def motion_name(clip_ids: Sequence[str]) -> str:
    """File stem of a motion spec: one clip id, or the ids of an ordered pair joined by '+'."""
    return "+".join(clip_ids)


def motion_rows(clip_ids: Sequence[str], frames: dict[str, int]) -> int:
    """Feature rows of a motion spec from the joint frames of its clips (a pair overlaps by the cross-fade)."""
    joint_frames = sum(frames[clip_id] for clip_id in clip_ids) - CROSSFADE_FRAMES * (len(clip_ids) - 1)
    return joint_frames - 1


class DecodedMotions:
    """Normalised decoded features (4N, 263) of motion specs, cached as root/<codebook hash>/<motion>.npy."""

    def __init__(self, prepared: PreparedData, tokenizer: Tokenizer, root: str | os.PathLike):
        self.prepared = prepared
        self.tokenizer = tokenizer
        self.folder = Path(root) / tokenizer.hash.hex()

    def path(self, clip_ids: Sequence[str]) -> Path:
        return self.folder / f"{motion_name(clip_ids)}.npy"

    def __call__(self, clip_ids: Sequence[str]) -> np.ndarray:
        path = self.path(clip_ids)
        if path.is_file():
            return np.load(path)
        decoded = decoded_features(self.tokenizer, motion_features(clip_ids, self.prepared))
        self.folder.mkdir(parents=True, exist_ok=True)
        # Written beside its final name and renamed, so a concurrent reader never loads half a file.
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")
        np.save(partial, decoded)
        partial.replace(path)
        return decoded


class MotionSamples(Sequence):
    """Training samples whose motion is read (or decoded and cached) when a batch needs it."""

    def __init__(self, texts: Sequence[TextSample], motions: Callable[[Sequence[str]], np.ndarray]):
        self.texts = list(texts)
        self.motions = motions

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> Sample:
        text = self.texts[index]
        return Sample(self.motions(text.motion), text.question, text.answer)


def keep_trainable(
    texts: Sequence[TextSample], frames: dict[str, int], min_rows: int, max_rows: int | None
) -> list[TextSample]:
    """Keep the samples whose motion has min_rows to max_rows feature rows (None: no upper limit).

    Fewer rows than one index gives no indices; very long motions make a left-padded batch as
    long as its longest sample.
    """
    kept = []
    for text in texts:
        rows = motion_rows(text.motion, frames)
        if rows >= min_rows and (max_rows is None or rows <= max_rows):
            kept.append(text)
    return kept


# ---------------------------------------------------------------- model



def resolve_device(name: str) -> torch.device:
    """Return the torch device for a `device` setting ("cpu", "cuda", "cuda:1", "mps"), checked to exist."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device {name!r} is not a torch device ({error}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} is set, but this torch ({torch.__version__}) sees no CUDA GPU; "
            "set device: cpu in params.yaml, or install a CUDA build of torch"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} is set, but only {torch.cuda.device_count()} CUDA GPUs are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} is set, but MPS is not available here; set device: cpu in params.yaml")
    return device


def resolve_backbone(llm_name: str, backbone: tuple | None) -> tuple:
    """Return (LLM, text tokenizer, recorded name): `backbone` if given, else the LLM named `llm_name`."""
    if backbone is None:
        llm, text_tokenizer = load_backbone(llm_name)
        return llm, text_tokenizer, llm_name
    llm, text_tokenizer = backbone
    return llm, text_tokenizer, CUSTOM_LLM

def build_model(
    params: dict, backbone: tuple | None = None
) -> tuple[MotionLanguageModel, str]:
    """Load the frozen LLM and build a seeded, untrained projector; return the model and the LLM's name.

    backbone: (model, tokenizer) with the motion tokens added, used in place of `params["llm"]`.
    """
    llm, text_tokenizer, name = resolve_backbone(params["llm"], backbone)
    width = llm.get_input_embeddings().weight.shape[1]
    config = ProjectorConfig(width, params["tokens_per"], hidden_size=params["projector_hidden"])
    torch.manual_seed(int(params["train"].get("seed", 0)))
    # The projector is initialised on the CPU first, so its seeded weights do not depend on the device.
    model = MotionLanguageModel(llm, text_tokenizer, MotionProjector(config))
    return model.to(resolve_device(params.get("device", "cpu"))), name


# ---------------------------------------------------------------- projector stage


def run_key(params: dict, llm_name: str, tokenizer_dir: Path, prepared: PreparedData) -> str:
    """Return a 12-hex-digit key of everything that shapes the projector's weights.

    It covers the settings, the LLM name, the tokenizer's weights, the prepared manifest, the
    training code and SAMPLES_VERSION.
    """
    settings = {name: value for name, value in params.items() if name not in BOOKKEEPING}
    settings["train"] = {name: value for name, value in params["train"].items() if name not in TRAIN_BOOKKEEPING}
    digest = hashlib.sha256(json.dumps([settings, llm_name, SAMPLES_VERSION], sort_keys=True).encode())
    digest.update(sha256_file(tokenizer_dir / MODEL_FILE).encode())
    digest.update(sha256_file(prepared.folder / "clips.json").encode())
    for module in TRAINING_SOURCES:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


def model_batch_size(params: dict) -> int:
    return int(params["train"].get("batch_size", train_module.TrainParams.batch_size))


def _steps_done(run_dir: Path) -> int:
    state = run_dir / CHECKPOINT_DIR / STATE_FILE
    return len(json.loads(state.read_text())["history"]) if state.is_file() else 0


def stage_losses(history: list[dict], window: int = LOSS_WINDOW) -> dict:
    """Return each training stage's steps and mean loss over its first and last `window` steps."""
    result = {}
    for entry in history:
        result.setdefault(entry["stage"], []).append(entry["loss"])
    return {
        name: {"steps": len(losses), "loss_first": float(np.mean(losses[:window])), "loss_last": float(np.mean(losses[-window:]))}
        for name, losses in result.items()
    }


def plot_history(history: list[dict], path: Path, window: int = LOSS_WINDOW) -> None:
    """Plot the loss of every step and its running mean over `window` steps, coloured by training stage."""
    import pandas as pd
    import seaborn as sns
    from matplotlib.figure import Figure  # no pyplot, so a notebook's plotting backend stays as it is

    frame = pd.DataFrame(history)
    frame["global step"] = np.arange(len(frame))
    frame["running mean"] = frame.groupby("stage")["loss"].transform(lambda s: s.rolling(window, min_periods=1).mean())
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    sns.scatterplot(data=frame, x="global step", y="loss", hue="stage", s=8, alpha=0.35, legend=False, ax=ax)
    sns.lineplot(data=frame, x="global step", y="running mean", hue="stage", ax=ax)
    ax.set(ylabel="cross-entropy per answer token", title="Projector instruction tuning")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _check_statistics(tokenizer: Tokenizer, prepared: PreparedData) -> None:
    """Warn when the tokenizer was trained with other statistics than the prepared dataset's."""
    if stats_checksum(tokenizer.mean, tokenizer.std) != stats_checksum(*prepared.stats()):
        log.warning(
            "the tokenizer's Mean/Std differ from those in %s, so it was trained on another preparation of the "
            "data; the motion is normalised with the tokenizer's statistics. Rerun the tokenizer stage to match.",
            prepared.folder,
        )


def train_run(model: MotionLanguageModel, stages: list, train_params: dict, run_dir: Path) -> tuple[list[dict], dict]:
    """Train (or resume, or reuse) the run in run_dir; return the loss history and the training time.

    timing: seconds and steps of training summed over the invocations that trained, with the
    1-minute load average before and after the last of them.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    timing_path = run_dir / TIMING_FILE
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"seconds": 0.0, "steps": 0}
    steps_before = _steps_done(run_dir)
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        history = train_projector(model, stages, train_params, run_dir)
    finally:
        # Also after an interruption, so that the checkpointed steps keep their time.
        steps = _steps_done(run_dir) - steps_before
        if steps > 0:
            timing["seconds"] += time.perf_counter() - started
            timing["steps"] += steps
            timing["load_average_1min"] = [load_before[0], os.getloadavg()[0]]
            timing_path.write_text(json.dumps(timing) + "\n")
    log.info("projector run %s: %d steps, %.0f s of training", run_dir, len(history), timing["seconds"])
    return history, timing


def run_projector_stage(
    prepared_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    params: dict,
    out_dir: str | os.PathLike,
    results_dir: str | os.PathLike,
    *,
    runs_dir: str | os.PathLike | None = None,
    decoded_dir: str | os.PathLike | None = None,
    backbone: tuple | None = None,
) -> dict:
    """Train the projector through the stages of `params["stages"]` and write its folder and results.

    params: the `cloud` section of params.yaml. runs_dir (default cache_root()/cloud/runs) keeps
    training runs; decoded_dir (default cache_root()/cloud/decoded) the decoded motions.
    backbone: a loaded (LLM, text tokenizer) used in place of params["llm"], e.g. a tiny test model.
    Returns the metrics written to projector_metrics.json.
    """
    params = cloud_params(params)
    out_dir, results_dir, tokenizer_dir = Path(out_dir), Path(results_dir), Path(tokenizer_dir)
    runs_dir = Path(runs_dir) if runs_dir is not None else cache_root() / "cloud" / "runs"
    decoded_dir = Path(decoded_dir) if decoded_dir is not None else cache_root() / "cloud" / "decoded"
    torch.set_num_threads(int(params["threads"]))

    prepared = PreparedData(prepared_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    _check_statistics(tokenizer, prepared)
    frames = {record["clip_id"]: record["frames"] for record in prepared.records()}
    texts = training_samples(prepared, "train", seed=params["sample_seed"])
    unknown = sorted(set(params["stages"]) - set(texts))
    if unknown:
        raise ValueError(f"unknown training stages {unknown}; training_samples builds {sorted(texts)}")
    kept = {
        name: keep_trainable(texts[name], frames, tokenizer.frames_per_index, params["max_frames"])
        for name in params["stages"]
    }
    for name, samples in kept.items():
        log.info("stage %s: %d of %d samples within %s feature rows", name, len(samples), len(texts[name]), params["max_frames"])

    model, llm_name = build_model(params, backbone)
    motions = DecodedMotions(prepared, tokenizer, decoded_dir)
    stages = [(name, MotionSamples(kept[name], motions), int(steps)) for name, steps in params["stages"].items()]

    key = run_key(params, llm_name, tokenizer_dir, prepared)
    history, timing = train_run(model, stages, params["train"], runs_dir / f"projector-{key}")

    out_dir.mkdir(parents=True, exist_ok=True)
    save_projector(model.projector, out_dir)
    (out_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n")
    record = {
        "llm": llm_name,
        "tokens_per": params["tokens_per"],
        "codebook_hash": tokenizer.hash.hex(),
        "run_key": key,
        "params": params,
    }
    (out_dir / CLOUD_FILE).write_text(json.dumps(record, indent=2) + "\n")

    metrics = {
        "llm": llm_name,
        "tokens_per": params["tokens_per"],
        "codebook_hash": tokenizer.hash.hex(),
        "projector_parameters": sum(p.numel() for p in model.projector.parameters()),
        "samples": {name: {"kept": len(kept[name]), "built": len(texts[name])} for name in params["stages"]},
        "stages": stage_losses(history),
        "training": {
            **timing,
            "steps_per_second": timing["steps"] / timing["seconds"] if timing["seconds"] else None,
            "batch_size": model_batch_size(params),
        },
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "provenance": provenance(
            params=params, seed=params["train"].get("seed", 0), split={"train": "train"}, llm=llm_name,
            prepared_dir=str(prepared_dir), stats_sha256=stats_checksum(tokenizer.mean, tokenizer.std),
        ),
        **metrics,
    }
    (results_dir / PROJECTOR_METRICS_FILE).write_text(json.dumps(result, indent=2) + "\n")
    if history:
        plot_history(history, results_dir / PROJECTOR_LOSS_FIGURE)
    return metrics


def prompt_tokens(model: MotionLanguageModel, question: str, num_frames: int) -> tuple[int, int]:
    """Return (motion tokens, text tokens) of the prompt for a motion of num_frames frames (0: no motion)."""
    motion = model.projector.num_tokens(num_frames) if num_frames else 0
    return motion, len(model.encode(question, motion).ids) - motion


# ---------------------------------------------------------------- benchmark stage


def packet_sizes_kb(tokenizer: Tokenizer, prepared: PreparedData, split: str) -> dict:
    """Return the mean packet size per clip of a split in KB (1000 bytes), fixed-width and range-coded."""
    sizes = {"fixed": [], "entropy": []}
    for features in prepared.features(split):
        if len(features) < tokenizer.frames_per_index:
            continue
        indices = tokenizer.encode(features)
        sizes["fixed"].append(len(packet_bytes(tokenizer, indices, len(features))))
        if tokenizer.index_model is not None:
            sizes["entropy"].append(len(packet_bytes(tokenizer, indices, len(features), entropy=True)))
    return {
        "clips": len(sizes["fixed"]),
        "kb_fixed": float(np.mean(sizes["fixed"])) / BYTES_PER_KB,
        "kb_entropy": float(np.mean(sizes["entropy"])) / BYTES_PER_KB if sizes["entropy"] else None,
    }


def shuffled_partners(questions: Sequence[Question], seed: int) -> list[int]:
    """Pair each question with another of its category: a seeded random cycle through each category.

    A category with a single question is paired with itself.
    """
    rng = np.random.default_rng([seed, 1])
    partners = list(range(len(questions)))
    categories = dict.fromkeys(q.category for q in questions)
    for category in categories:
        members = [i for i, q in enumerate(questions) if q.category == category]
        cycle = [members[i] for i in rng.permutation(len(members))]
        for position, index in enumerate(cycle):
            partners[index] = cycle[(position + 1) % len(cycle)]
    return partners


def question_motions(
    question: Question, partner: Question, prepared: PreparedData, tokenizer: Tokenizer
) -> dict[str, np.ndarray]:
    """Return the normalised motion (T, 263) that each method in MOTION_METHODS gives the model.

    partner: the question whose packet-path motion the `shuffled` method reads.
    """
    features = question_features(question, prepared)
    decoded, _ = packet_features(tokenizer, features)
    shuffled, _ = packet_features(tokenizer, question_features(partner, prepared))
    return {
        "packet": decoded,
        "continuous": normalise(features, tokenizer),
        "shuffled": shuffled,
        "no_motion": np.zeros((0, FEATURE_DIM), dtype=np.float32),
    }


def evaluate_questions(
    model: MotionLanguageModel, questions: Sequence[Question], prepared: PreparedData, tokenizer: Tokenizer,
    seed: int = 0,
) -> dict[str, dict]:
    """Score every question with each method in MOTION_METHODS (seed: the shuffled pairing).

    Returns {method: {"predictions": [choice index], "motion_tokens": [...], "text_tokens": [...]}}.
    """
    model.eval()
    partners = shuffled_partners(questions, seed)
    records = {method: {"predictions": [], "motion_tokens": [], "text_tokens": []} for method in MOTION_METHODS}
    for question, partner in zip(tqdm(questions, desc="benchmark questions"), partners):
        for method, motion in question_motions(question, questions[partner], prepared, tokenizer).items():
            scores = model.score_choices(motion, question.question, question.choices)
            motion_tokens, text_tokens = prompt_tokens(model, question.question, len(motion))
            records[method]["predictions"].append(int(np.argmax(scores)))
            records[method]["motion_tokens"].append(motion_tokens)
            records[method]["text_tokens"].append(text_tokens)
    return records


def generated_examples(
    model: MotionLanguageModel, questions: Sequence[Question], prepared: PreparedData, tokenizer: Tokenizer,
    count: int, max_new_tokens: int,
) -> list[dict]:
    """Answer `count` evenly spaced questions as free text from the packet path, beside the correct answer."""
    if count <= 0 or not questions:
        return []
    chosen = [questions[i] for i in np.unique(np.linspace(0, len(questions) - 1, count).round().astype(int))]
    motions = [packet_features(tokenizer, question_features(q, prepared))[0] for q in chosen]
    texts = model.generate(motions, [q.question for q in chosen], max_new_tokens=max_new_tokens)
    return [
        {"id": q.id, "category": q.category, "clip_ids": list(q.clip_ids), "question": q.question,
         "generated": text, "ground_truth": q.answer_text}
        for q, text in zip(chosen, texts)
    ]


def _group_mean(values: Sequence[int], questions: Sequence[Question], category: str | None) -> float:
    picked = [v for v, q in zip(values, questions) if category is None or q.category == category]
    return float(np.mean(picked)) if picked else float("nan")


def method_rows(method: str, result: dict, record: dict | None, questions: Sequence[Question], sizes: dict) -> list[dict]:
    """Flatten one method's score into CSV rows with mean prompt tokens and KB per clip."""
    rows = []
    for row in score_rows(result):
        category = None if row["category"] == "overall" else row["category"]
        tokens = {
            name: _group_mean(record[name], questions, category) if record else 0.0
            for name in ("motion_tokens", "text_tokens")
        }
        rows.append({"method": method, **row, **tokens, **sizes})
    return rows


def method_sizes(method: str, packets: dict, continuous_kb: float) -> dict:
    """Return the KB per clip that a method sends: packets, float32 features, or nothing."""
    if method in ("packet", "shuffled"):
        return {"kb_fixed": packets["kb_fixed"], "kb_entropy": packets["kb_entropy"]}
    if method == "continuous":
        return {"kb_fixed": continuous_kb, "kb_entropy": None}
    return {"kb_fixed": 0.0, "kb_entropy": None}


def benchmark_table(rows: list[dict]) -> str:
    """Return a Markdown summary: overall accuracy, size and tokens per method, then accuracy per category."""

    def cell(row):
        return f"{row['accuracy']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] (n={row['n']})"

    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    overall = [row for row in rows if row["category"] == "overall"]
    lines = [
        "| method | accuracy [95 % CI] (n) | KB/clip fixed | KB/clip range-coded | motion tokens | text tokens |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in overall:
        lines.append(
            f"| {row['method']} | {cell(row)} | {number(row['kb_fixed'], 3)} | {number(row['kb_entropy'], 3)} | "
            f"{row['motion_tokens']:.1f} | {row['text_tokens']:.1f} |"
        )
    methods = [row["method"] for row in overall]
    categories = list(dict.fromkeys(row["category"] for row in rows if row["category"] != "overall"))
    lines += ["", "| category | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    by_key = {(row["method"], row["category"]): row for row in rows}
    for category in categories:
        lines.append(f"| {category} | " + " | ".join(cell(by_key[(m, category)]) for m in methods) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(rows: list[dict], path: Path) -> None:
    """Plot accuracy per category and overall for each method, with 95 % Wilson intervals and chance."""
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(row["method"] for row in rows))
    categories = list(dict.fromkeys(row["category"] for row in rows))
    by_key = {(row["method"], row["category"]): row for row in rows}
    width = 0.8 / len(methods)
    fig = Figure(figsize=(9, 3.8))
    ax = fig.subplots()
    for i, method in enumerate(methods):
        picked = [by_key[(method, category)] for category in categories]
        x = np.arange(len(categories)) + (i - (len(methods) - 1) / 2) * width
        accuracy = np.array([row["accuracy"] for row in picked])
        errors = np.array([[row["accuracy"] - row["ci_low"] for row in picked], [row["ci_high"] - row["accuracy"] for row in picked]])
        ax.bar(x, accuracy, width, yerr=errors, capsize=2, label=method)
    chance = by_key[(methods[0], "overall")]["chance"]
    ax.axhline(chance, color="black", linestyle="--", linewidth=1, label=f"chance ({chance:.2f})")
    labels = [f"{category}\n(n={by_key[(methods[0], category)]['n']})" for category in categories]
    ax.set_xticks(np.arange(len(categories)), labels)
    ax.set(ylim=(0, 1), ylabel="accuracy", title="Motion QA benchmark, 95 % Wilson intervals")
    ax.legend(fontsize=8, ncols=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def load_cloud_record(cloud_dir: Path, tokenizer: Tokenizer) -> dict:
    """Read cloud.json of a projector folder and check that it was trained for this tokenizer."""
    path = cloud_dir / CLOUD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the projector stage (`dvc repro projector`) first")
    record = json.loads(path.read_text())
    if record["codebook_hash"] != tokenizer.hash.hex():
        raise ValueError(
            f"the projector in {cloud_dir} was trained on motion decoded by codebook {record['codebook_hash']}, "
            f"but the tokenizer has codebook {tokenizer.hash.hex()}; rerun the projector stage"
        )
    return record


def load_trained_model(
    cloud_dir: Path, tokenizer: Tokenizer, backbone: tuple | None = None, device: str = "cpu",
) -> tuple[MotionLanguageModel, str, dict]:
    """Load the projector stage's model for this tokenizer: (model in eval mode, LLM name, cloud.json record)."""
    cloud = load_cloud_record(cloud_dir, tokenizer)
    llm, text_tokenizer, llm_name = resolve_backbone(cloud["llm"], backbone)
    model = MotionLanguageModel(llm, text_tokenizer, load_projector(cloud_dir))
    return model.to(resolve_device(device)).eval(), llm_name, cloud


def run_benchmark_stage(
    prepared_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    cloud_dir: str | os.PathLike,
    params: dict,
    results_dir: str | os.PathLike,
    *,
    backbone: tuple | None = None,
) -> dict:
    """Evaluate the trained projector on the motion QA benchmark and write the result files.

    params: the `benchmark` section of params.yaml. backbone: a loaded (LLM, text tokenizer) used
    in place of the LLM named in cloud_dir/cloud.json. Returns the record written to
    benchmark_motion.json.
    """
    params = benchmark_params(params)
    cloud_dir, results_dir = Path(cloud_dir), Path(results_dir)
    torch.set_num_threads(int(params["threads"]))

    prepared = PreparedData(prepared_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    _check_statistics(tokenizer, prepared)
    model, llm_name, cloud = load_trained_model(cloud_dir, tokenizer, backbone, params["device"])

    questions = build_benchmark(prepared, split=params["split"], seed=params["seed"], per_category=params["per_category"])
    started = time.perf_counter()
    records = evaluate_questions(model, questions, prepared, tokenizer, seed=params["seed"])
    seconds = time.perf_counter() - started
    predictions = {method: records[method]["predictions"] for method in MOTION_METHODS}
    predictions["chance"] = random_baseline(questions, seed=params["seed"])
    scores = {method: score(predictions[method], questions) for method in METHODS}

    packets = packet_sizes_kb(tokenizer, prepared, params["split"])
    split_rows = [len(features) for features in prepared.features(params["split"])]
    continuous_kb = float(np.mean(split_rows)) * FEATURE_DIM * 4 / BYTES_PER_KB  # float32 features per clip
    rows = []
    for method in METHODS:
        sizes = method_sizes(method, packets, continuous_kb)
        rows += method_rows(method, scores[method], records.get(method), questions, sizes)

    examples = generated_examples(model, questions, prepared, tokenizer, params["examples"], params["max_new_tokens"])
    result = {
        "provenance": provenance(
            params={"benchmark": params, "cloud": cloud["params"]}, seed=params["seed"], split=params["split"],
            llm=llm_name, codebook_hash=tokenizer.hash.hex(), projector_run=cloud["run_key"],
            projector_sha256=sha256_file(cloud_dir / WEIGHTS_FILE), tokens_per=cloud["tokens_per"],
            prepared_dir=str(prepared_dir),
        ),
        "questions": len(questions),
        "evaluation_seconds": seconds,
        "packets": packets,
        "continuous_kb_per_clip": continuous_kb,
        "scores": scores,
        "rows": rows,
        "examples": examples,
        "predictions": {"ids": [q.id for q in questions], "answers": [q.answer for q in questions], **predictions},
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{BENCHMARK_STEM}.json").write_text(json.dumps(result, indent=2) + "\n")
    _write_csv(rows, results_dir / f"{BENCHMARK_STEM}.csv")
    (results_dir / f"{BENCHMARK_STEM}.md").write_text(benchmark_table(rows))
    plot_accuracy(rows, results_dir / BENCHMARK_FIGURE)
    return result
