"""Tests of the motion QA benchmark: labels, questions, Order motions, captions, scoring, loaders."""

import json
from collections import Counter

import numpy as np
import pytest

from toau.bench import labels
from toau.bench.captions import CAPTION_QUESTIONS, clip_captions, training_samples
from toau.bench.external import babel_qa_features, load_babel_qa, load_movid_bench
from toau.bench.questions import (
    CATEGORIES, CROSSFADE_FRAMES, NUM_CHOICES, Question, build_benchmark, concatenate_clips, label_agreement,
    load_questions, question_features, save_questions,
)
from toau.bench.scoring import random_baseline, score, score_rows, wilson_interval
from toau.data import bandai
from toau.data.amass import ZUP_TO_YUP
from toau.data.prepared import PreparedData
from toau.motion.humanml3d import FEATURE_DIM, facing_direction, joints_to_features
from toau.motion.resample import resample

# --- Fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prepared(bandai_dir, tmp_path_factory) -> PreparedData:
    """200 evenly spaced Bandai clips prepared into a temporary folder (about 5 s)."""
    from toau.data.prepare import prepare_bandai

    out = tmp_path_factory.mktemp("prepared_bench")
    prepare_bandai(bandai_dir, out, max_clips=200, workers=2)
    return PreparedData(out)


@pytest.fixture(scope="session")
def train_questions(prepared) -> list[Question]:
    return build_benchmark(prepared, split="train", seed=0)


@pytest.fixture(scope="session")
def labelled_facts(bandai_dir) -> dict[str, list[tuple[str, dict, np.ndarray]]]:
    """Measured facts of real clips whose content implies a turn or a travel direction.

    Every dataset-1 walk-back / walk-left / walk-right clip, and every 8th dataset-2
    walk-turn-left / walk-turn-right clip: content -> [(clip id, facts, joints (F, 22, 3))].
    """
    clips = bandai.find_clips(bandai_dir)
    chosen = [c for c in clips if c.dataset == 1 and c.content in ("walk-back", "walk-left", "walk-right")]
    for content in ("walk-turn-left", "walk-turn-right"):
        chosen += [c for c in clips if c.dataset == 2 and c.content == content][::8]
    found: dict[str, list] = {}
    for clip in chosen:
        processed = bandai.process_clip(clip)
        found.setdefault(clip.content, []).append(
            (clip.clip_id, labels.measure(processed["features"]), processed["joints"]))
    return found


def _facts(turn=0.0, left=0.0, forward=0.0, path=None, low=None, high=None) -> dict:
    distance = float(np.hypot(left, forward))
    return {
        "turn_deg": turn,
        "turn_min_deg": min(0.0, turn) if low is None else low,
        "turn_max_deg": max(0.0, turn) if high is None else high,
        "left_m": left,
        "forward_m": forward,
        "path_m": distance if path is None else path,
        "seconds": 5.0,
    }


def _heading(joints: np.ndarray) -> float:
    """Angle (radians) of the mean facing of some frames, about +Y from +Z toward +X."""
    facing = facing_direction(joints.astype(np.float64)).mean(axis=0)
    return float(np.arctan2(facing[0], facing[2]))


def _wrap(angle: float) -> float:
    return float(np.angle(np.exp(1j * angle)))


# --- Measured labels --------------------------------------------------------------------------


@pytest.mark.parametrize("facts, expected", [
    (_facts(turn=90.0, forward=5.0), "left"),
    (_facts(turn=-90.0, forward=5.0), "right"),
    (_facts(turn=40.0, forward=5.0), "slightly-left"),
    (_facts(turn=180.0, forward=5.0), "around"),
    (_facts(turn=10.0, forward=5.0), "straight"),
    (_facts(turn=10.0, path=0.3), None),                      # neither turns nor travels
    (_facts(turn=25.0, forward=5.0), None),                   # between straight and slight
    (_facts(turn=90.0, forward=5.0, low=-45.0), None),        # turns right first, then left
    (_facts(turn=5.0, forward=5.0, low=-60.0), None),         # turns away and back
])
def test_turn_label(facts, expected):
    assert labels.turn_label(facts) == expected


