"""Multiple-choice questions about motion, built from prepared Bandai clips (toau.data.prepared).

| category  | answer from                                         | example answer                       |
|-----------|-----------------------------------------------------|--------------------------------------|
| turn      | integrated root yaw (toau.bench.labels)             | "turns left about 90 degrees"        |
| event     | content label                                       | "waving the left hand"               |
| intent    | style label (manner or mood)                        | "like an elderly person"             |
| direction | integrated body-frame root velocity                 | "moves backward"                     |
| order     | content labels of two clips played one after other  | "bowing"                             |

Every question has NUM_CHOICES choices, none repeated, and within a category the correct
position is spread evenly over the choices. Distractors never include a phrase that could also
describe the clip (toau.bench.labels.contents_conflict). The same seed gives the same questions.
"""

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from toau.bench import labels
from toau.data.prepared import PreparedData
from toau.motion.humanml3d import facing_direction, joints_to_features

logger = logging.getLogger(__name__)

# --- Defaults, in one place -------------------------------------------------------------------

CATEGORIES = ("turn", "event", "intent", "direction", "order")
NUM_CHOICES = 4
# Order: frames blended where the two clips meet (0.25 s at 20 fps), and the longest clip
# used for either half (10 s), so that a pair lasts at most about 20 s.
CROSSFADE_FRAMES = 5
ORDER_MAX_CLIP_FRAMES = 200
# Most gesture clips stay in place, so "stays in place" would otherwise be the correct choice of
# about two thirds of the Direction questions on the Bandai test split. A seeded subset of those
# questions keeps it to this share.
DIRECTION_MAX_IN_PLACE_SHARE = 0.5

QUESTION_TEMPLATES = {
    "turn": ("Which way does the person turn?",
             "How does the person's facing direction change during the motion?",
             "Does the person turn, and if so which way?"),
    "event": ("What action does the person perform?",
              "What is the person doing?",
              "Which action happens in this motion?"),
    "intent": ("In what manner does the person move?",
               "How does the person perform the movement?",
               "What is the mood or manner of this motion?"),
    "direction": ("In which direction does the person move, relative to where they face?",
                  "Which way does the person travel relative to their body?",
                  "Where does the person move, seen from their own point of view?"),
}
ORDER_TEMPLATES = {
    "first": "What does the person do first?",
    "second": "What does the person do second?",
    "after": "What does the person do after {other}?",
    "before": "What does the person do before {other}?",
}


@dataclass(frozen=True)
class Question:
    """One multiple-choice question about a motion.

    `clip_ids` is the motion: one prepared clip, or for Order two clips played one after the
    other (see concatenate_clips). `facts` contains the labels and measurements behind the answer.
    """

    id: str
    category: str
    clip_ids: tuple[str, ...]
    question: str
    choices: tuple[str, ...]
    answer: int
    facts: dict = field(default_factory=dict, compare=False)

    @property
    def answer_text(self) -> str:
        return self.choices[self.answer]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "Question":
        return cls(
            id=record["id"], category=record["category"], clip_ids=tuple(record["clip_ids"]),
            question=record["question"], choices=tuple(record["choices"]), answer=int(record["answer"]),
            facts=dict(record.get("facts", {})),
        )


def save_questions(questions: Sequence[Question], path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps([q.to_dict() for q in questions], indent=1))


def load_questions(path: str | os.PathLike) -> list[Question]:
    return [Question.from_dict(record) for record in json.loads(Path(path).read_text())]


# --- Motion of a question ---------------------------------------------------------------------


def _heading(joints: np.ndarray) -> float:
    """Mean facing of some frames (F, 22, 3) as an angle about +Y from +Z toward +X (radians)."""
    facing = facing_direction(joints.astype(np.float64)).mean(axis=0)
    return float(np.arctan2(facing[0], facing[2]))


