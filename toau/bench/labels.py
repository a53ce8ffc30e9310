"""Answer phrases for the Bandai labels, and turn and travel labels measured from HumanML3D features.

Measured labels read only the root channels of the features (T, 263):

- channel 0 is half the yaw step of the root rotation that turns the body's facing to +Z, so a
  left turn (a person facing +Z, Y up, turning toward +X) makes it negative;
- channels 1:3 are the root XZ velocity in the body frame, +X to the person's left, +Z forward,
  in metres per frame.

A measurement that falls between two answers (e.g. a 25 degree turn) gets no label (None), so
no question is asked about it rather than one with a doubtful answer.
"""

import numpy as np

from toau.motion.humanml3d import FPS

# --- Defaults, in one place -------------------------------------------------------------------

# Turn bins on the absolute total yaw in degrees. The gaps between them are left unlabelled.
# On the prepared Bandai clips |yaw| is under 40 for straight walks and runs and 60-125 for the
# walk-turn clips, with almost nothing in 40-60 or 130-150.
TURN_STRAIGHT_MAX_DEG = 20.0
TURN_SLIGHT_DEG = (30.0, 55.0)
TURN_QUARTER_DEG = (65.0, 135.0)
TURN_AROUND_DEG = (150.0, 225.0)
# A clip whose facing swings more than this against its net turn (or either way, for a straight
# clip) turns back and forth, so one turn answer would mislead.
TURN_REVERSAL_DEG = 30.0

# A clip "travels" when its body-frame displacement is at least this long and it is straight
# enough to have one direction (straightness = displacement / path length). On the Bandai clips
# dances, punches and slashes have a straightness under 0.15, walks and runs over 0.85.
MIN_TRAVEL_M = 1.5
MIN_STRAIGHTNESS = 0.8
# A clip "stays in place" when its root moves less than this in total (path length). The
# Bandai gestures stay under 0.9 m.
IN_PLACE_MAX_PATH_M = 1.0
# Travel directions are 45 degree sectors, and a direction within this many degrees of a sector
# boundary is ambiguous.
SECTOR_MARGIN_DEG = 3.0

# --- Phrases ----------------------------------------------------------------------------------

# Content label -> what the person does, as a gerund phrase.
CONTENT_PHRASES = {
    "walk": "walking forward",
    "run": "running",
    "dash": "sprinting",
    "walk-back": "walking backward",
    "walk-left": "walking to the left",
    "walk-right": "walking to the right",
    "walk-turn-left": "walking and turning left",
    "walk-turn-right": "walking and turning right",
    "bow": "bowing",
    "bye": "waving goodbye",
    "byebye": "waving bye-bye",
    "guide": "showing someone the way with a hand gesture",
    "respond": "responding by raising a hand",
    "call": "calling out to someone",
    "punch": "punching",
    "kick": "kicking",
    "slash": "slashing with a sword",
    "dance-short": "dancing",
    "dance-long": "dancing",
    "wave-both-hands": "waving both hands",
    "wave-left-hand": "waving the left hand",
    "wave-right-hand": "waving the right hand",
    "raise-up-both-hands": "raising both hands",
    "raise-up-left-hand": "raising the left hand",
    "raise-up-right-hand": "raising the right hand",
}

# Contents whose phrases could both describe one clip, so they are never offered side by side
# (a walk-turn-left clip is also "walking forward" for its first steps, and "respond" raises the
# left hand in the data).
_CONFLICTING_CONTENTS = (
    {"walk", "walk-turn-left", "walk-left"},
    {"walk", "walk-turn-right", "walk-right"},
    {"run", "dash"},
    {"bye", "byebye", "wave-both-hands", "wave-left-hand", "wave-right-hand", "call"},
    {"respond", "raise-up-both-hands", "raise-up-left-hand", "raise-up-right-hand", "guide"},
    {"call", "raise-up-both-hands"},
)

# Style label -> the manner or mood, as an adverbial phrase.
STYLE_PHRASES = {
    "normal": "in a normal way",
    "happy": "happily",
    "sad": "sadly",
    "angry": "angrily",
    "proud": "proudly",
    "not-confident": "without confidence",
    "masculinity": "in a masculine way",
    "masculine": "in a masculine way",
    "feminine": "in a feminine way",
    "childish": "in a childish way",
    "old": "like an old person",
    "elderly": "like an elderly person",
    "tired": "in a tired way",
    "exhausted": "in an exhausted way",
    "active": "energetically",
    "youthful": "in a youthful way",
    "musical": "rhythmically, as if to music",
    "giant": "like a giant",
    "chimpira": "like a street thug",
}

TURN_ANSWERS = {
    "straight": "goes straight without turning",
    "slightly-left": "turns slightly to the left",
    "slightly-right": "turns slightly to the right",
    "left": "turns left about 90 degrees",
    "right": "turns right about 90 degrees",
    "around": "turns around",
}

# Sector keys counter-clockwise from forward, seen from above with +X to the person's left.
DIRECTION_SECTORS = ("forward", "forward-left", "left", "backward-left",
                     "backward", "backward-right", "right", "forward-right")
