"""Loaders for external motion QA benchmarks a user has on disk: BABEL-QA and MoVid-Bench.

Both become `Question`s so that `toau.bench.scoring` scores them like the built-in benchmark.
Their questions are open-answer, so the choices are the correct answer plus distractors drawn
(seeded) from the other answers of the same question type in the file, with the correct
position spread evenly. Question types map onto our categories where one fits
(`BABEL_QA_CATEGORIES`, `MOVID_CATEGORIES`); other types keep their own name as the category.

BABEL-QA layout (github.com/markendo/HumanMotionQA, folder BABEL-QA):

    questions.json              {question_id: {"babel_id", "question", "answer", "query_type",
                                               "relation_type", ...}}
    split_question_ids.json     {"train": [question_id, ...], "val": [...], "test": [...]}
    motion_sequences/{babel_id}/joints.npy   (F, J >= 22, 3) SMPL-order joints, 30 fps, Z up

A question may instead carry "feat_path", a (T, 263) HumanML3D feature file relative to the root.

MoVid-Bench: a JSON file containing a list of records (or {id: record}), or a folder of JSON
files, one per video, each containing one record or a list. A record needs "question" and
"answer". The video id comes from "video", "video_id" or "motion_id", or else the file name.
"type" or "category" gives the question type, and "options" (a list) makes the question
multiple choice with exactly those choices.
NOTE: no public description of the MoVid-Bench files could be checked, so the field names
above are this loader's documented format; rename fields to match it.
"""

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from toau.bench.questions import NUM_CHOICES, Question
from toau.data.amass import ZUP_TO_YUP
from toau.motion.humanml3d import FEATURE_DIM, joints_to_features
from toau.motion.resample import resample

BABEL_QA_FPS = 30.0
BABEL_QA_REQUIRED = ("babel_id", "question", "answer", "query_type")
# (query_type, has a temporal relation) -> category. A question with a temporal relation
# ("before", "after", "in_between") is about what happens around another action, as in Order.
BABEL_QA_CATEGORIES = {
    ("query_action", False): "event",
    ("query_action", True): "order",
    ("query_direction", False): "direction",
    ("query_direction", True): "direction",
    ("query_body_part", False): "body_part",
    ("query_body_part", True): "body_part",
}

MOVID_REQUIRED = ("question", "answer")
MOVID_VIDEO_FIELDS = ("video", "video_id", "motion_id")
# Question types of MoVid-Bench as described for MotionLLM (body-part awareness, sequentiality,
# direction, reasoning, hallucination), compared lower-case with non-letters removed.
MOVID_CATEGORIES = {
    "direction": "direction",
    "sequentiality": "order",
    "sequence": "order",
    "bodypart": "body_part",
    "bodypartawareness": "body_part",
    "reasoning": "reasoning",
    "hallucination": "hallucination",
}


def _require(record: dict, fields: Sequence[str], source: str, item: str) -> None:
    for name in fields:
        if name not in record:
            raise ValueError(f"{source}: {item} lacks the required field {name!r} (fields present: {sorted(record)})")


def _with_choices(items: list[dict], source: str, seed: int, num_choices: int) -> list[Question]:
    """Turn items (dicts of id, category, clip_ids, question, answer, type, facts) into Questions.

    Items with "options" keep them as their choices. The others get distractors from the answers
    of the same type, with the correct position spread evenly within each category.
    """
    rng = np.random.default_rng(seed)
    answers_by_type: dict[str, list[str]] = {}
    for item in items:
        answers_by_type.setdefault(item["type"], []).append(item["answer"])

    positions: dict[str, np.ndarray] = {}
    for category in dict.fromkeys(item["category"] for item in items):
        count = sum(item["category"] == category for item in items)
        positions[category] = rng.permutation(np.arange(count) % num_choices).tolist()

    questions = []
    for item in items:
        if item.get("options"):
            options = [str(option) for option in item["options"]]
            if item["answer"] not in options:
                raise ValueError(f"{source}: answer {item['answer']!r} of question {item['id']} is not one of its options {options}")
            choices, answer = tuple(options), options.index(item["answer"])
        else:
            pool = sorted(set(answers_by_type[item["type"]]) - {item["answer"]})
            if len(pool) < num_choices - 1:
                raise ValueError(
                    f"{source}: question type {item['type']!r} has {len(pool) + 1} distinct answers, "
                    f"too few for {num_choices} choices; pass a smaller num_choices"
                )
            distractors = [pool[i] for i in rng.choice(len(pool), num_choices - 1, replace=False)]
            answer = positions[item["category"]].pop()
            choices = tuple(distractors[:answer] + [item["answer"]] + distractors[answer:])
        questions.append(Question(item["id"], item["category"], item["clip_ids"], item["question"],
                                  choices, int(answer), item["facts"]))
    return questions


# --- BABEL-QA ---------------------------------------------------------------------------------


