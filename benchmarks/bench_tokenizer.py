"""Time the tokenizer's edge and cloud paths per frame, and measure packet bits per frame on the test split.

Usage: python benchmarks/bench_tokenizer.py [--tokenizer build/tokenizer] [--prepared build/data]
       [--clips 40] [--repeats 3] [--params params.yaml]

Edge path: joints (F, 22, 3) -> joints_to_features -> normalise -> encoder -> packet bytes.
Cloud path: packet bytes -> checked indices -> decoder -> de-normalised features (4N, 263).
Baseline: joints_to_features alone on the same clips, so each path also gets a ratio to it.
Times are the best of --repeats passes over --clips evenly spaced test clips, per feature frame.
The same paths and one training step are also timed for the release width 512 with random
weights, the model that `tokenizer.model.width: 512` trains. Writes results/bench_tokenizer.json.
"""

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from toau.channel.codec import Tokenizer, decode_motion, encode_motion, load_tokenizer
from toau.config import PROJECT_ROOT, load_params
from toau.data.prepared import PreparedData
from toau.motion.humanml3d import joints_to_features
from toau.provenance import provenance
from toau.tokenizer.stage import encode_clips, normalise, packet_sizes
from toau.tokenizer.train import TrainParams, sample_windows, training_loss
from toau.tokenizer.vqvae import VQVAE

RESULTS_FILE = PROJECT_ROOT / "results" / "bench_tokenizer.json"
RELEASE_WIDTH = 512
TRAIN_STEPS = 3  # timed training steps per width, after one warm-up step


def best_time(function, repeats: int) -> float:
    """Return the fastest of `repeats` runs of function() in seconds, after one untimed warm-up run."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def time_paths(tokenizer: Tokenizer, joints_list: list[np.ndarray], repeats: int) -> dict:
    """Return ms per frame of the baseline, edge and cloud paths, and their ratios to the baseline."""
    features_list = [joints_to_features(joints) for joints in joints_list]
    frames = sum(len(features) for features in features_list)
    packets = [encode_motion(tokenizer, features) for features in features_list]
    decoded_frames = sum(len(features) // tokenizer.frames_per_index * tokenizer.frames_per_index for features in features_list)

    def baseline():
        for joints in joints_list:
            joints_to_features(joints)

    def edge(entropy: bool):
        for joints in joints_list:
            encode_motion(tokenizer, joints_to_features(joints), entropy=entropy)

    def cloud():
        for packet in packets:
            decode_motion(tokenizer, packet)

    with torch.no_grad():
        seconds = {
            "baseline_joints_to_features": best_time(baseline, repeats) / frames,
            "edge_fixed": best_time(lambda: edge(False), repeats) / frames,
            "edge_entropy": best_time(lambda: edge(True), repeats) / frames,
            "cloud_fixed": best_time(cloud, repeats) / decoded_frames,
        }
    result = {f"{name}_ms_per_frame": 1000 * value for name, value in seconds.items()}
    for name in ("edge_fixed", "edge_entropy", "cloud_fixed"):
        result[f"{name}_over_baseline"] = seconds[name] / seconds["baseline_joints_to_features"]
    result["frames"] = frames
    return result


def time_training_step(model: VQVAE, clips: list[np.ndarray], params: TrainParams) -> float:
    """Return the mean seconds of one optimiser step (forward, backward, AdamW) on sampled windows."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, betas=params.betas)
    rng = np.random.default_rng(0)
    times = []
    for step in range(TRAIN_STEPS + 1):
        batch = torch.from_numpy(sample_windows(clips, params.batch_size, params.window, rng))
        started = time.perf_counter()
        loss = training_loss(model(batch), batch, params)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - started)
    model.eval()
    return float(np.mean(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="build/tokenizer", help="tokenizer folder written by the tokenizer stage")
    parser.add_argument("--prepared", default="build/data", help="prepared dataset folder")
    parser.add_argument("--params", default=None, help="parameter file (default: params.yaml in the project)")
    parser.add_argument("--clips", type=int, default=40, help="test clips timed")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the fastest counts")
    args = parser.parse_args()

    params = load_params(args.params, "tokenizer")
    torch.set_num_threads(int(params.get("threads", 1)))
    train_params = TrainParams.from_dict({**params["train"], "progress": False})
    tokenizer = load_tokenizer(args.tokenizer, require_index_model=True)
    data = PreparedData(args.prepared)
    mean, std = data.stats()
    records = data.records("test")
    chosen = [records[i] for i in np.linspace(0, len(records) - 1, min(args.clips, len(records))).round().astype(int)]
    joints_list = [data.joints(record["clip_id"]) for record in chosen]

    test_clips = normalise(data.features("test"), mean, std)
    packets = packet_sizes(tokenizer, encode_clips(tokenizer.model, test_clips), [len(clip) for clip in test_clips])
    packets["split"] = "test"

    release_config = dataclasses.replace(tokenizer.model.config, width=RELEASE_WIDTH, code_dim=RELEASE_WIDTH)
    release_model = VQVAE(release_config)
    train_clips = [clip for clip in test_clips if len(clip) >= train_params.window]
    release_model.train()(torch.from_numpy(sample_windows(train_clips, 8, train_params.window, np.random.default_rng(0))))
    release = Tokenizer(release_model, mean, std, tokenizer.index_model)

    widths = {}
    for name, model_tokenizer in (("trained", tokenizer), ("release_width_random", release)):
        widths[name] = {
            "width": model_tokenizer.model.config.width,
            "parameters": sum(p.numel() for p in model_tokenizer.model.parameters()),
            **time_paths(model_tokenizer, joints_list, args.repeats),
            "train_step_seconds": time_training_step(
                VQVAE(model_tokenizer.model.config), train_clips, train_params
            ),
            "train_batch_size": train_params.batch_size,
        }

    result = {
        "tokenizer": str(args.tokenizer),
        "timed_clips": len(chosen),
        "paths": widths,
        "packets": packets,
        "provenance": provenance(params=params, split="test", seed=train_params.seed),
    }
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "provenance"}, indent=2))


if __name__ == "__main__":
    main()
