"""Projector shapes, prompt splicing, answer-only loss and batched generation of the motion-language model."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toau.cloud import llm
from toau.cloud.model import MotionLanguageModel, Sample, left_pad, splice_motion
from toau.cloud.projector import (
    FEATURE_DIM,
    MotionProjector,
    ProjectorConfig,
    load_projector,
    num_motion_tokens,
    save_projector,
)

QUESTIONS = ["what is the person doing?", "does the person jump?", "turns left"]


def make_model(tokens_per="frame", max_length=None, seed=0):
    tokenizer = llm.tiny_tokenizer()
    backbone = llm.tiny_llama(tokenizer, seed=seed)
    llm.add_motion_tokens(backbone, tokenizer)
    llm.freeze(backbone)
    torch.manual_seed(seed)
    projector = MotionProjector(ProjectorConfig(llm_hidden_size=32, tokens_per=tokens_per))
    return MotionLanguageModel(backbone, tokenizer, projector, max_length=max_length)


def motions(*lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, FEATURE_DIM)).astype(np.float32) for n in lengths]


# ---------------------------------------------------------------- projector


@pytest.mark.parametrize("frames, mode, expected", [(1, "frame", 1), (9, "frame", 9), (8, "index", 2), (9, "index", 3)])
def test_num_motion_tokens(frames, mode, expected):
    assert num_motion_tokens(frames, mode) == expected


def test_num_motion_tokens_rejects_mode():
    with pytest.raises(ValueError, match="'clip'"):
        num_motion_tokens(8, "clip")


def test_projector_frame_shape():
    projector = MotionProjector(ProjectorConfig(llm_hidden_size=32))
    assert projector(torch.zeros(2, 7, FEATURE_DIM)).shape == (2, 7, 32)


def test_projector_index_pads_last_group():
    projector = MotionProjector(ProjectorConfig(llm_hidden_size=32, tokens_per="index"))
    features = torch.randn(9, FEATURE_DIM)
    padded = torch.cat([features, features[-1:].expand(3, -1)])

    tokens = projector(features)

    assert tokens.shape == (3, 32)
    assert torch.equal(tokens, projector(padded))


def test_projector_index_keeps_frame_order():
    projector = MotionProjector(ProjectorConfig(llm_hidden_size=32, tokens_per="index"))
    features = torch.randn(4, FEATURE_DIM)
    assert not torch.allclose(projector(features), projector(features.flip(0)))


def test_projector_rejects_width():
    projector = MotionProjector(ProjectorConfig(llm_hidden_size=32))
    with pytest.raises(ValueError, match="width 66"):
        projector(torch.zeros(5, 66))


def test_projector_round_trip(tmp_path):
    projector = MotionProjector(ProjectorConfig(llm_hidden_size=32, tokens_per="index", hidden_size=48))
    loaded = load_projector(save_projector(projector, tmp_path))
    features = torch.randn(8, FEATURE_DIM)
    assert loaded.config == projector.config
    assert torch.equal(loaded(features), projector(features))


# ---------------------------------------------------------------- prompts and splicing


def test_prompt_holds_motion_span():
    model = make_model()
    ids = model.encode(QUESTIONS[0], 6).ids
    vocab = model.tokenizer.get_vocab()
    start, end = ids.index(vocab[llm.MOTION_START_TOKEN]), ids.index(vocab[llm.MOTION_END_TOKEN])
    assert ids[start + 1 : end] == [model.motion_id] * 6
    assert ids.count(model.motion_id) == 6


def test_completion_is_answer_turn():
    model = make_model()
    assert model.completion_text(QUESTIONS[0], 3, "they jump") == "they jump<|im_end|>\n"


def test_splice_replaces_placeholders():
    ids = torch.tensor([[5, 9, 9, 6], [9, 5, 6, 9]])
    embeds = torch.zeros(2, 4, 3)
    motion = [torch.ones(2, 3), torch.full((2, 3), 2.0)]

    spliced = splice_motion(embeds, ids, 9, motion)

    assert torch.equal(spliced[0, 1:3], motion[0])
    assert torch.equal(spliced[1, [0, 3]], motion[1])
    assert torch.equal(spliced[ids != 9], torch.zeros(4, 3))


def test_splice_count_mismatch_names_both():
    ids = torch.tensor([[5, 9, 9, 6]])
    with pytest.raises(ValueError, match="has 2 <motion> placeholders but 3 motion embeddings"):
        splice_motion(torch.zeros(1, 4, 3), ids, 9, [torch.ones(3, 3)])


def test_max_length_cutting_motion_raises():
    model = make_model(max_length=20)
    with pytest.raises(ValueError, match=r"needs \d+ tokens up to the end of the motion span .* max_length is 20"):
        model.generate(motions(30), QUESTIONS[:1])


def test_left_pad_mask():
    values, mask = left_pad([[1, 2, 3], [4]], 0)
    assert values.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


# ---------------------------------------------------------------- loss and scores


def reference_loss(model, motion, question, answer):
    """Cross-entropy over the answer tokens from a plain, unpadded forward pass with full logits."""
    embeds = model.project(motion)
    encoded = model.encode(question, embeds.shape[0], answer)
    ids = torch.tensor([encoded.ids])
    inputs = model.llm.get_input_embeddings()(ids)
    inputs = splice_motion(inputs, ids, model.motion_id, [embeds])
    logits = model.llm(inputs_embeds=inputs).logits[0]
    start = encoded.num_prompt_tokens
    return F.cross_entropy(logits[start - 1 : -1], ids[0, start:], reduction="sum"), len(encoded.ids) - start


def test_loss_matches_reference():
    model = make_model()
    batch = [Sample(m, q, a) for m, q, a in zip(motions(5, 9, 3), QUESTIONS, ["they walk", "no", "yes they turn left"])]

    loss = model.loss(batch)

    sums, counts = zip(*(reference_loss(model, *sample) for sample in batch))
    assert torch.allclose(loss, sum(sums) / sum(counts), atol=1e-5)


def test_loss_reaches_projector_only():
    model = make_model()
    model.loss([Sample(motions(4)[0], QUESTIONS[0], "they walk")]).backward()
    assert all(parameter.grad is not None for parameter in model.projector.parameters())
    assert all(parameter.grad is None for parameter in model.llm.parameters())


def test_long_answer_truncated():
    model = make_model()
    prompt_length = len(model.encode(QUESTIONS[0], 4).ids)
    model.max_length = prompt_length + 2
    encoded = model.encode(QUESTIONS[0], 4, "the person walks forward and turns left then stops")
    assert len(encoded.ids) == prompt_length + 2
    assert encoded.num_prompt_tokens == prompt_length


def test_loss_needs_answer_token():
    model = make_model()
    prompt_length = len(model.encode(QUESTIONS[0], 4).ids)
    model.max_length = prompt_length
    with pytest.raises(ValueError, match="sample 0 has no answer token"):
        model.loss([Sample(motions(4)[0], QUESTIONS[0], "they walk")])


def test_score_choices_match_loss():
    model = make_model()
    motion = motions(6)[0]
    choices = ["walk", "jump twice", "the person runs"]

    scores = model.score_choices(motion, QUESTIONS[0], choices)

    with torch.no_grad():
        expected = [-reference_loss(model, motion, QUESTIONS[0], choice)[0].item() for choice in choices]
    assert scores.shape == (3,)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("tokens_per", ["frame", "index"])
def test_batched_generate_equals_single(tokens_per):
    model = make_model(tokens_per)
    batch = motions(5, 13, 3)

    together = model.generate(batch, QUESTIONS, max_new_tokens=10)
    alone = [model.generate([motion], [question], max_new_tokens=10)[0] for motion, question in zip(batch, QUESTIONS)]

    assert together == alone
    assert all(text for text in together)


def test_generate_depends_on_motion():
    model = make_model()
    first, second = motions(8, 8)
    with torch.no_grad():
        model.projector.mlp[-1].bias.mul_(50)  # large embeddings, so the random LLM's output follows the motion
    assert model.generate([first], QUESTIONS[:1], 10) != model.generate([second * 50], QUESTIONS[:1], 10)


def test_smollm2_batched_generate_equals_single(one_thread):
    backbone, tokenizer = llm.load_backbone(llm.SMOLLM2)
    torch.manual_seed(0)
    projector = MotionProjector(ProjectorConfig(llm_hidden_size=backbone.config.hidden_size))
    with torch.no_grad():
        projector.mlp[-1].weight.mul_(0.01)  # keep the untrained motion embeddings near the text embedding scale
    model = MotionLanguageModel(backbone, tokenizer, projector)
    batch = motions(12, 4)
    questions = ["What is the person doing?", "Describe the motion."]

    together = model.generate(batch, questions, max_new_tokens=8)
    alone = [model.generate([motion], [question], max_new_tokens=8)[0] for motion, question in zip(batch, questions)]

    assert together == alone
    assert math.prod(len(text) for text in together) > 0
