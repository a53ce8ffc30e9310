import json

import numpy as np
import pytest

from toau.data import bandai
from toau.data.humanml3d import HumanML3DFolder, parse_caption_line, prepare_humanml3d
from toau.data.prepared import PreparedData, stats_checksum
from toau.motion.humanml3d import features_to_joints, mirror_features
from toau.skeleton import JOINT_INDEX


@pytest.fixture(scope="module")
def clips(bandai_dir):
    return bandai.find_clips(bandai_dir)


def test_clip_counts(clips):
    # 174 clips in dataset 1 and 2,691 in dataset 2 (data/README.md of the shared data).
    assert sum(c.dataset == 1 for c in clips) == 174
    assert sum(c.dataset == 2 for c in clips) == 2691


def test_labels_from_name_and_json(clips):
    clip = next(c for c in clips if c.clip_id == "dataset-1_bow_active_001")
    assert (clip.content, clip.style, clip.take) == ("bow", "active", 1)
    assert (clip.content_id, clip.style_id) == (6, 11)


def test_split_is_deterministic(clips):
    assert bandai.assign_splits(clips, seed=0) == bandai.assign_splits(clips, seed=0)
    assert bandai.assign_splits(clips, seed=0) != bandai.assign_splits(clips, seed=1)


def test_split_fractions(clips):
    splits = bandai.assign_splits(clips)
    counts = {s: sum(v == s for v in splits.values()) for s in bandai.SPLITS}
    assert abs(counts["test"] / len(clips) - 0.1) < 0.02
    assert abs(counts["val"] / len(clips) - 0.1) < 0.02


def test_split_stratified_by_style(clips):
    # Every dataset-2 (content, style) group has 16 or more takes, so each must reach the test split.
    splits = bandai.assign_splits(clips)
    groups = {(c.content, c.style) for c in clips if c.dataset == 2}
    in_test = {(c.content, c.style) for c in clips if c.dataset == 2 and splits[c.clip_id] == "test"}
    assert in_test == groups


def test_prepared_subset(prepared_small):
    data = PreparedData(prepared_small)
    summary = json.loads((prepared_small / "clips.json").read_text())["summary"]
    assert sum(s["clips"] for s in summary["splits"].values()) == 60
    train = data.features("train")
    assert all(np.isfinite(f).all() and f.shape[1] == 263 for f in train)
    mean, std = data.stats()
    assert np.all(std > 0)


def test_stats_checksum_detects_change(prepared_small, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared_small, copy)
    mean = np.load(copy / "Mean.npy")
    mean[0] += 1.0
    np.save(copy / "Mean.npy", mean)
    with pytest.raises(ValueError, match="do not match stats.json"):
        PreparedData(copy).stats()


def test_missing_prepared_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="toau prepare"):
        PreparedData(tmp_path)


def test_mirrored_left_hand_raise_lifts_right_wrist(clips):
    clip = next(c for c in clips if c.content == "raise-up-left-hand" and c.style == "normal")
    features = bandai.process_clip(clip)["features"]
    original = features_to_joints(features)
    mirrored = features_to_joints(mirror_features(features))
    left, right = JOINT_INDEX["left_wrist"], JOINT_INDEX["right_wrist"]
    assert original[:, left, 1].max() > original[:, right, 1].max() + 0.3
    assert mirrored[:, right, 1].max() > mirrored[:, left, 1].max() + 0.3


@pytest.mark.slow
def test_every_clip_gives_finite_features(bandai_dir, tmp_path):
    from toau.data.prepare import prepare_bandai

    summary = prepare_bandai(bandai_dir, tmp_path, workers=2)
    assert summary["failed"] == {}
    assert sum(s["clips"] for s in summary["splits"].values()) == 2865
    data = PreparedData(tmp_path)
    for split in bandai.SPLITS:
        assert all(np.isfinite(f).all() for f in data.features(split))


# --- HumanML3D folders ---------------------------------------------------------------------------

@pytest.fixture
def humanml3d_folder(reference_dir, tmp_path):
    """A HumanML3D-format folder built from the one reference clip, listed in train and test."""
    root = tmp_path / "HumanML3D"
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    features = np.load(reference_dir / "new_joint_vecs" / "012314.npy")
    for clip_id in ("000001", "000002"):
        np.save(root / "new_joint_vecs" / f"{clip_id}.npy", features)
        (root / "texts" / f"{clip_id}.txt").write_text(
            "a person walks forward.#a/DET person/NOUN walk/VERB forward/ADV#0.0#0.0\n"
            "someone strolls.#someone/PRON stroll/VERB#1.5#4.0\n")
    np.save(root / "Mean.npy", np.load(reference_dir / "Mean.npy"))
    np.save(root / "Std.npy", np.load(reference_dir / "Std.npy"))
    (root / "train.txt").write_text("000001\n")
    (root / "test.txt").write_text("000002\nmissing\n")
    return root


def test_caption_line_parsing():
    caption = parse_caption_line("someone strolls.#someone/PRON stroll/VERB#1.5#4.0")
    assert (caption.text, caption.start, caption.end) == ("someone strolls.", 1.5, 4.0)
    assert parse_caption_line("just text").end == 0.0


def test_humanml3d_folder_reads(humanml3d_folder):
    folder = HumanML3DFolder(humanml3d_folder)
    assert folder.split_ids("train") == ["000001"]
    assert folder.features("000001").shape == (170, 263)
    assert len(folder.captions("000002")) == 2


def test_prepare_humanml3d_layout(humanml3d_folder, reference_dir, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_humanml3d(humanml3d_folder, out)
    assert summary["splits"]["train"]["clips"] == 1
    assert summary["failed"] == {"missing": "no feature file"}
    data = PreparedData(out)
    mean, std = data.stats()
    np.testing.assert_array_equal(mean, np.load(reference_dir / "Mean.npy").astype(np.float32))
    expected_joints = np.load(reference_dir / "new_joints" / "012314.npy")
    assert np.abs(data.joints("000001") - expected_joints).max() < 1e-4


def test_not_a_humanml3d_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="new_joint_vecs"):
        HumanML3DFolder(tmp_path)


def test_checksum_changes_with_values():
    a = np.zeros(263, dtype=np.float32)
    assert stats_checksum(a, a + 1) != stats_checksum(a, a + 2)
