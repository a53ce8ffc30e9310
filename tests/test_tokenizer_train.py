"""Tokenizer checkpoints, the T2M-GPT release loader, training, resuming and evaluation."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from toau.tokenizer.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_t2m_gpt_release,
    save_checkpoint,
)
from toau.tokenizer.quantizer import code_perplexity
from toau.tokenizer.train import (
    TrainParams,
    evaluate_vqvae,
    frame_errors_mm,
    learning_rate,
    train_vqvae,
    usable_clips,
)
from toau.tokenizer.vqvae import VQVAE, VQVAEConfig, VQVAEOutput

TINY = VQVAEConfig(width=16, nb_code=32, depth=1)
MEAN = np.zeros(263, dtype=np.float32)
STD = np.ones(263, dtype=np.float32)
QUICK = TrainParams(
    iterations=6, batch_size=4, window=16, lr=3e-3, warmup_iterations=2, lr_milestones=(4,),
    log_every=1, checkpoint_every=3, progress=False,
)


@pytest.fixture
def clips() -> list[np.ndarray]:
    """Smooth random walks (T, 263) of several lengths, one shorter than the QUICK window."""
    rng = np.random.default_rng(0)
    return [np.cumsum(rng.normal(scale=0.1, size=(length, 263)), axis=0).astype(np.float32) for length in (80, 50, 10, 70)]


@pytest.fixture(scope="module")
def reference_clip(reference_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The HumanML3D reference clip, normalised (170, 263), with HumanML3D's mean and std."""
    mean = np.load(reference_dir / "Mean.npy").astype(np.float32)
    std = np.load(reference_dir / "Std.npy").astype(np.float32)
    features = np.load(reference_dir / "new_joint_vecs" / "012314.npy").astype(np.float32)
    return (features - mean) / std, mean, std


def trained_tiny() -> VQVAE:
    torch.manual_seed(0)
    model = VQVAE(TINY).train()
    model(torch.randn(4, 32, 263))
    return model.eval()


def write_release(path, state: dict) -> None:
    torch.save({"net": state, "nb_iter": 300_000}, path)


def random_release_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"vqvae." + key: torch.randn(value.shape) for key, value in VQVAE(VQVAEConfig()).state_dict().items()}


def test_release_checkpoint_loads(tmp_path):
    state = random_release_state()
    path = tmp_path / "net_last.pth"
    write_release(path, state)

    model, mean, std, config = load_t2m_gpt_release(path, MEAN, STD)

    loaded = model.state_dict()
    assert sum(value.numel() for value in loaded.values()) == 19_698_951
    assert config == VQVAEConfig()
    assert all(torch.equal(loaded[key[len("vqvae."):]], value) for key, value in state.items())
    assert bool(model.quantizer.initialised)
    assert np.array_equal(mean, MEAN)
    assert np.array_equal(std, STD)


def test_release_mismatch_listed(tmp_path):
    state = random_release_state()
    del state["vqvae.decoder.model.6.bias"]
    state["vqvae.quantizer.code_sum"] = torch.zeros(512, 512)
    state["vqvae.quantizer.codebook"] = torch.zeros(256, 512)
    path = tmp_path / "net_last.pth"
    write_release(path, state)

    with pytest.raises(ValueError) as error:
        load_t2m_gpt_release(path, MEAN, STD)
    message = str(error.value)
    assert "missing keys (1): vqvae.decoder.model.6.bias" in message
    assert "unexpected keys (1): vqvae.quantizer.code_sum" in message
    assert "vqvae.quantizer.codebook: file (256, 512), model (512, 512)" in message


def test_release_without_net_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="under 'net'"):
        load_t2m_gpt_release(path, MEAN, STD)


def test_release_rejects_zero_std(tmp_path):
    std = STD.copy()
    std[5] = 0.0
    with pytest.raises(ValueError, match="1 non-positive"):
        load_t2m_gpt_release(tmp_path / "unused.pth", MEAN, std)


def test_checkpoint_round_trip(tmp_path):
    model = trained_tiny()
    mean = np.linspace(-1, 1, 263, dtype=np.float32)
    std = np.linspace(0.5, 2, 263, dtype=np.float32)
    save_checkpoint(model, mean, std, tmp_path / "ckpt", step=7)

    loaded, loaded_mean, loaded_std, config = load_checkpoint(tmp_path / "ckpt")

    features = torch.randn(2, 50, 263)
    assert config == TINY
    assert np.array_equal(loaded_mean, mean)
    assert np.array_equal(loaded_std, std)
    assert torch.equal(loaded(features).reconstruction, model(features).reconstruction)
    assert torch.equal(loaded.quantizer.ema_sum, model.quantizer.ema_sum)
    assert torch.equal(loaded.quantizer.ema_count, model.quantizer.ema_count)


def test_checkpoint_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer checkpoint folder"):
        load_checkpoint(tmp_path / "absent")


def test_learning_rate_schedule():
    params = TrainParams(lr=1.0, warmup_iterations=4, lr_milestones=(10,), lr_gamma=0.1)
    assert learning_rate(1, params) == 0.25
    assert learning_rate(4, params) == 1.0
    assert learning_rate(10, params) == 1.0
    assert learning_rate(11, params) == pytest.approx(0.1)