def _yaw_matrix(angle: float) -> np.ndarray:
    """Rotation about +Y by `angle` radians, which turns +Z toward +X; applied as v @ R.T."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def concatenate_clips(first: np.ndarray, second: np.ndarray, crossfade: int = CROSSFADE_FRAMES) -> np.ndarray:
    """Play `second` after `first`: joints (F1, 22, 3) and (F2, 22, 3) -> (F1 + F2 - crossfade, 22, 3).

    The second clip is turned about the vertical so that it starts facing where the first ends,
    and starts where the first one is. Over the last `crossfade` frames of the first clip the
    pose (joints relative to the pelvis on the ground) is blended linearly into the first frames
    of the second. The pelvis path is blended as per-frame steps, not as positions. Blending
    positions would pull a running person back or forward by the distance covered during the
    cross-fade (about 0.5 m for a run), while blended steps are never longer than the longer of
    the two clips' steps.
    """
    for name, joints in (("first", first), ("second", second)):
        if joints.ndim != 3 or joints.shape[1:] != (22, 3):
            raise ValueError(f"{name} clip joints must have shape (frames, 22, 3), got {joints.shape}")
        if len(joints) <= crossfade + 1:
            raise ValueError(
                f"{name} clip has {len(joints)} frames; it needs more than {crossfade + 1} for the {crossfade}-frame cross-fade"
            )
    ground = np.array([1.0, 0.0, 1.0])
    first = first.astype(np.float64)
    second = second.astype(np.float64)
    window = max(crossfade, 1)
    turn = _heading(first[-window:]) - _heading(second[:window])
    second = (second - second[0, 0] * ground) @ _yaw_matrix(turn).T

    # Output frame t shows first[t] for t < F1 and second[t - offset] for t >= offset.
    offset = len(first) - crossfade
    total = offset + len(second)
    weight = np.clip((np.arange(total) - offset + 1) / (crossfade + 1), 0.0, 1.0)   # share of `second`

    root_first = first[:, 0] * ground
    root_second = second[:, 0] * ground
    pose_first = first - root_first[:, None]
    pose_second = second - root_second[:, None]
    pose = np.zeros((total, 22, 3))
    pose[:len(first)] += (1.0 - weight[:len(first), None, None]) * pose_first
    pose[offset:] += weight[offset:, None, None] * pose_second

    # step[t] moves the pelvis from frame t-1 to t. The second clip's first frame has no step of
    # its own, so it borrows the next one.
    step_first = np.zeros((total, 3))
    step_first[1:len(first)] = np.diff(root_first, axis=0)
    step_second = np.zeros((total, 3))
    step_second[offset + 1:] = np.diff(root_second, axis=0)
    step_second[offset] = step_second[offset + 1]
    step = (1.0 - weight[:, None]) * step_first + weight[:, None] * step_second
    root = root_first[0] + np.cumsum(step, axis=0) - step[0]
    return (pose + root[:, None]).astype(np.float32)


def motion_features(clip_ids: Sequence[str], prepared: PreparedData) -> np.ndarray:
    """Load or build the features (T, 263) of a motion spec: one prepared clip, or a concatenated pair."""
    if len(clip_ids) == 1:
        return np.load(prepared.folder / "features" / f"{clip_ids[0]}.npy")
    if len(clip_ids) == 2:
        return joints_to_features(concatenate_clips(prepared.joints(clip_ids[0]), prepared.joints(clip_ids[1])))
    raise ValueError(f"a motion is one clip id or an ordered pair, got {len(clip_ids)}: {list(clip_ids)}")


def question_features(question: Question, prepared: PreparedData) -> np.ndarray:
    """Load or build the features (T, 263) of a question's motion (not normalised)."""
    return motion_features(question.clip_ids, prepared)


# --- Building ---------------------------------------------------------------------------------


@dataclass
class _Draft:
    """A question before its choices are drawn: the correct text, distractors that must be
    offered, and the pool the remaining distractors are drawn from."""

    clip_ids: tuple[str, ...]
    question: str
    correct: str
    pool: list[str]
    facts: dict
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Clip:
    record: dict
    facts: dict

    @property
    def clip_id(self) -> str:
        return self.record["clip_id"]


def _labelled_facts(clip: _Clip) -> dict:
    record = clip.record
    return {"dataset": record["dataset"], "content": record["content"], "style": record["style"], **clip.facts}


def _turn_drafts(clips: list[_Clip], _: list[dict], rng: np.random.Generator) -> list[_Draft]:
    drafts = []
    for clip in clips:
        key = labels.turn_label(clip.facts)
        if key is None:
            continue
        correct = labels.TURN_ANSWERS[key]
        pool = [text for text in labels.TURN_ANSWERS.values() if text != correct]
        drafts.append(_Draft((clip.clip_id,), _template(rng, "turn"), correct, pool,
                             {**_labelled_facts(clip), "label": key}))
    return drafts