@pytest.mark.parametrize("facts, expected", [
    (_facts(forward=5.0), "forward"),
    (_facts(forward=-5.0), "backward"),
    (_facts(left=5.0), "left"),
    (_facts(left=-5.0), "right"),
    (_facts(left=3.0, forward=3.0), "forward-left"),
    (_facts(left=-3.0, forward=-3.0), "backward-right"),
    (_facts(left=0.1, forward=0.1, path=0.6), "in-place"),
    (_facts(left=0.5, forward=0.5, path=5.0), None),           # wanders without a direction
    (_facts(left=np.sin(np.radians(22)) * 5, forward=np.cos(np.radians(22)) * 5), None),  # on a sector edge
])
def test_direction_label(facts, expected):
    assert labels.direction_label(facts) == expected


def test_measure_sign_convention():
    features = np.zeros((40, FEATURE_DIM), dtype=np.float32)
    features[:, 0] = -np.radians(90.0) / 2 / 40      # half-angle steps that add up to a left quarter turn
    features[:, 1] = 0.01                             # +X of the body frame is the person's left
    features[:, 2] = 0.05
    facts = labels.measure(features)
    assert facts["turn_deg"] == pytest.approx(90.0, abs=0.01)
    assert facts["left_m"] == pytest.approx(0.4, abs=1e-3)
    assert facts["forward_m"] == pytest.approx(2.0, abs=1e-3)
    assert facts["seconds"] == pytest.approx(41 / 20)


def test_conflicts_symmetric():
    contents = sorted(labels.CONTENT_PHRASES)
    for first in contents:
        for second in contents:
            assert labels.contents_conflict(first, second) == labels.contents_conflict(second, first)


def test_turn_agrees_with_content(labelled_facts):
    for content, expected in labels.EXPECTED_TURN.items():
        found = [labels.turn_label(facts) for _, facts, _ in labelled_facts[content]]
        labelled = [label for label in found if label is not None]
        agree = sum(label in expected for label in labelled)
        assert len(labelled) >= 0.9 * len(found), (content, found)
        assert agree >= 0.9 * len(labelled), (content, found)


def test_turn_matches_joint_facing(labelled_facts):
    """The yaw channel's sign convention: compare with the facing measured from hips and shoulders."""
    for content in labels.EXPECTED_TURN:
        for clip_id, facts, joints in labelled_facts[content]:
            facing = facing_direction(joints.astype(np.float64))
            heading = np.degrees(np.unwrap(np.arctan2(facing[:, 0], facing[:, 2])))
            change = heading[-5:].mean() - heading[:5].mean()       # about +Y: toward +X is left
            assert np.sign(change) == np.sign(facts["turn_deg"]), (clip_id, change, facts["turn_deg"])
            assert abs(change - facts["turn_deg"]) < 45.0, (clip_id, change, facts["turn_deg"])


def test_direction_agrees_with_content(labelled_facts):
    for content in ("walk-back", "walk-left", "walk-right"):
        found = [labels.direction_label(facts) for _, facts, _ in labelled_facts[content]]
        labelled = [label for label in found if label is not None]
        assert len(labelled) >= 0.8 * len(found), (content, found)
        assert all(label in labels.EXPECTED_DIRECTION[content] for label in labelled), (content, found)


def test_label_agreement_report(prepared):
    report = label_agreement(prepared)
    rows = report["turn"]["walk-turn-left"]
    assert rows["clips"] == sum(r["content"] == "walk-turn-left" for r in prepared.records())
    assert rows["agree"] + len(rows["disagree"]) == rows["labelled"]
    assert rows["agree"] >= 0.9 * rows["labelled"]


# --- Questions --------------------------------------------------------------------------------


def test_benchmark_deterministic(prepared, train_questions):
    again = build_benchmark(prepared, split="train", seed=0)
    assert again == train_questions


def test_benchmark_seed_changes(prepared, train_questions):
    other = build_benchmark(prepared, split="train", seed=1)
    assert [q.choices for q in other] != [q.choices for q in train_questions]


def test_benchmark_every_category(train_questions):
    counts = Counter(q.category for q in train_questions)
    for category in CATEGORIES:
        assert counts[category] >= 20, counts


def test_answer_positions_balanced(train_questions):
    for category in CATEGORIES:
        positions = Counter(q.answer for q in train_questions if q.category == category)
        assert set(positions) == set(range(NUM_CHOICES)), (category, positions)
        assert max(positions.values()) - min(positions.values()) <= 1, (category, positions)


def test_choices_distinct(train_questions):
    for question in train_questions:
        assert len(question.choices) == NUM_CHOICES, question
        assert len(set(question.choices)) == NUM_CHOICES, question