def test_short_clips_skipped(clips):
    assert [len(clip) for clip in usable_clips(clips, 16)] == [80, 50, 70]
    with pytest.raises(ValueError, match="none of the 4 clips"):
        usable_clips(clips, 100)


def test_training_reduces_loss(clips, tmp_path):
    params = dataclasses.replace(QUICK, iterations=60, batch_size=8, lr_milestones=(), log_every=20, checkpoint_every=60)
    history = train_vqvae(clips, TINY, params, tmp_path, mean=MEAN, std=STD)
    assert [entry["step"] for entry in history] == [20, 40, 60]
    assert history[-1]["loss"] < 0.75 * history[0]["loss"]


def test_resume_matches_uninterrupted(clips, tmp_path):
    straight = train_vqvae(clips, TINY, QUICK, tmp_path / "straight", mean=MEAN, std=STD)
    train_vqvae(clips, TINY, dataclasses.replace(QUICK, iterations=3), tmp_path / "resumed", mean=MEAN, std=STD)
    resumed = train_vqvae(clips, TINY, QUICK, tmp_path / "resumed", mean=MEAN, std=STD)

    assert resumed == straight
    first = load_checkpoint(latest_checkpoint(tmp_path / "straight"))[0].state_dict()
    second = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))[0].state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_old_checkpoints_pruned(clips, tmp_path):
    train_vqvae(clips, TINY, dataclasses.replace(QUICK, checkpoint_every=1, keep_checkpoints=2), tmp_path, mean=MEAN, std=STD)
    assert sorted(path.name for path in tmp_path.glob("step_*")) == ["step_0000005", "step_0000006"]


def test_resume_false_rejects_old_run(clips, tmp_path):
    train_vqvae(clips, TINY, dataclasses.replace(QUICK, iterations=3), tmp_path, mean=MEAN, std=STD)
    with pytest.raises(FileExistsError, match="pass resume=True"):
        train_vqvae(clips, TINY, QUICK, tmp_path, resume=False, mean=MEAN, std=STD)


def test_resume_rejects_other_config(clips, tmp_path):
    train_vqvae(clips, TINY, dataclasses.replace(QUICK, iterations=3), tmp_path, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="another output folder"):
        train_vqvae(clips, dataclasses.replace(TINY, nb_code=16), QUICK, tmp_path, mean=MEAN, std=STD)


def test_resume_rejects_other_stats(clips, tmp_path):
    train_vqvae(clips, TINY, dataclasses.replace(QUICK, iterations=3), tmp_path, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="other feature statistics"):
        train_vqvae(clips, TINY, QUICK, tmp_path, mean=MEAN + 1, std=STD)


def test_continuous_autoencoder_trains(clips, tmp_path):
    config = dataclasses.replace(TINY, quantize=False)
    history = train_vqvae(clips, config, QUICK, tmp_path, mean=MEAN, std=STD)
    model = load_checkpoint(latest_checkpoint(tmp_path))[0]
    metrics = evaluate_vqvae(model, clips, MEAN, STD)
    assert history[-1]["perplexity"] is None
    assert history[-1]["commitment"] == 0.0
    assert metrics["codes_used"] is None
    assert metrics["mpjpe_mm"] > 0


class IdentityModel(nn.Module):
    """Returns its input cut to whole 4-frame groups, in the VQVAE output format."""

    config = VQVAEConfig(width=8, depth=1, quantize=False)

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, features):
        usable = features.shape[1] // 4 * 4
        return VQVAEOutput(features[:, :usable], features.new_zeros(()), None, None)


def test_identity_mpjpe_zero(reference_clip):
    features, mean, std = reference_clip
    metrics = evaluate_vqvae(IdentityModel(), [features, features[:3]], mean, std)
    assert metrics["mpjpe_mm"] == 0.0
    assert metrics["clips"] == 1
    assert metrics["frames"] == 168
    assert metrics["skipped_clips"] == 1


def test_frame_errors_one_joint_offset(reference_clip):
    features, mean, std = reference_clip
    shifted = features.copy()
    shifted[:, 4] += 0.022 / std[4]  # 22 mm on joint 1 only: 1 mm averaged over 22 joints
    errors = frame_errors_mm(shifted, features, mean, std)
    assert errors.shape == (170,)
    assert np.allclose(errors, 1.0, atol=1e-3)


def test_evaluate_counts_codes(reference_clip):
    features, mean, std = reference_clip
    model = trained_tiny()
    metrics = evaluate_vqvae(model, [features, features[:50]], mean, std)

    indices = torch.cat([model.encode(torch.from_numpy(clip[None])).flatten() for clip in (features, features[:50])])
    assert metrics["frames"] == 168 + 48
    assert metrics["codes_used"] == len(torch.unique(indices))
    assert metrics["codebook_size"] == 32
    assert metrics["perplexity"] == pytest.approx(float(code_perplexity(torch.bincount(indices, minlength=32))))
    assert metrics["mpjpe_mm"] > 0
