"""`toau encode` / `toau decode` and the codec under them, on real Bandai clips.

The tokenizers here are untrained: a tiny VQ-VAE (width 16, K = 512) whose codebook comes
from one training-mode pass over real normalised clips, saved as the tokenizer stage saves
its model. Training does not change the index path, so these tests cover it exactly.
"""

import numpy as np
import pytest
import torch

from toau.channel.codec import INDEX_MODEL_FILE, load_motion, load_tokenizer
from toau.channel.entropy import IndexModel
from toau.channel.packet import HEADER_SIZE, CRC_SIZE, decode_packet
from toau.cli import EXIT_CODEBOOK_MISMATCH, EXIT_ERROR, main
from toau.data.prepared import PreparedData
from toau.tokenizer.checkpoint import save_checkpoint
from toau.tokenizer.vqvae import VQVAE, VQVAEConfig

TINY = VQVAEConfig(width=16, depth=1)


@pytest.fixture(scope="module")
def clips(prepared_small) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Raw features (T, 263) of the prepared train split, with its mean and std."""
    data = PreparedData(prepared_small)
    mean, std = data.stats()
    return data.features("train"), mean, std


def make_tokenizer(folder, clips, seed: int):
    """Save an untrained tokenizer folder with an IndexModel fitted on its own indices."""
    features, mean, std = clips
    torch.manual_seed(seed)
    model = VQVAE(TINY).train()
    windows = np.stack([(clip[:64] - mean) / std for clip in features if len(clip) >= 64])
    model(torch.as_tensor(windows, dtype=torch.float32))
    model.eval()
    with torch.no_grad():
        indices = [model.encode(torch.as_tensor((clip[None] - mean) / std, dtype=torch.float32))[0].numpy() for clip in features]
    save_checkpoint(model, mean, std, folder, step=0)
    IndexModel.fit(indices, TINY.nb_code).save(folder / INDEX_MODEL_FILE)
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(clips, tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tok", clips, seed=0)


@pytest.fixture
def features_file(clips, tmp_path):
    path = tmp_path / "clip.npy"
    np.save(path, clips[0][0])
    return path


def run(*argv) -> int:
    return main([str(arg) for arg in argv])


def test_round_trip_same_indices(tokenizer_dir, features_file, tmp_path):
    features = np.load(features_file)
    expected = load_tokenizer(tokenizer_dir).encode(features)
    assert run("encode", features_file, "-o", tmp_path / "c.toau", "--tokenizer", tokenizer_dir) == 0
    assert run("decode", tmp_path / "c.toau", "-o", tmp_path / "d.npz", "--tokenizer", tokenizer_dir, "--joints") == 0

    decoded = np.load(tmp_path / "d.npz")
    assert np.array_equal(decoded["indices"], expected)
    assert decoded["features"].shape == (4 * len(expected), 263)
    assert decoded["joints"].shape == (4 * len(expected), 22, 3)
    assert int(decoded["fps"]) == 20


def test_decode_writes_given_path(tokenizer_dir, features_file, tmp_path):
    packet, output = tmp_path / "clip.toau", tmp_path / "decoded.bin"
    assert run("encode", str(features_file), "-o", str(packet), "--tokenizer", str(tokenizer_dir)) == 0

    assert run("decode", str(packet), "-o", str(output), "--tokenizer", str(tokenizer_dir)) == 0

    assert sorted(np.load(output)) == ["features", "fps", "indices"]
    assert not (tmp_path / "decoded.bin.npz").exists()


def test_decode_rejects_other_fps(tokenizer_dir, features_file, tmp_path, capsys):
    from toau.channel.packet import decode_packet, encode_packet

    packet = tmp_path / "clip.toau"
    assert run("encode", str(features_file), "-o", str(packet), "--tokenizer", str(tokenizer_dir)) == 0
    parsed = decode_packet(packet.read_bytes())
    parsed.fps = 30
    packet.write_bytes(encode_packet(parsed))

    assert run("decode", str(packet), "-o", str(tmp_path / "x.npz"), "--tokenizer", str(tokenizer_dir)) == 2
    assert "packet fps is 30" in capsys.readouterr().err


def test_truncated_gzip_rejected(tokenizer_dir, bandai_dir, tmp_path, capsys):
    clip = tmp_path / "clip.bvh.gz"
    clip.write_bytes(next(bandai_dir.rglob("*.bvh.gz")).read_bytes()[:5000])

    assert run("encode", clip, "-o", tmp_path / "x.toau", "--tokenizer", tokenizer_dir) == 2
    assert "truncated gzip" in capsys.readouterr().err


def test_entropy_round_trip(tokenizer_dir, features_file, tmp_path):
    features = np.load(features_file)
    expected = load_tokenizer(tokenizer_dir).encode(features)
    assert run("encode", features_file, "-o", tmp_path / "c.toau", "--tokenizer", tokenizer_dir, "--entropy") == 0
    assert run("decode", tmp_path / "c.toau", "-o", tmp_path / "d.npz", "--tokenizer", tokenizer_dir) == 0
    assert np.array_equal(np.load(tmp_path / "d.npz")["indices"], expected)


def test_fifty_rows_exact_sizes(tokenizer_dir, clips, tmp_path, capsys):
    np.save(tmp_path / "short.npy", clips[0][0][:50])
    assert run("encode", tmp_path / "short.npy", "-o", tmp_path / "c.toau", "--tokenizer", tokenizer_dir) == 0
    data = (tmp_path / "c.toau").read_bytes()
    packet = decode_packet(data)
    assert packet.index_count == 12
    assert packet.frame_count == 50
    assert len(data) == HEADER_SIZE + 14 + CRC_SIZE  # 12 * 9 = 108 payload bits -> 14 bytes
    assert "12 indices" in capsys.readouterr().out

    assert run("decode", tmp_path / "c.toau", "-o", tmp_path / "d.npz", "--tokenizer", tokenizer_dir) == 0
    assert np.load(tmp_path / "d.npz")["features"].shape == (48, 263)


def test_joints_input(tokenizer_dir, prepared_small, tmp_path):
    data = PreparedData(prepared_small)
    joints = data.joints(data.records("test")[0]["clip_id"])
    np.save(tmp_path / "joints.npy", joints)
    assert load_motion(tmp_path / "joints.npy").shape == (len(joints) - 1, 263)
    assert run("encode", tmp_path / "joints.npy", "-o", tmp_path / "c.toau", "--tokenizer", tokenizer_dir) == 0
    assert decode_packet((tmp_path / "c.toau").read_bytes()).frame_count == len(joints) - 1


def test_bvh_matches_prepared(prepared_small, bandai_dir):
    data = PreparedData(prepared_small)
    record = data.records("test")[0]
    features = load_motion(bandai_dir / record["path"])
    prepared = np.load(prepared_small / "features" / f"{record['clip_id']}.npy")
    assert np.allclose(features, prepared, atol=1e-5)


def test_mismatch_names_hashes(tokenizer_dir, clips, features_file, tmp_path, capsys):
    other = make_tokenizer(tmp_path / "other", clips, seed=1)
    assert run("encode", features_file, "-o", tmp_path / "c.toau", "--tokenizer", tokenizer_dir) == 0
    capsys.readouterr()
    code = run("decode", tmp_path / "c.toau", "-o", tmp_path / "d.npz", "--tokenizer", other)

    message = capsys.readouterr().err
    assert code == EXIT_CODEBOOK_MISMATCH
    assert load_tokenizer(tokenizer_dir).hash.hex() in message
    assert load_tokenizer(other).hash.hex() in message
    assert not (tmp_path / "d.npz").exists()


def test_missing_tokenizer_message(features_file, tmp_path, capsys):
    code = run("encode", features_file, "-o", tmp_path / "c.toau", "--tokenizer", tmp_path / "absent")
    assert code == EXIT_ERROR
    assert "dvc repro tokenizer" in capsys.readouterr().err


def test_wrong_shape_rejected(tokenizer_dir, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((30, 22, 2), dtype=np.float32))
    assert run("encode", tmp_path / "bad.npy", "-o", tmp_path / "c.toau", "--tokenizer", tokenizer_dir) == EXIT_ERROR
    assert "(30, 22, 2)" in capsys.readouterr().err


def test_short_clip_rejected(tokenizer_dir, clips, tmp_path, capsys):
    np.save(tmp_path / "short.npy", clips[0][0][:3])
    assert run("encode", tmp_path / "short.npy", "-o", tmp_path / "c.toau", "--tokenizer", tokenizer_dir) == EXIT_ERROR
    assert "gives 0 indices" in capsys.readouterr().err


def test_index_model_required(clips, features_file, tmp_path, capsys):
    folder = make_tokenizer(tmp_path / "tok", clips, seed=0)
    (folder / INDEX_MODEL_FILE).unlink()
    code = run("encode", features_file, "-o", tmp_path / "c.toau", "--tokenizer", folder, "--entropy")
    assert code == EXIT_ERROR
    assert INDEX_MODEL_FILE in capsys.readouterr().err


@pytest.mark.parametrize("entropy", [False, True])
def test_every_test_clip_round_trips(tokenizer_dir, prepared_small, entropy):
    from toau.channel.codec import encode_motion, read_packet

    tokenizer = load_tokenizer(tokenizer_dir, require_index_model=entropy)
    test_clips = PreparedData(prepared_small).features("test")
    assert len(test_clips) > 0
    for features in test_clips:
        expected = tokenizer.encode(features)
        packet = read_packet(tokenizer, encode_motion(tokenizer, features, entropy=entropy))
        assert np.array_equal(packet.indices, expected)