def test_distractors_do_not_conflict(train_questions):
    """No distractor of an Event question names an action that could also describe the clip."""
    phrase_to_contents: dict[str, set] = {}
    for content, phrase in labels.CONTENT_PHRASES.items():
        phrase_to_contents.setdefault(phrase, set()).add(content)
    for question in train_questions:
        if question.category != "event":
            continue
        for index, choice in enumerate(question.choices):
            if index == question.answer:
                continue
            for content in phrase_to_contents[choice]:
                assert not labels.contents_conflict(question.facts["content"], content), question


def test_order_offers_other_action(train_questions):
    for question in train_questions:
        if question.category != "order":
            continue
        first, second = (labels.content_phrase(c) for c in question.facts["contents"])
        form = question.facts["form"]
        assert question.answer_text == (first if form in ("first", "before") else second), question
        if form in ("first", "second"):
            assert {first, second} <= set(question.choices), question
        else:
            assert (second if form == "before" else first) in question.question, question


def test_per_category_limit(prepared):
    questions = build_benchmark(prepared, split="train", seed=0, per_category=7)
    assert Counter(q.category for q in questions) == {c: 7 for c in CATEGORIES}


def test_category_streams_independent(prepared, train_questions):
    turn_only = build_benchmark(prepared, split="train", seed=0, categories=["turn"])
    assert turn_only == [q for q in train_questions if q.category == "turn"]


def test_unknown_category_rejected(prepared):
    with pytest.raises(ValueError, match="unknown categories"):
        build_benchmark(prepared, categories=["speed"])


def test_question_features_shapes(prepared):
    questions = build_benchmark(prepared, split="test", seed=0)
    frames = {r["clip_id"]: r["frames"] for r in prepared.records()}
    for question in questions:
        features = question_features(question, prepared)
        expected = sum(frames[c] for c in question.clip_ids) - 1
        if len(question.clip_ids) == 2:
            expected -= CROSSFADE_FRAMES
        assert features.shape == (expected, FEATURE_DIM), question.id
        assert np.all(np.isfinite(features)), question.id


def test_questions_json_round_trip(train_questions, tmp_path):
    path = tmp_path / "questions.json"
    save_questions(train_questions[:20], path)
    loaded = load_questions(path)
    assert loaded == train_questions[:20]
    assert [q.facts for q in loaded] == [q.facts for q in train_questions[:20]]


# --- Order motions ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def order_pair(prepared) -> tuple[np.ndarray, np.ndarray]:
    """A run followed by a gesture: the seam must stop a moving root without a jump."""
    records = prepared.records()
    run = next(r for r in records if r["content"] == "run" and r["dataset"] == 2)
    gesture = next(r for r in records if r["content"] == "wave-left-hand")
    return prepared.joints(run["clip_id"]), prepared.joints(gesture["clip_id"])


def test_order_length(order_pair):
    first, second = order_pair
    joints = concatenate_clips(first, second)
    assert joints.shape == (len(first) + len(second) - CROSSFADE_FRAMES, 22, 3)


def test_order_keeps_first_clip(order_pair):
    first, second = order_pair
    joints = concatenate_clips(first, second)
    head = len(first) - CROSSFADE_FRAMES
    np.testing.assert_allclose(joints[:head], first[:head], atol=1e-5)


@pytest.mark.parametrize("swap", [False, True])
def test_order_root_continuous(order_pair, swap):
    first, second = order_pair[::-1] if swap else order_pair
    joints = concatenate_clips(first, second)

    def steps(j):
        return np.linalg.norm(np.diff(j[:, 0, [0, 2]], axis=0), axis=1)

    inside = max(steps(first).max(), steps(second).max())
    assert steps(joints).max() <= inside + 0.02


def test_order_second_clip_rigid(order_pair):
    """After the cross-fade the second clip is only turned and moved: its shape is unchanged."""
    first, second = order_pair
    joints = concatenate_clips(first, second)
    tail = joints[len(first):]
    original = second[CROSSFADE_FRAMES:]
    np.testing.assert_allclose(tail[:, :, 1], original[:, :, 1], atol=1e-4)
    moved = tail[:, :, [0, 2]] - tail[:1, :1, [0, 2]]
    source = original[:, :, [0, 2]] - original[:1, :1, [0, 2]]
    np.testing.assert_allclose(np.linalg.norm(moved, axis=-1), np.linalg.norm(source, axis=-1), atol=1e-4)


def test_order_continues_facing(order_pair):
    first, second = order_pair
    joints = concatenate_clips(first, second)
    start = len(first) - CROSSFADE_FRAMES      # output frame of the second clip's first frame
    n = CROSSFADE_FRAMES
    turn_applied = _heading(joints[start + n:start + 2 * n]) - _heading(second[n:2 * n])
    turn_needed = _heading(first[-n:]) - _heading(second[:n])
    assert _wrap(turn_applied - turn_needed) == pytest.approx(0.0, abs=1e-4)


