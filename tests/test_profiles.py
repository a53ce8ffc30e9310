"""The parameter profiles stay in step with params.yaml: same sections and keys."""

import pytest
import yaml

from toau.config import PROJECT_ROOT

# Values that may be a mapping in one profile and a keyword in another.
FREE_FORM = {("video", "grid")}


def _key_paths(value, prefix=()) -> set[tuple]:
    if not isinstance(value, dict) or prefix in FREE_FORM:
        return {prefix}
    paths = set()
    for key, child in value.items():
        paths |= _key_paths(child, prefix + (key,))
    return paths


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_profile_keys_match_params(profile):
    default = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    other = yaml.safe_load((PROJECT_ROOT / "profiles" / f"{profile}.yaml").read_text())
    assert _key_paths(other) == _key_paths(default)