def load_babel_qa(
    root: str | os.PathLike,
    split: str = "test",
    split_file: str | os.PathLike | None = None,
    seed: int = 0,
    num_choices: int = NUM_CHOICES,
) -> list[Question]:
    """Load one BABEL-QA split as multiple-choice Questions whose `clip_ids` is (babel_id,)."""
    root = Path(root)
    questions_path = root / "questions.json"
    split_path = Path(split_file) if split_file is not None else root / "split_question_ids.json"
    for path in (questions_path, split_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; expected the BABEL-QA layout described in toau.bench.external")
    records = json.loads(questions_path.read_text())
    splits = json.loads(split_path.read_text())
    if split not in splits:
        raise ValueError(f"{split_path} has no split {split!r}; it has {sorted(splits)}")

    items = []
    for question_id in splits[split]:
        question_id = str(question_id)
        if question_id not in records:
            raise ValueError(f"{split_path}: question id {question_id} of split {split!r} is not in {questions_path}")
        record = records[question_id]
        _require(record, BABEL_QA_REQUIRED, str(questions_path), f"question {question_id}")
        relation = record.get("relation_type", "no_relation")
        query_type = record["query_type"]
        category = BABEL_QA_CATEGORIES.get((query_type, relation != "no_relation"), query_type)
        facts = {"source": "babel-qa", "query_type": query_type, "relation_type": relation}
        if "feat_path" in record:
            facts["feat_path"] = record["feat_path"]
        items.append({"id": f"babel-qa-{question_id}", "category": category, "clip_ids": (str(record["babel_id"]),),
                      "question": record["question"], "answer": str(record["answer"]), "type": query_type,
                      "facts": facts})
    return _with_choices(items, str(questions_path), seed, num_choices)


def babel_qa_features(question: Question, root: str | os.PathLike) -> np.ndarray:
    """Load the features (T, 263) of a BABEL-QA question's motion from its feat_path or joints.npy."""
    root = Path(root)
    if "feat_path" in question.facts:
        features = np.load(root / question.facts["feat_path"])
        if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
            raise ValueError(f"{question.facts['feat_path']}: expected features (T, {FEATURE_DIM}), got {features.shape}")
        return features.astype(np.float32)
    path = root / "motion_sequences" / question.clip_ids[0] / "joints.npy"
    joints = np.load(path)
    if joints.ndim != 3 or joints.shape[1] < 22 or joints.shape[2] != 3:
        raise ValueError(f"{path}: expected joints (frames, >= 22, 3), got {joints.shape}")
    # NOTE: Z up and 30 fps follow the BABEL-QA processing script (AMASS world frame, OUT_FPS = 30);
    # not checked against a released file.
    joints = joints[:, :22].astype(np.float64) @ ZUP_TO_YUP.T
    return joints_to_features(resample(joints, fps=BABEL_QA_FPS))


# --- MoVid-Bench ------------------------------------------------------------------------------


def _movid_records(path: Path) -> list[tuple[str, str, dict]]:
    """List (source file, default video id, record) for every record under `path`."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no MoVid-Bench JSON files in {path}")
    found = []
    for file in files:
        content = json.loads(file.read_text())
        if isinstance(content, dict) and not all(name in content for name in MOVID_REQUIRED):
            entries = [(str(key), value) for key, value in content.items()]        # {id: record}
        else:
            entries = [(file.stem, value) for value in (content if isinstance(content, list) else [content])]
        for default_video, record in entries:
            if not isinstance(record, dict):
                raise ValueError(f"{file}: expected each MoVid-Bench record to be a JSON object, got {type(record).__name__}")
            found.append((str(file), default_video, record))
    return found


def _movid_type(kind: str) -> str:
    """Question type compared case- and punctuation-blind, e.g. "Body-part" -> "bodypart"."""
    return re.sub(r"[^a-z]", "", kind.lower())


def load_movid_bench(path: str | os.PathLike, seed: int = 0, num_choices: int = NUM_CHOICES) -> list[Question]:
    """Load MoVid-Bench questions as multiple-choice Questions whose `clip_ids` is (video id,)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; pass a MoVid-Bench JSON file or a folder of them")
    items = []
    for index, (source, default_video, record) in enumerate(_movid_records(path)):
        _require(record, MOVID_REQUIRED, source, f"record {index}")
        video = next((str(record[name]) for name in MOVID_VIDEO_FIELDS if name in record), default_video)
        kind = str(record.get("type", record.get("category", "unknown")))
        key = _movid_type(kind)
        items.append({"id": f"movid-{index:05d}", "category": MOVID_CATEGORIES.get(key, key), "clip_ids": (video,),
                      "question": str(record["question"]), "answer": str(record["answer"]), "type": key,
                      "options": record.get("options"), "facts": {"source": "movid-bench", "type": kind}})
    return _with_choices(items, str(path), seed, num_choices)
