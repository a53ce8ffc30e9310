"""The video baseline stage on two short test clips of the prepared subset, with a tiny random LLM and tokenizer."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from toau.baselines import codec as codec_module
from toau.baselines import render as render_module
from toau.baselines.codec import CodecSetting
from toau.baselines.pixel import pixel_pipeline, upscale
from toau.baselines.stage import (
    ABLATION_STEM, FIGURE, LATENCY_FILE, SWEEP_STEM, TABLES_STEM, accuracy_columns, answer_questions,
    grid_settings, questions_about, run_video_stage, select_motions, video_params, wrong_choice,
)
from toau.bench.questions import build_benchmark
from toau.channel.codec import load_tokenizer
from toau.channel.entropy import IndexModel
from toau.cloud import llm
from toau.cloud.model import MotionLanguageModel
from toau.cloud.projector import MotionProjector, ProjectorConfig, save_projector
from toau.cloud.stage import CLOUD_FILE
from toau.data.prepared import PreparedData
from toau.pose.base import get_estimator
from toau.tokenizer.stage import write_tokenizer
from toau.tokenizer.vqvae import VQVAE, VQVAEConfig
from helpers import numbers

CRFS = (23, 40)
PARAMS = {
    "clips": 2,
    "pairs": 0,
    "max_clip_frames": 40,
    "render": {"width": 320, "height": 180},
    "grid": {"libx264": {"sizes": [[160, 90]], "crfs": list(CRFS)}},
    "ablation": {
        "setting": {"codec": "libx264", "width": 160, "height": 90, "crf": CRFS[0]},
        "train_clips": 1,
        "steps": 1,
        "train": {"lr": 1e-2, "batch_size": 1, "checkpoint_every": 1, "seed": 0},
    },
}
TINY_WIDTH = 32  # d_model of llm.tiny_llama


def make_backbone():
    tokenizer = llm.tiny_tokenizer()
    backbone = llm.tiny_llama(tokenizer)
    llm.add_motion_tokens(backbone, tokenizer)
    return llm.freeze(backbone), tokenizer


@pytest.fixture(scope="module")
def folders(prepared_small, tmp_path_factory):
    """A random tokenizer and an untrained projector folder for it."""
    root = tmp_path_factory.mktemp("video")
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(width=16, depth=1)).eval()
    with torch.no_grad():
        model.quantizer.codebook.copy_(torch.randn(model.quantizer.codebook.shape))
    mean, std = PreparedData(prepared_small).stats()
    write_tokenizer(root / "tokenizer", model, mean, std, IndexModel.fit([np.arange(512)], 512), [], 0)
    tokenizer = load_tokenizer(root / "tokenizer")

    save_projector(MotionProjector(ProjectorConfig(TINY_WIDTH, "index")), root / "cloud")
    record = {"llm": "tiny", "tokens_per": "index", "codebook_hash": tokenizer.hash.hex(), "run_key": "test"}
    (root / "cloud" / CLOUD_FILE).write_text(json.dumps(record))
    return {"root": root, "tokenizer": root / "tokenizer", "cloud": root / "cloud"}


@pytest.fixture(scope="module")
def estimator():
    with get_estimator("mediapipe", focal_length_ratio=0.72) as pose:
        yield pose


@pytest.fixture(scope="module")
def stage(prepared_small, folders, estimator):
    root = folders["root"]
    result = run_video_stage(
        prepared_small, folders["tokenizer"], folders["cloud"], PARAMS, root / "work", root / "results",
        backbone=make_backbone(), estimator=estimator,
    )
    return {"result": result, "results": root / "results", "work": root / "work"}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- stage outputs


def test_result_files_written(stage):
    results = stage["results"]
    for stem in (SWEEP_STEM, TABLES_STEM, ABLATION_STEM):
        assert (results / f"{stem}.csv").is_file(), stem
        assert (results / f"{stem}.json").is_file(), stem
    assert (results / LATENCY_FILE).is_file()
    assert (results / FIGURE).stat().st_size > 0


@pytest.mark.parametrize("name", [f"{SWEEP_STEM}.json", f"{TABLES_STEM}.json", f"{ABLATION_STEM}.json", LATENCY_FILE])
def test_json_numbers_finite(stage, name):
    record = json.loads((stage["results"] / name).read_text())
    values = list(numbers(record))
    assert values
    assert all(math.isfinite(value) for value in values)


def test_sweep_row_per_setting(stage):
    rows = read_csv(stage["results"] / f"{SWEEP_STEM}.csv")
    assert [(row["codec"], row["resolution"], int(row["crf"])) for row in rows] == [
        ("libx264", "160x90", crf) for crf in CRFS
    ]


def test_sweep_records_provenance(stage):
    record = json.loads((stage["results"] / f"{SWEEP_STEM}.json").read_text())
    assert record["provenance"]["params"]["clips"] == PARAMS["clips"]
    assert len(record["provenance"]["motions"]) == PARAMS["clips"]


def test_bytes_fall_with_crf(stage):
    rows = stage["result"]["video_rows"]
    assert rows[0]["crf"] < rows[1]["crf"]
    assert rows[0]["bytes_per_clip"] > rows[1]["bytes_per_clip"]


def test_psnr_falls_with_crf(stage):
    rows = stage["result"]["video_rows"]
    assert rows[0]["psnr_db"] > rows[1]["psnr_db"]


def test_visual_tokens_of_160x90(stage):
    # Both clips (25 and 37 joint frames) render to under 2 s at 30 fps, so the processor samples
    # its minimum of 4 frames: 2 temporal groups. 160x90 resizes to 160x96, which gives
    # (96 / 32) * (160 / 32) = 15 tokens per group.
    assert stage["result"]["video_rows"][0]["visual_tokens"] == 30.0


def test_packets_and_video_same_questions(stage):
    rows = read_csv(stage["results"] / f"{TABLES_STEM}.csv")
    counts = {(row["table"], row["method"], row["crf"]): int(row["n_overall"]) for row in rows}
    assert len(set(counts.values())) == 1
    assert {row["method"] for row in rows} == {"packets-mocap", "packets-estimated", "video"}
    assert {row["table"] for row in rows} == {"I", "II"}


def test_packet_rows_send_less(stage):
    mocap, estimated = stage["result"]["packet_rows"]
    assert 0 < mocap["bytes_per_clip"] < min(row["bytes_per_clip"] for row in stage["result"]["video_rows"])
    assert estimated["clips"] == mocap["clips"]


def test_ablation_rows(stage):
    ablation = stage["result"]["ablation"]
    assert len(ablation["rows"]) == 4
    assert ablation["training"]["steps"] == PARAMS["ablation"]["steps"]
    assert len({row["n_overall"] for row in ablation["rows"]}) == 1


def test_latency_inputs_per_method(stage):
    record = json.loads((stage["results"] / LATENCY_FILE).read_text())
    methods = [entry["method"] for entry in record["inputs"]]
    assert methods.count("video") == len(CRFS)
    assert "packets-mocap" in methods
    assert all(row["total_ms"] > row["transfer_ms"] for row in record["rows"])


def test_rerun_reuses_cache(stage, prepared_small, folders, estimator, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a cached step ran again")

    monkeypatch.setattr(render_module, "render_clip", fail)
    monkeypatch.setattr(codec_module, "encode", fail)
    root = folders["root"]
    again = run_video_stage(
        prepared_small, folders["tokenizer"], folders["cloud"], PARAMS, stage["work"], root / "results-again",
        backbone=make_backbone(), estimator=estimator,
    )
    first = [row["acc_overall"] for row in stage["result"]["video_rows"]]
    assert [row["acc_overall"] for row in again["video_rows"]] == first


# ---------------------------------------------------------------- detection failures


def test_failure_answers_wrong(prepared_small):
    prepared = PreparedData(prepared_small)
    questions = build_benchmark(prepared, "test", seed=0)
    motions = {q.clip_ids[0]: None for q in questions}
    backbone, tokenizer = make_backbone()
    model = MotionLanguageModel(backbone, tokenizer, MotionProjector(ProjectorConfig(TINY_WIDTH, "index")))
    answers = answer_questions(model, questions, motions)
    columns = accuracy_columns(answers["predictions"], questions)
    assert answers["failed"] == len(questions)
    assert columns["n_overall"] == len(questions)
    assert columns["acc_overall"] == 0.0


def test_wrong_choice_never_answer(prepared_small):
    questions = build_benchmark(PreparedData(prepared_small), "test", seed=0)
    assert all(wrong_choice(q) != q.answer for q in questions)


def test_blank_video_is_failure(tmp_path, estimator):
    frames = np.full((12, 90, 160, 3), 128, dtype=np.uint8)
    path = tmp_path / "blank.mp4"
    codec_module.encode(frames, path, "libx264", 23, fps=30.0)
    result = pixel_pipeline(path.read_bytes(), estimator)
    assert result.features is None
    assert result.detection_rate == 0.0
    assert "no person" in result.failure


# ---------------------------------------------------------------- helpers


def test_upscale_keeps_aspect():
    frame = np.zeros((46, 80, 3), dtype=np.uint8)
    assert upscale(frame, 640).shape == (368, 640, 3)
    assert upscale(np.zeros((360, 640, 3), np.uint8), 640).shape == (360, 640, 3)
    assert upscale(frame, None).shape == frame.shape


def test_upscale_rejects_unknown_interpolation():
    with pytest.raises(ValueError, match="unknown interpolation 'sharp'"):
        upscale(np.zeros((4, 4, 3), np.uint8), 8, "sharp")


def test_full_grid_size():
    settings = grid_settings("full")
    assert len(settings) == 4 * 4 * 3
    assert CodecSetting("libsvtav1", 32, 32, 53) in settings


def test_grid_defaults_crfs():
    settings = grid_settings({"libx265": {"sizes": [[80, 46]]}})
    assert [s.crf for s in settings] == [23, 33, 43]


def test_params_reject_unknown():
    with pytest.raises(ValueError, match="'clip'"):
        video_params({"clip": 3})
    with pytest.raises(ValueError, match="ablation.step"):
        video_params({"ablation": {"step": 3}})


def test_selected_questions_match_motions(prepared_small):
    prepared = PreparedData(prepared_small)
    questions = build_benchmark(prepared, "train", seed=0)
    specs = select_motions(questions, prepared, "train", 6, 2, None, seed=0)
    chosen = questions_about(questions, specs)
    assert len(specs) == 8
    assert {tuple(q.clip_ids) for q in chosen} == set(specs)
    assert sum(len(spec) == 2 for spec in specs) == 2


def test_selection_spreads_contents(prepared_small):
    prepared = PreparedData(prepared_small)
    questions = build_benchmark(prepared, "train", seed=0)
    specs = select_motions(questions, prepared, "train", 6, 0, None, seed=0)
    contents = {r["clip_id"]: r["content"] for r in prepared.records("train")}
    assert len({contents[spec[0]] for spec in specs}) == 6
    assert any(q.category == "turn" for q in questions_about(questions, specs))

