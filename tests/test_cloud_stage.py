"""The projector and benchmark stages with a tiny random tokenizer and a tiny Llama on 60 prepared Bandai clips."""

import csv
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from toau.bench.captions import TextSample
from toau.bench.questions import build_benchmark, motion_features
from toau.channel.entropy import IndexModel
from toau.cloud import llm
from toau.cloud import stage as stage_module
from toau.cloud.model import MotionLanguageModel
from toau.cloud.projector import MotionProjector, ProjectorConfig, load_projector
from toau.cloud.stage import (
    BENCHMARK_FIGURE,
    BENCHMARK_STEM,
    CLOUD_FILE,
    METHODS,
    PROJECTOR_LOSS_FIGURE,
    PROJECTOR_METRICS_FILE,
    DecodedMotions,
    cloud_params,
    decoded_features,
    keep_trainable,
    motion_rows,
    packet_features,
    prompt_tokens,
    question_motions,
    run_benchmark_stage,
    resolve_device,
    run_key,
    run_projector_stage,
    shuffled_partners,
)
from toau.cloud.train import HISTORY_FILE
from toau.data.prepared import PreparedData
from toau.motion.humanml3d import FEATURE_DIM
from toau.tokenizer.stage import write_tokenizer
from toau.tokenizer.vqvae import VQVAE, VQVAEConfig
from helpers import numbers

CLOUD_PARAMS = {
    "llm": "unused: the tests pass a tiny backbone",
    "tokens_per": "index",
    "max_frames": 160,
    "stages": {"captions": 2, "qa": 3},
    "train": {"lr": 1e-2, "batch_size": 2, "checkpoint_every": 1, "seed": 0},
}
BENCHMARK_PARAMS = {"split": "test", "seed": 0, "per_category": 3, "examples": 2, "max_new_tokens": 4}


def make_tokenizer(folder, prepared_dir, seed):
    """Write a random VQ-VAE (width 16) with a seeded codebook and the prepared statistics as a tokenizer folder."""
    torch.manual_seed(seed)
    model = VQVAE(VQVAEConfig(width=16, depth=1)).eval()
    with torch.no_grad():
        model.quantizer.codebook.copy_(torch.randn(model.quantizer.codebook.shape))
    mean, std = PreparedData(prepared_dir).stats()
    index_model = IndexModel.fit([np.arange(512)], 512)
    write_tokenizer(folder, model, mean, std, index_model, [], 0)
    return folder


