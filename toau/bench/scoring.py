"""Accuracy of multiple-choice predictions per category, with sample sizes and 95 % Wilson intervals.

`score` returns plain dicts and numbers, ready for json.dump, and `score_rows` flattens the same
result into one row per category for csv.DictWriter.
"""

import math
from collections.abc import Sequence

import numpy as np

from toau.bench.questions import Question

# Two-sided 95 % normal quantile.
Z_95 = 1.959963984540054
OVERALL = "overall"


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Compute the Wilson score interval (95 % by default) of `correct` successes in `n` trials, (0, 1) for n = 0."""
    if not 0 <= correct <= n:
        raise ValueError(f"correct must lie in [0, n], got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    # At p = 0 or 1 the matching bound is exactly 0 or 1, which rounding would miss by about 1e-16.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def _summary(correct: Sequence[bool], chance: Sequence[float]) -> dict:
    n = len(correct)
    hits = int(sum(correct))
    low, high = wilson_interval(hits, n)
    return {
        "n": n,
        "correct": hits,
        "accuracy": hits / n if n else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "chance": float(np.mean(chance)) if n else float("nan"),
    }


def _check_predictions(predictions: Sequence[int], questions: Sequence[Question]) -> None:
    if len(predictions) != len(questions):
        raise ValueError(f"got {len(predictions)} predictions for {len(questions)} questions; pass one per question")
    for prediction, question in zip(predictions, questions):
        if not (isinstance(prediction, (int, np.integer)) and 0 <= prediction < len(question.choices)):
            raise ValueError(
                f"prediction {prediction!r} for question {question.id} is not a choice index in [0, {len(question.choices)})"
            )


def score(predictions: Sequence[int], questions: Sequence[Question]) -> dict:
    """Score predicted choice indices per category and overall: {"overall": {...}, "categories": {...}}.

    Each entry has n, correct, accuracy, ci_low and ci_high (95 % Wilson interval) and chance,
    the mean of 1 / number of choices over its questions. Categories appear in first-seen order.
    """
    _check_predictions(predictions, questions)
    hits: dict[str, list[bool]] = {}
    chance: dict[str, list[float]] = {}
    for prediction, question in zip(predictions, questions):
        hits.setdefault(question.category, []).append(int(prediction) == question.answer)
        chance.setdefault(question.category, []).append(1.0 / len(question.choices))
    return {
        OVERALL: _summary([h for group in hits.values() for h in group],
                          [c for group in chance.values() for c in group]),
        "categories": {name: _summary(hits[name], chance[name]) for name in hits},
    }


def score_rows(result: dict) -> list[dict]:
    """Flatten a `score` result into one row per category, then the overall row."""
    rows = [{"category": name, **values} for name, values in result["categories"].items()]
    rows.append({"category": OVERALL, **result[OVERALL]})
    return rows


def random_baseline(questions: Sequence[Question], seed: int = 0) -> list[int]:
    """Draw a uniformly random choice index per question (seeded)."""
    rng = np.random.default_rng(seed)
    return [int(rng.integers(len(q.choices))) for q in questions]
