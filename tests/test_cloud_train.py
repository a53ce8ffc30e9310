"""Projector training: only the projector learns, checkpoints resume exactly, stages run in order."""

import json

import numpy as np
import pytest
import torch

from toau.cloud import llm
from toau.cloud.model import MotionLanguageModel, Sample
from toau.cloud.projector import FEATURE_DIM, MotionProjector, ProjectorConfig, load_projector
from toau.cloud.train import CHECKPOINT_DIR, HISTORY_FILE, TrainParams, batch_indices, train_projector

PARAMS = TrainParams(lr=1e-2, batch_size=2, checkpoint_every=2, seed=3)


def make_model():
    tokenizer = llm.tiny_tokenizer()
    backbone = llm.tiny_llama(tokenizer)
    llm.add_motion_tokens(backbone, tokenizer)
    llm.freeze(backbone)
    torch.manual_seed(0)
    projector = MotionProjector(ProjectorConfig(llm_hidden_size=32, tokens_per="index"))
    return MotionLanguageModel(backbone, tokenizer, projector)


def make_samples(answers, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Sample(rng.standard_normal((8, FEATURE_DIM)).astype(np.float32), "what is the person doing?", answer)
        for answer in answers
    ]


CAPTIONS = make_samples(["the person walks forward", "they jump twice", "they turn left", "they wave"])
QA = make_samples(["yes", "no", "left"], seed=1)


def projector_state(model):
    return {name: tensor.clone() for name, tensor in model.projector.state_dict().items()}


def test_only_projector_changes(tmp_path):
    model = make_model()
    llm_before = {name: tensor.clone() for name, tensor in model.llm.state_dict().items()}
    projector_before = projector_state(model)

    history = train_projector(model, [("captions", CAPTIONS, 3)], PARAMS, tmp_path)

    assert [entry["step"] for entry in history] == [0, 1, 2]
    for name, tensor in model.llm.state_dict().items():
        assert torch.equal(tensor, llm_before[name]), name
    assert not torch.equal(model.projector.mlp[0].weight, projector_before["mlp.0.weight"])


def test_outputs_written(tmp_path):
    model = make_model()
    history = train_projector(model, [("captions", CAPTIONS, 2), ("qa", QA, 1)], PARAMS, tmp_path)

    loaded = load_projector(tmp_path)
    features = torch.randn(8, FEATURE_DIM)
    assert torch.equal(loaded(features), model.projector(features))
    assert json.loads((tmp_path / HISTORY_FILE).read_text()) == history
    assert [entry["stage"] for entry in history] == ["captions", "captions", "qa"]


def test_resume_matches_straight_run(tmp_path):
    stages = [("captions", CAPTIONS, 3), ("qa", QA, 2)]
    straight = make_model()
    straight_history = train_projector(straight, stages, PARAMS, tmp_path / "straight")

    resumed = make_model()
    train_projector(resumed, stages[:1], PARAMS, tmp_path / "resumed")
    restarted = make_model()  # a fresh process: weights come from the checkpoint only
    resumed_history = train_projector(restarted, stages, PARAMS, tmp_path / "resumed")

    assert resumed_history == straight_history
    for name, tensor in straight.projector.state_dict().items():
        assert torch.equal(restarted.projector.state_dict()[name], tensor), name


def test_resume_rejects_other_stages(tmp_path):
    train_projector(make_model(), [("captions", CAPTIONS, 1)], PARAMS, tmp_path)
    with pytest.raises(ValueError, match="written for stages \\['captions'\\]"):
        train_projector(make_model(), [("qa", QA, 1)], PARAMS, tmp_path)
    assert (tmp_path / CHECKPOINT_DIR).is_dir()


def test_unfrozen_llm_rejected(tmp_path):
    model = make_model()
    model.llm.get_input_embeddings().weight.requires_grad_(True)
    with pytest.raises(ValueError, match="must be frozen"):
        train_projector(model, [("captions", CAPTIONS, 1)], PARAMS, tmp_path)


def test_unknown_param_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown training parameters \\['learning_rate'\\]"):
        train_projector(make_model(), [("captions", CAPTIONS, 1)], {"learning_rate": 1e-3}, tmp_path)


@pytest.mark.slow  # 5-20 s on 2 shared cores: 12 training steps through the 135M backbone
def test_smollm2_learns_two_captions(tmp_path, one_thread):
    backbone, tokenizer = llm.load_backbone(llm.SMOLLM2)
    torch.manual_seed(0)
    projector = MotionProjector(ProjectorConfig(llm_hidden_size=backbone.config.hidden_size, tokens_per="index"))
    model = MotionLanguageModel(backbone, tokenizer, projector)
    rng = np.random.default_rng(0)
    captions = ["The person jumps twice.", "The person kicks with the left leg."]
    samples = [
        Sample(rng.standard_normal((40, FEATURE_DIM)).astype(np.float32), "What is the person doing?", caption)
        for caption in captions
    ]

    history = train_projector(model, [("captions", samples, 12)], TrainParams(lr=1e-3, batch_size=2), tmp_path)

    assert history[-1]["loss"] < 0.3 * history[0]["loss"]
    answers = model.generate([sample.features for sample in samples], [sample.question for sample in samples], 12)
    assert answers == captions


def test_batch_indices_cover_each_epoch():
    order = [index for step in range(5) for index in batch_indices(10, 4, seed=1, stage_index=0, step=step)]
    assert sorted(order[:10]) == list(range(10))
    assert sorted(order[10:20]) == list(range(10))
    assert order[:10] != order[10:20]