def make_backbone():
    """A tiny random Llama with the motion tokens; RoPE has no table, so longer prompts than 512 are fine."""
    tokenizer = llm.tiny_tokenizer()
    backbone = llm.tiny_llama(tokenizer)
    llm.add_motion_tokens(backbone, tokenizer)
    backbone.config.max_position_embeddings = 2048
    return llm.freeze(backbone), tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(prepared_small, tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tok", prepared_small, seed=0)


@pytest.fixture(scope="module")
def stages(prepared_small, tokenizer_dir, tmp_path_factory):
    """Run both stages once; return their folders and results."""
    root = tmp_path_factory.mktemp("cloud")
    folders = {name: root / name for name in ("cloud", "results", "runs", "decoded")}
    metrics = run_projector_stage(
        prepared_small, tokenizer_dir, CLOUD_PARAMS, folders["cloud"], folders["results"],
        runs_dir=folders["runs"], decoded_dir=folders["decoded"], backbone=make_backbone(),
    )
    result = run_benchmark_stage(
        prepared_small, tokenizer_dir, folders["cloud"], BENCHMARK_PARAMS, folders["results"], backbone=make_backbone()
    )
    return {"metrics": metrics, "result": result, **folders}


# ---------------------------------------------------------------- projector stage


def test_projector_files_written(stages):
    for name in ("projector.safetensors", "projector.json", HISTORY_FILE, CLOUD_FILE):
        assert (stages["cloud"] / name).is_file(), name
    assert (stages["results"] / PROJECTOR_METRICS_FILE).is_file()
    assert (stages["results"] / PROJECTOR_LOSS_FIGURE).is_file()


def test_projector_history(stages):
    history = json.loads((stages["cloud"] / HISTORY_FILE).read_text())
    assert [entry["stage"] for entry in history] == ["captions"] * 2 + ["qa"] * 3
    assert all(math.isfinite(entry["loss"]) for entry in history)


def test_projector_metrics_finite(stages):
    metrics = json.loads((stages["results"] / PROJECTOR_METRICS_FILE).read_text())
    assert all(math.isfinite(value) for value in numbers(metrics))
    assert metrics["training"]["steps"] == 5
    assert metrics["stages"]["qa"]["steps"] == 3


def test_cloud_record_names_tokenizer(stages, tokenizer_dir):
    from toau.channel.codec import load_tokenizer

    record = json.loads((stages["cloud"] / CLOUD_FILE).read_text())
    assert record["codebook_hash"] == load_tokenizer(tokenizer_dir).hash.hex()
    assert record["tokens_per"] == "index"


def test_device_stays_out_of_run_key(prepared_small, tokenizer_dir):
    params = cloud_params(CLOUD_PARAMS)
    on_gpu = {**params, "device": "cuda"}
    prepared = PreparedData(prepared_small)
    assert run_key(params, "tiny", tokenizer_dir, prepared) == run_key(on_gpu, "tiny", tokenizer_dir, prepared)


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


def test_resolve_device_unknown_name():
    with pytest.raises(ValueError, match="'gpu0' is not a torch device"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_resolve_device_without_gpu():
    with pytest.raises(ValueError, match="sees no CUDA GPU; set device: cpu"):
        resolve_device("cuda")


def test_rerun_reuses_run(stages, prepared_small, tokenizer_dir, tmp_path):
    before = load_projector(stages["cloud"]).state_dict()
    metrics = run_projector_stage(
        prepared_small, tokenizer_dir, CLOUD_PARAMS, tmp_path / "cloud", tmp_path / "results",
        runs_dir=stages["runs"], decoded_dir=stages["decoded"], backbone=make_backbone(),
    )
    after = load_projector(tmp_path / "cloud").state_dict()
    assert metrics["training"]["steps"] == 5
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name


def test_interrupted_run_resumes(stages, prepared_small, tokenizer_dir, tmp_path, monkeypatch):
    calls = {"count": 0}
    original = stage_module.MotionSamples.__getitem__

    def failing(self, index):
        calls["count"] += 1
        if calls["count"] > 7:  # after three steps of batch 2 and the first sample of the fourth
            raise RuntimeError("simulated interruption")
        return original(self, index)

    folders = {name: tmp_path / name for name in ("cloud", "results", "runs")}
    kwargs = dict(runs_dir=folders["runs"], decoded_dir=stages["decoded"], backbone=make_backbone())
    monkeypatch.setattr(stage_module.MotionSamples, "__getitem__", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        run_projector_stage(prepared_small, tokenizer_dir, CLOUD_PARAMS, folders["cloud"], folders["results"], **kwargs)
    monkeypatch.setattr(stage_module.MotionSamples, "__getitem__", original)
    kwargs["backbone"] = make_backbone()
    metrics = run_projector_stage(prepared_small, tokenizer_dir, CLOUD_PARAMS, folders["cloud"], folders["results"], **kwargs)

    straight = load_projector(stages["cloud"]).state_dict()
    resumed = load_projector(folders["cloud"]).state_dict()
    assert metrics["training"]["steps"] == 5
    for name, tensor in straight.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-6), name


# ---------------------------------------------------------------- decoded motion


def test_decoded_cache_reads_file(prepared_small, tokenizer_dir, tmp_path):
    from toau.channel.codec import load_tokenizer

    motions = DecodedMotions(PreparedData(prepared_small), load_tokenizer(tokenizer_dir), tmp_path)
    clip_id = PreparedData(prepared_small).records("train")[0]["clip_id"]
    decoded = motions((clip_id,))
    np.save(motions.path((clip_id,)), np.full_like(decoded, 7.0))
    assert np.all(motions((clip_id,)) == 7.0)


def test_decoded_cache_keyed_by_codebook(prepared_small, tokenizer_dir, tmp_path):
    from toau.channel.codec import load_tokenizer

    prepared = PreparedData(prepared_small)
    first = DecodedMotions(prepared, load_tokenizer(tokenizer_dir), tmp_path / "decoded")
    other = load_tokenizer(make_tokenizer(tmp_path / "other", prepared_small, seed=1))
    second = DecodedMotions(prepared, other, tmp_path / "decoded")
    clip = (prepared.records("train")[0]["clip_id"],)
    cached = first(clip)
    assert first.folder != second.folder
    assert not second.path(clip).exists()
    assert not np.array_equal(second(clip), cached)


def test_decoded_shape(prepared_small, tokenizer_dir):
    from toau.channel.codec import load_tokenizer

    prepared = PreparedData(prepared_small)
    features = prepared.clip_features(prepared.records("train")[0]["clip_id"])
    decoded = decoded_features(load_tokenizer(tokenizer_dir), features)
    assert decoded.shape == (len(features) // 4 * 4, FEATURE_DIM)
    assert decoded.dtype == np.float32


def test_packet_path_matches_decode(prepared_small, tokenizer_dir):
    from toau.channel.codec import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    prepared = PreparedData(prepared_small)
    features = prepared.clip_features(prepared.records("test")[0]["clip_id"])
    decoded, data = packet_features(tokenizer, features)
    assert np.array_equal(decoded, decoded_features(tokenizer, features))
    assert len(data) == 27 + math.ceil(len(features) // 4 * 9 / 8) + 4  # header, 9-bit indices, CRC


def test_motion_rows_of_pair(prepared_small):
    prepared = PreparedData(prepared_small)
    records = prepared.records("train")
    frames = {r["clip_id"]: r["frames"] for r in records}
    pair = (records[0]["clip_id"], records[1]["clip_id"])
    assert motion_rows(pair, frames) == len(motion_features(pair, prepared))
    assert motion_rows(pair[:1], frames) == len(motion_features(pair[:1], prepared))


def test_keep_trainable_limits():
    frames = {"a": 10, "b": 50, "c": 3}
    texts = [TextSample((clip,), "q", "a") for clip in frames]
    kept = keep_trainable(texts, frames, min_rows=4, max_rows=20)
    assert [text.motion for text in kept] == [("a",)]


# ---------------------------------------------------------------- scoring


def tiny_model(tokens_per="frame"):
    backbone, tokenizer = make_backbone()
    torch.manual_seed(0)
    return MotionLanguageModel(backbone, tokenizer, MotionProjector(ProjectorConfig(32, tokens_per)))


@pytest.mark.parametrize("tokens_per", ["frame", "index"])
def test_cached_scores_match(tokens_per):
    model = tiny_model(tokens_per)
    motion = np.random.default_rng(0).standard_normal((13, FEATURE_DIM)).astype(np.float32)
    choices = ["yes", "they jump twice and wave with the right hand", "turns left", "no"]
    expected = model.score_choices_full(motion, "what is the person doing?", choices)
    actual = model.score_choices(motion, "what is the person doing?", choices)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)


def test_cached_scores_without_motion():
    model = tiny_model()
    motion = np.zeros((0, FEATURE_DIM), dtype=np.float32)
    expected = model.score_choices_full(motion, "which way?", ["left", "right"])
    np.testing.assert_allclose(model.score_choices(motion, "which way?", ["left", "right"]), expected, atol=1e-4)


def test_no_motion_prompt_has_no_motion_tokens(prepared_small, tokenizer_dir):
    from toau.channel.codec import load_tokenizer

    model = tiny_model()
    prepared = PreparedData(prepared_small)
    question = build_benchmark(prepared, "test", seed=0, per_category=1)[0]
    motion = question_motions(question, question, prepared, load_tokenizer(tokenizer_dir))["no_motion"]
    ids = model.encode(question.question, model.projector(torch.from_numpy(motion)).shape[0]).ids
    assert motion.shape == (0, FEATURE_DIM)
    assert ids.count(model.motion_id) == 0
    assert prompt_tokens(model, question.question, 0)[0] == 0


def test_shuffled_partners_same_category(prepared_small):
    questions = build_benchmark(PreparedData(prepared_small), "test", seed=0)
    partners = shuffled_partners(questions, seed=0)
    counts = Counter(q.category for q in questions)
    for index, partner in enumerate(partners):
        assert questions[partner].category == questions[index].category, index
        if counts[questions[index].category] > 1:
            assert partner != index, index
    assert sorted(partners) == list(range(len(questions)))


def test_shuffled_motion_is_partners(prepared_small, tokenizer_dir):
    from toau.channel.codec import load_tokenizer

    prepared = PreparedData(prepared_small)
    tokenizer = load_tokenizer(tokenizer_dir)
    first, second = build_benchmark(prepared, "test", seed=0, categories=["event"])[:2]
    motions = question_motions(first, second, prepared, tokenizer)
    partner = question_motions(second, second, prepared, tokenizer)
    assert np.array_equal(motions["shuffled"], partner["packet"])


# ---------------------------------------------------------------- benchmark stage


def test_benchmark_files_written(stages):
    for suffix in (".json", ".csv", ".md"):
        assert (stages["results"] / f"{BENCHMARK_STEM}{suffix}").is_file(), suffix
    assert (stages["results"] / BENCHMARK_FIGURE).is_file()


def test_benchmark_numbers_finite(stages):
    result = json.loads((stages["results"] / f"{BENCHMARK_STEM}.json").read_text())
    assert all(math.isfinite(value) for value in numbers(result["scores"]))
    assert all(math.isfinite(value) for value in numbers(result["packets"]))
    assert all(math.isfinite(value) for value in numbers(result["rows"]))


def test_benchmark_accuracy_per_category(stages, prepared_small):
    questions = build_benchmark(PreparedData(prepared_small), "test", seed=0, per_category=3)
    counts = Counter(q.category for q in questions)
    scores = stages["result"]["scores"]
    assert set(scores) == set(METHODS)
    for method in METHODS:
        assert set(scores[method]["categories"]) == set(counts), method
        for category, values in scores[method]["categories"].items():
            assert values["n"] == counts[category], (method, category)
            assert 0.0 <= values["accuracy"] <= 1.0, (method, category)
        assert scores[method]["overall"]["n"] == len(questions), method


def test_benchmark_no_motion_tokens(stages):
    rows = [row for row in stages["result"]["rows"] if row["method"] == "no_motion"]
    assert rows
    assert all(row["motion_tokens"] == 0 for row in rows)
    packet = [row for row in stages["result"]["rows"] if row["method"] == "packet" and row["category"] == "overall"]
    assert packet[0]["motion_tokens"] > 0


def test_benchmark_csv_rows(stages):
    with open(stages["results"] / f"{BENCHMARK_STEM}.csv") as f:
        rows = list(csv.DictReader(f))
    categories = {row["category"] for row in rows}
    assert len(rows) == len(METHODS) * len(categories)
    assert "overall" in categories


def test_benchmark_packet_sizes(stages):
    packets = stages["result"]["packets"]
    assert packets["clips"] == len(PreparedData(stages["result"]["provenance"]["prepared_dir"]).records("test"))
    assert 0 < packets["kb_entropy"]
    assert 0 < packets["kb_fixed"]


def test_benchmark_examples(stages):
    examples = stages["result"]["examples"]
    assert len(examples) == 2
    assert all(isinstance(example["generated"], str) for example in examples)
    assert all(example["ground_truth"] for example in examples)


def test_benchmark_rejects_other_tokenizer(stages, prepared_small, tmp_path):
    other = make_tokenizer(tmp_path / "other", prepared_small, seed=2)
    with pytest.raises(ValueError, match="rerun the projector stage"):
        run_benchmark_stage(prepared_small, other, stages["cloud"], BENCHMARK_PARAMS, tmp_path, backbone=make_backbone())
