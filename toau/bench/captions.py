"""Training text for the motion projector: captions (stage 1) and question answering (stage 2).

Captions come from a clip's content and style labels plus what is measured from its motion
(turn, travel direction, duration), each in several phrasings. Question-answer samples come from
the benchmark builders run on the training split, answered with the correct choice's text.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from toau.bench import labels
from toau.bench.questions import build_benchmark, motion_features
from toau.data.prepared import PreparedData

CAPTION_QUESTIONS = (
    "Describe the motion.",
    "What is the person doing?",
    "Describe what the person does.",
    "Give a short description of this motion.",
)


class TextSample(NamedTuple):
    """A training sample: motion spec (one clip id, or an ordered pair; see motion_features), question, answer."""

    motion: tuple[str, ...]
    question: str
    answer: str


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def clip_captions(record: dict, facts: dict) -> list[str]:
    """Write the captions of one clip from its manifest record and measured facts (labels.measure).

    Always two captions from the labels and duration, plus one for a measured turn and one for
    a measured travel direction where the clip has an unambiguous one.
    """
    action = labels.content_phrase(record["content"])
    manner = labels.style_phrase(record["style"])
    seconds = facts["seconds"]
    captions = [
        f"A person is {action} {manner}.",
        f"Someone is {action} {manner} for {seconds:.1f} seconds.",
    ]
    turn = labels.turn_label(facts)
    if turn is not None:
        captions.append(f"The person is {action} {manner} and {labels.TURN_ANSWERS[turn]}.")
    direction = labels.direction_label(facts)
    if direction is not None:
        captions.append(_sentence(f"{seconds:.1f} seconds of {action} {manner}: the person "
                                  f"{labels.DIRECTION_ANSWERS[direction]}."))
    return captions


def caption_samples(prepared: PreparedData, split: str = "train", seed: int = 0) -> list[TextSample]:
    """Pair every caption of every clip of a split with a seeded choice of caption question."""
    rng = np.random.default_rng([seed, 1])
    samples = []
    for record in prepared.records(split):
        facts = labels.measure(motion_features([record["clip_id"]], prepared))
        for caption in clip_captions(record, facts):
            question = CAPTION_QUESTIONS[rng.integers(len(CAPTION_QUESTIONS))]
            samples.append(TextSample((record["clip_id"],), question, caption))
    return samples


def qa_samples(prepared: PreparedData, split: str = "train", seed: int = 0,
               categories: Sequence[str] | None = None) -> list[TextSample]:
    """Turn the benchmark questions of a split into free-text samples answered by the correct choice."""
    kwargs = {} if categories is None else {"categories": categories}
    return [TextSample(q.clip_ids, q.question, q.answer_text)
            for q in build_benchmark(prepared, split=split, seed=seed, **kwargs)]


def training_samples(prepared: PreparedData, split: str = "train", seed: int = 0) -> dict[str, list[TextSample]]:
    """Build the samples of the progressive training stages: {"captions": [...], "qa": [...]}.

    A sample's motion is `motion_features(sample.motion, prepared)`, features (T, 263) that the
    caller still normalises.
    """
    return {"captions": caption_samples(prepared, split, seed), "qa": qa_samples(prepared, split, seed)}
