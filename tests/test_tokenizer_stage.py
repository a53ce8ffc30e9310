"""The tokenizer stage on a tiny config over 60 prepared Bandai clips."""

import json
import math

import numpy as np
import pytest
import torch

from toau.channel.codec import load_tokenizer
from toau.channel.packet import CRC_SIZE, HEADER_SIZE
from toau.data.prepared import PreparedData
from toau.tokenizer.stage import (
    LOSS_FIGURE,
    METRICS_FILE,
    TABLE_FILE,
    normalise,
    run_key,
    run_tokenizer_stage,
)
from toau.tokenizer.train import TrainParams
from toau.tokenizer.vqvae import VQVAEConfig
from helpers import numbers

TINY_PARAMS = {
    "threads": 1,
    "model": {"width": 32, "nb_code": 512, "depth": 1},
    "train": {"iterations": 30, "batch_size": 8, "window": 32, "lr": 1e-3, "warmup_iterations": 5,
              "lr_milestones": [], "log_every": 10, "checkpoint_every": 30},
    "bound": {"iterations": 10},
    "entropy": {"fit_split": "train", "eval_split": "test"},
    "eval_splits": ["val", "test"],
    "velocity_eval_channels": [[4, 67], [193, 259]],
}


@pytest.fixture(scope="module")
def stage(prepared_small, tmp_path_factory):
    """Run the stage once; return (metrics, out_dir, results_dir, runs_dir)."""
    root = tmp_path_factory.mktemp("stage")
    metrics = run_tokenizer_stage(prepared_small, TINY_PARAMS, root / "tok", root / "results", root / "runs")
    return metrics, root / "tok", root / "results", root / "runs"


def test_result_files_written(stage):
    _, out_dir, results_dir, _ = stage
    for path in (results_dir / METRICS_FILE, results_dir / TABLE_FILE, results_dir / LOSS_FIGURE):
        assert path.is_file(), path
    for name in ("model.safetensors", "config.json", "Mean.npy", "Std.npy", "index_model.json", "history.json"):
        assert (out_dir / name).is_file(), name
    assert (out_dir / "autoencoder" / "model.safetensors").is_file()


def test_metrics_finite(stage):
    _, _, results_dir, _ = stage
    record = json.loads((results_dir / METRICS_FILE).read_text())
    values = list(numbers({key: value for key, value in record.items() if key != "provenance"}))
    assert len(values) > 30
    assert all(math.isfinite(value) for value in values)
    assert record["provenance"]["seed"] == 0


def test_split_metrics(stage):
    metrics, _, _, _ = stage
    test = metrics["vqvae"]["splits"]["test"]
    assert test["clips"] > 0
    assert test["frames"] % 4 == 0
    assert 1 <= test["codes_used"] <= 512
    assert metrics["autoencoder"]["splits"]["test"]["codes_used"] is None
    assert set(metrics["vqvae"]["channel_losses"]["val"]) == {"4:67", "193:259"}


def test_fixed_payload_nine_bits(stage, prepared_small):
    packets = stage[0]["packets"]
    counts = [len(features) // 4 for features in PreparedData(prepared_small).features("test")]
    packet_bits = sum(8 * (HEADER_SIZE + math.ceil(9 * n / 8) + CRC_SIZE) for n in counts if n)
    assert packets["fixed"]["payload_bits_per_frame"] == 2.25
    assert packets["fixed"]["packet_bits_per_frame"] == pytest.approx(packet_bits / (4 * sum(counts)))
    assert packets["entropy"]["packet_bits_per_frame"] > packets["entropy"]["payload_bits_per_frame"]


def test_tokenizer_folder_loads(stage, prepared_small):
    metrics, out_dir, _, _ = stage
    tokenizer = load_tokenizer(out_dir, require_index_model=True)
    features = np.load(next((prepared_small / "features").glob("*.npy")))
    assert tokenizer.hash.hex() == metrics["codebook_hash"]
    assert tokenizer.decode(tokenizer.encode(features)).shape == (len(features) // 4 * 4, 263)


def test_rerun_reuses_training(stage, prepared_small):
    metrics, out_dir, results_dir, runs_dir = stage
    again = run_tokenizer_stage(prepared_small, TINY_PARAMS, out_dir, results_dir, runs_dir)
    assert again["codebook_hash"] == metrics["codebook_hash"]
    assert again["vqvae"]["training"]["seconds"] == metrics["vqvae"]["training"]["seconds"]
    assert len(list(runs_dir.iterdir())) == 2


def test_run_key_ignores_bookkeeping():
    config, mean, std = VQVAEConfig(width=32), np.zeros(263, np.float32), np.ones(263, np.float32)
    key = run_key(config, TrainParams(), mean, std)
    assert run_key(config, TrainParams(log_every=100), mean, std) == key
    assert run_key(config, TrainParams(seed=1), mean, std) != key
    assert run_key(config, TrainParams(), mean, std + 1) != key


def test_normalise_uses_stats():
    mean, std = np.full(263, 2.0, np.float32), np.full(263, 4.0, np.float32)
    (result,) = normalise([np.full((5, 263), 10.0)], mean, std)
    assert result.dtype == np.float32
    assert np.all(result == 2.0)