DIRECTION_ANSWERS = {
    "forward": "moves forward",
    "forward-left": "moves diagonally forward and to the left",
    "left": "moves sideways to the left",
    "backward-left": "moves diagonally backward and to the left",
    "backward": "moves backward",
    "backward-right": "moves diagonally backward and to the right",
    "right": "moves sideways to the right",
    "forward-right": "moves diagonally forward and to the right",
    "in-place": "stays in place",
}

# Measured labels that agree with a content label (a Bandai walk-left is a diagonal walk).
EXPECTED_TURN = {
    "walk-turn-left": {"left"},
    "walk-turn-right": {"right"},
}
EXPECTED_DIRECTION = {
    "walk": {"forward"},
    "walk-back": {"backward"},
    "walk-left": {"forward-left", "left"},
    "walk-right": {"forward-right", "right"},
}


def content_phrase(content: str) -> str:
    try:
        return CONTENT_PHRASES[content]
    except KeyError:
        raise KeyError(f"no phrase for content label {content!r}; add it to CONTENT_PHRASES") from None


def style_phrase(style: str) -> str:
    try:
        return STYLE_PHRASES[style]
    except KeyError:
        raise KeyError(f"no phrase for style label {style!r}; add it to STYLE_PHRASES") from None


def contents_conflict(first: str, second: str) -> bool:
    """Check whether two content labels could both describe one clip (a label conflicts with itself)."""
    if content_phrase(first) == content_phrase(second):
        return True
    return any(first in group and second in group for group in _CONFLICTING_CONTENTS)


# --- Measurements -----------------------------------------------------------------------------


def facing_curve(features: np.ndarray) -> np.ndarray:
    """Change of facing since the first frame in degrees, positive to the left: (T, 263) -> (T+1,)."""
    steps = -np.degrees(2.0 * features[:, 0].astype(np.float64))
    return np.concatenate([[0.0], np.cumsum(steps)])


def turn_degrees(features: np.ndarray) -> float:
    """Total change of facing over a clip in degrees, positive for a left turn: features (T, 263)."""
    return float(facing_curve(features)[-1])


def body_travel(features: np.ndarray) -> tuple[float, float, float]:
    """Body-frame root travel (left, forward, path length) in metres: features (T, 263).

    Left and forward sum the per-frame velocities in the frame the body faces at each step, so
    a walk that curves round a turn still counts as forward.
    """
    velocity = features[:, 1:3].astype(np.float64)
    left, forward = velocity.sum(axis=0)
    path = np.hypot(velocity[:, 0], velocity[:, 1]).sum()
    return float(left), float(forward), float(path)


def measure(features: np.ndarray) -> dict:
    """Measure a clip: turn (degrees, left positive), travel (metres) and duration (seconds)."""
    left, forward, path = body_travel(features)
    curve = facing_curve(features)
    return {
        "turn_deg": round(float(curve[-1]), 2),
        "turn_min_deg": round(float(curve.min()), 2),
        "turn_max_deg": round(float(curve.max()), 2),
        "left_m": round(left, 3),
        "forward_m": round(forward, 3),
        "path_m": round(path, 3),
        "seconds": round((len(features) + 1) / FPS, 2),
    }


def turn_label(facts: dict) -> str | None:
    """Classify the turn in measured facts: a TURN_ANSWERS key, or None when it is unclear.

    None covers clips that turn back and forth, fall between two bins, or neither turn nor travel.
    """
    yaw = facts["turn_deg"]
    side = "left" if yaw > 0 else "right"
    size = abs(yaw)
    against = -facts["turn_min_deg"] if yaw > 0 else facts["turn_max_deg"]
    if against > TURN_REVERSAL_DEG:
        return None
    if size < TURN_STRAIGHT_MAX_DEG:
        if max(facts["turn_max_deg"], -facts["turn_min_deg"]) > TURN_REVERSAL_DEG:
            return None
        return "straight" if _travels(facts) else None
    if TURN_SLIGHT_DEG[0] <= size < TURN_SLIGHT_DEG[1]:
        return f"slightly-{side}"
    if TURN_QUARTER_DEG[0] <= size < TURN_QUARTER_DEG[1]:
        return side
    if TURN_AROUND_DEG[0] <= size < TURN_AROUND_DEG[1]:
        return "around"
    return None


def direction_label(facts: dict) -> str | None:
    """Classify the travel in measured facts: a DIRECTION_ANSWERS key, or None when it is ambiguous."""
    if facts["path_m"] < IN_PLACE_MAX_PATH_M:
        return "in-place"
    if not _travels(facts):
        return None
    angle = np.degrees(np.arctan2(facts["left_m"], facts["forward_m"]))  # 0 forward, +90 left
    sector = int(np.round(angle / 45.0)) % 8
    offset = abs(angle - 45.0 * np.round(angle / 45.0))                  # from the sector's centre
    if offset > 22.5 - SECTOR_MARGIN_DEG:
        return None
    return DIRECTION_SECTORS[sector]


def _travels(facts: dict) -> bool:
    distance = np.hypot(facts["left_m"], facts["forward_m"])
    return distance >= MIN_TRAVEL_M and distance >= MIN_STRAIGHTNESS * facts["path_m"]