def test_order_rejects_short_clip(order_pair):
    first, _ = order_pair
    with pytest.raises(ValueError, match="cross-fade"):
        concatenate_clips(first, first[:CROSSFADE_FRAMES])


# --- Captions ---------------------------------------------------------------------------------


def test_clip_captions_text():
    record = {"content": "walk-turn-left", "style": "elderly"}
    captions = clip_captions(record, _facts(turn=90.0, forward=5.0))
    assert captions == [
        "A person is walking and turning left like an elderly person.",
        "Someone is walking and turning left like an elderly person for 5.0 seconds.",
        "The person is walking and turning left like an elderly person and turns left about 90 degrees.",
        "5.0 seconds of walking and turning left like an elderly person: the person moves forward.",
    ]


def test_training_samples(prepared):
    samples = training_samples(prepared, split="train", seed=0)
    train_ids = {r["clip_id"] for r in prepared.records("train")}
    assert len(samples["captions"]) >= 2 * len(train_ids)
    assert {s.question for s in samples["captions"]} <= set(CAPTION_QUESTIONS)
    assert all(set(s.motion) <= train_ids for s in samples["captions"] + samples["qa"])


def test_qa_answers_are_correct_choices(prepared, train_questions):
    samples = training_samples(prepared, split="train", seed=0)["qa"]
    assert [s.answer for s in samples] == [q.answer_text for q in train_questions]


# --- Scoring ----------------------------------------------------------------------------------


def test_score_perfect(train_questions):
    result = score([q.answer for q in train_questions], train_questions)
    assert result["overall"]["accuracy"] == 1.0
    for values in result["categories"].values():
        assert values["accuracy"] == 1.0


def test_score_all_wrong(train_questions):
    result = score([(q.answer + 1) % NUM_CHOICES for q in train_questions], train_questions)
    assert result["overall"]["accuracy"] == 0.0


def test_score_counts(train_questions):
    result = score(random_baseline(train_questions, seed=0), train_questions)
    counts = Counter(q.category for q in train_questions)
    assert {name: values["n"] for name, values in result["categories"].items()} == counts
    assert result["overall"]["n"] == len(train_questions)
    assert result["overall"]["chance"] == pytest.approx(1 / NUM_CHOICES)


def test_score_rows(train_questions):
    rows = score_rows(score([q.answer for q in train_questions], train_questions))
    assert [row["category"] for row in rows] == list(dict.fromkeys(q.category for q in train_questions)) + ["overall"]


def test_score_rejects_bad_prediction(train_questions):
    with pytest.raises(ValueError, match="not a choice index"):
        score([NUM_CHOICES] * len(train_questions), train_questions)


def test_score_rejects_wrong_length(train_questions):
    with pytest.raises(ValueError, match="predictions"):
        score([0], train_questions)


def test_random_baseline_deterministic(train_questions):
    assert random_baseline(train_questions, seed=3) == random_baseline(train_questions, seed=3)


@pytest.mark.parametrize("correct, n, low, high", [
    (0, 10, 0.0, 0.27753),
    (10, 10, 0.72247, 1.0),
    (5, 10, 0.23659, 0.76341),
    (81, 100, 0.72221, 0.87485),
])
def test_wilson_interval(correct, n, low, high):
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_empty():
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- External benchmarks ----------------------------------------------------------------------


def _write_babel_qa(root, drop=None):
    answers = {"query_action": ["walk", "run", "jump", "kick", "sit"], "query_direction": ["left", "right", "forward", "backward"],
               "query_body_part": ["left arm", "right arm", "left leg", "right leg"]}
    questions = {}
    for kind, values in answers.items():
        for i, answer in enumerate(values):
            question_id = f"{len(questions):06d}"
            questions[question_id] = {
                "babel_id": str(100 + i), "question_id": question_id, "question": f"What {kind} {i}?",
                "answer": answer, "query_type": kind, "relation_type": "before" if i == 0 else "no_relation",
                "program": [],
            }
    if drop:
        del questions["000001"][drop]
    (root / "questions.json").write_text(json.dumps(questions))
    ids = sorted(questions)
    (root / "split_question_ids.json").write_text(json.dumps({"train": ids[:2], "val": [], "test": ids}))
    return questions