def _direction_drafts(clips: list[_Clip], _: list[dict], rng: np.random.Generator) -> list[_Draft]:
    drafts = []
    for clip in clips:
        key = labels.direction_label(clip.facts)
        if key is None:
            continue
        correct = labels.DIRECTION_ANSWERS[key]
        pool = [text for text in labels.DIRECTION_ANSWERS.values() if text != correct]
        drafts.append(_Draft((clip.clip_id,), _template(rng, "direction"), correct, pool,
                             {**_labelled_facts(clip), "label": key}))

    in_place = [i for i, d in enumerate(drafts) if d.facts["label"] == "in-place"]
    moving = len(drafts) - len(in_place)
    allowed = int(moving * DIRECTION_MAX_IN_PLACE_SHARE / (1.0 - DIRECTION_MAX_IN_PLACE_SHARE))
    if len(in_place) > allowed:
        dropped = set(rng.choice(in_place, len(in_place) - allowed, replace=False).tolist())
        drafts = [d for i, d in enumerate(drafts) if i not in dropped]
    return drafts


def _content_pool(everything: list[dict], dataset: int | None, avoid: Sequence[str]) -> list[str]:
    """Phrases of the contents of `dataset` (None: every dataset) that conflict with none of `avoid`."""
    contents = {r["content"] for r in everything if dataset is None or r["dataset"] == dataset}
    return sorted({labels.content_phrase(c) for c in contents
                   if not any(labels.contents_conflict(c, other) for other in avoid)})


def _style_pool(everything: list[dict], dataset: int | None, correct: str) -> list[str]:
    styles = {r["style"] for r in everything if dataset is None or r["dataset"] == dataset}
    return sorted({labels.style_phrase(s) for s in styles} - {correct})


def _event_drafts(clips: list[_Clip], everything: list[dict], rng: np.random.Generator) -> list[_Draft]:
    """Distractors are other actions of the clip's dataset, or of every dataset where it has too few."""
    drafts = []
    for clip in clips:
        content = clip.record["content"]
        pool = _content_pool(everything, clip.record["dataset"], [content])
        if len(pool) < NUM_CHOICES - 1:
            pool = _content_pool(everything, None, [content])
        drafts.append(_Draft((clip.clip_id,), _template(rng, "event"), labels.content_phrase(content), pool,
                             _labelled_facts(clip)))
    return drafts


def _intent_drafts(clips: list[_Clip], everything: list[dict], rng: np.random.Generator) -> list[_Draft]:
    """Distractors are other styles of the clip's dataset, or of every dataset where it has too few."""
    drafts = []
    for clip in clips:
        correct = labels.style_phrase(clip.record["style"])
        pool = _style_pool(everything, clip.record["dataset"], correct)
        if len(pool) < NUM_CHOICES - 1:
            pool = _style_pool(everything, None, correct)
        drafts.append(_Draft((clip.clip_id,), _template(rng, "intent"), correct, pool, _labelled_facts(clip)))
    return drafts


def _order_drafts(clips: list[_Clip], everything: list[dict], rng: np.random.Generator) -> list[_Draft]:
    """Pair every usable clip of the split, as the first half, with a random partner as the second."""
    usable = [c for c in clips if CROSSFADE_FRAMES < c.record["frames"] <= ORDER_MAX_CLIP_FRAMES]
    drafts = []
    for first in usable:
        partners = [c for c in usable
                    if not labels.contents_conflict(first.record["content"], c.record["content"])]
        if not partners:
            continue
        second = partners[rng.integers(len(partners))]
        phrases = [labels.content_phrase(c.record["content"]) for c in (first, second)]
        form = ("first", "second", "after", "before")[rng.integers(4)]
        correct = phrases[0] if form in ("first", "before") else phrases[1]
        other = phrases[1] if form == "before" else phrases[0]
        question = ORDER_TEMPLATES[form].format(other=other)

        contents = [first.record["content"], second.record["content"]]
        pool = set()
        for dataset in {first.record["dataset"], second.record["dataset"]}:
            pool |= set(_content_pool(everything, dataset, contents))
        if len(pool) < NUM_CHOICES - 1:
            pool = set(_content_pool(everything, None, contents))
        # For "first"/"second" the other clip's action is always offered: it is the distractor
        # that tests the order. For "after"/"before" it is named in the question instead.
        required = () if form in ("after", "before") else tuple(p for p in phrases if p != correct)
        facts = {"form": form, "contents": contents,
                 "frames": [first.record["frames"], second.record["frames"]], "crossfade": CROSSFADE_FRAMES}
        drafts.append(_Draft((first.clip_id, second.clip_id), question, correct, sorted(pool), facts, required))
    return drafts


_BUILDERS: dict[str, Callable[[list[_Clip], list[dict], np.random.Generator], list[_Draft]]] = {
    "turn": _turn_drafts,
    "event": _event_drafts,
    "intent": _intent_drafts,
    "direction": _direction_drafts,
    "order": _order_drafts,
}


def _template(rng: np.random.Generator, category: str) -> str:
    templates = QUESTION_TEMPLATES[category]
    return templates[rng.integers(len(templates))]


def _finish(category: str, split: str, drafts: list[_Draft], rng: np.random.Generator) -> list[Question]:
    """Choose distractors and put the correct answer at evenly spread positions."""
    positions = rng.permutation(np.arange(len(drafts)) % NUM_CHOICES)
    questions = []
    for index, (draft, position) in enumerate(zip(drafts, positions)):
        required = list(draft.required)
        pool = [text for text in dict.fromkeys(draft.pool) if text != draft.correct and text not in required]
        missing = NUM_CHOICES - 1 - len(required)
        if len(pool) < missing:
            raise ValueError(
                f"{category} question on {draft.clip_ids} has {len(pool) + len(required)} distractors, needs "
                f"{NUM_CHOICES - 1}; prepare more clips so that more labels are present"
            )
        distractors = required + [pool[i] for i in rng.choice(len(pool), missing, replace=False)]
        distractors = [distractors[i] for i in rng.permutation(len(distractors))]
        choices = tuple(distractors[:position] + [draft.correct] + distractors[position:])
        questions.append(Question(f"{split}-{category}-{index:04d}", category, draft.clip_ids, draft.question,
                                  choices, int(position), draft.facts))
    return questions


def _measured_clips(prepared: PreparedData, records: list[dict]) -> list[_Clip]:
    return [_Clip(record, labels.measure(motion_features([record["clip_id"]], prepared))) for record in records]


def build_benchmark(
    prepared: PreparedData,
    split: str = "test",
    seed: int = 0,
    per_category: int | None = None,
    categories: Sequence[str] = CATEGORIES,
) -> list[Question]:
    """Questions about the clips of one split, category by category.

    `per_category` keeps at most that many questions per category (a seeded subset, in order).
    Each category draws from its own random stream, so asking for fewer categories leaves the
    questions of the others unchanged.
    """
    unknown = [c for c in categories if c not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; known ones are {list(CATEGORIES)}")
    records = prepared.records(split)
    if not records:
        raise ValueError(f"split {split!r} of {prepared.folder} has no clips; splits present: "
                         f"{sorted({r['split'] for r in prepared.records()})}")
    clips = _measured_clips(prepared, records)
    everything = prepared.records()

    questions = []
    for category in categories:
        rng = np.random.default_rng([seed, CATEGORIES.index(category)])
        drafts = _BUILDERS[category](clips, everything, rng)
        if per_category is not None and len(drafts) > per_category:
            keep = np.sort(rng.choice(len(drafts), per_category, replace=False))
            drafts = [drafts[i] for i in keep]
        questions += _finish(category, split, drafts, rng)
        logger.info("%s: %d questions from %d %s clips", category, len(drafts), len(clips), split)
    return questions


def label_agreement(prepared: PreparedData, split: str | None = None) -> dict:
    """Count how often measured turn and travel labels match the content labels that imply one.

    Returns {"turn"|"direction": {content: {"clips", "labelled", "agree", "disagree": [clip ids]}}}
    for the contents in labels.EXPECTED_TURN and labels.EXPECTED_DIRECTION.
    """
    checks = {"turn": (labels.EXPECTED_TURN, labels.turn_label),
              "direction": (labels.EXPECTED_DIRECTION, labels.direction_label)}
    report = {}
    for category, (expected, label_of) in checks.items():
        rows = {}
        for record in prepared.records(split):
            if record["content"] not in expected:
                continue
            facts = labels.measure(motion_features([record["clip_id"]], prepared))
            label = label_of(facts)
            row = rows.setdefault(record["content"], {"clips": 0, "labelled": 0, "agree": 0, "disagree": []})
            row["clips"] += 1
            if label is None:
                continue
            row["labelled"] += 1
            if label in expected[record["content"]]:
                row["agree"] += 1
            else:
                row["disagree"].append(record["clip_id"])
        report[category] = rows
    return report