def test_babel_qa_categories(tmp_path):
    _write_babel_qa(tmp_path)
    questions = load_babel_qa(tmp_path, split="test")
    assert Counter(q.category for q in questions) == {"event": 4, "order": 1, "direction": 4, "body_part": 4}


def test_babel_qa_choices(tmp_path):
    source = _write_babel_qa(tmp_path)
    questions = load_babel_qa(tmp_path, split="test")
    for question, record in zip(questions, source.values()):
        assert question.answer_text == record["answer"]
        assert len(set(question.choices)) == NUM_CHOICES


def test_babel_qa_missing_field(tmp_path):
    _write_babel_qa(tmp_path, drop="answer")
    with pytest.raises(ValueError, match="'answer'"):
        load_babel_qa(tmp_path, split="test")


def test_babel_qa_unknown_split(tmp_path):
    _write_babel_qa(tmp_path)
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_babel_qa(tmp_path, split="dev")


def test_babel_qa_features(tmp_path, prepared):
    """Joints written as BABEL-QA stores them (Z up, 30 fps) come back as the prepared features."""
    _write_babel_qa(tmp_path)
    record = next(r for r in prepared.records() if r["content"] == "walk-turn-left")
    joints = prepared.joints(record["clip_id"]).astype(np.float64)
    stored = resample(joints, fps=20.0, target_fps=30.0) @ ZUP_TO_YUP      # Y up -> Z up
    (tmp_path / "motion_sequences" / "100").mkdir(parents=True)
    np.save(tmp_path / "motion_sequences" / "100" / "joints.npy", stored)

    question = load_babel_qa(tmp_path, split="test")[0]
    features = babel_qa_features(question, tmp_path)
    reference = joints_to_features(joints)
    assert abs(len(features) - len(reference)) <= 1
    assert labels.turn_degrees(features) == pytest.approx(labels.turn_degrees(reference), abs=5.0)
    assert features[:, 3].mean() == pytest.approx(reference[:, 3].mean(), abs=0.02)


def test_babel_qa_feat_path(tmp_path):
    source = _write_babel_qa(tmp_path)
    features = np.random.default_rng(0).normal(size=(30, FEATURE_DIM)).astype(np.float32)
    np.save(tmp_path / "feats.npy", features)
    source["000000"]["feat_path"] = "feats.npy"
    (tmp_path / "questions.json").write_text(json.dumps(source))
    question = load_babel_qa(tmp_path, split="test")[0]
    np.testing.assert_array_equal(babel_qa_features(question, tmp_path), features)


def _write_movid(folder):
    folder.mkdir()
    (folder / "clip_a.json").write_text(json.dumps([
        {"question": "Which way does he walk?", "answer": "left", "type": "Direction"},
        {"question": "What happens first?", "answer": "he sits", "type": "Sequentiality",
         "options": ["he sits", "he jumps", "he waves"]},
    ]))
    for i, answer in enumerate(["right", "forward", "backward"]):
        (folder / f"clip_{i}.json").write_text(json.dumps(
            {"question": "Which way?", "answer": answer, "type": "direction", "video": f"v{i}"}))


def test_movid_bench_folder(tmp_path):
    _write_movid(tmp_path / "movid")
    questions = load_movid_bench(tmp_path / "movid")
    assert Counter(q.category for q in questions) == {"direction": 4, "order": 1}
    assert {q.clip_ids[0] for q in questions} == {"clip_a", "v0", "v1", "v2"}


def test_movid_bench_options_kept(tmp_path):
    _write_movid(tmp_path / "movid")
    ordered = next(q for q in load_movid_bench(tmp_path / "movid") if q.category == "order")
    assert ordered.choices == ("he sits", "he jumps", "he waves")
    assert ordered.answer == 0


def test_movid_bench_keyed_file(tmp_path):
    path = tmp_path / "bench.json"
    records = {f"q{i}": {"question": "Which way?", "answer": answer, "category": "Direction", "video_id": f"v{i}"}
               for i, answer in enumerate(["left", "right", "forward", "backward"])}
    path.write_text(json.dumps(records))
    questions = load_movid_bench(path)
    assert [q.clip_ids[0] for q in questions] == ["v0", "v1", "v2", "v3"]
    assert [q.answer_text for q in questions] == ["left", "right", "forward", "backward"]
    assert {q.category for q in questions} == {"direction"}


def test_movid_bench_missing_answer(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps([{"question": "What?", "video": "x"}]))
    with pytest.raises(ValueError, match="'answer'"):
        load_movid_bench(path)
