"""Project paths and parameters: where the data is, where caches go, and `params.yaml`."""

import os
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = PROJECT_ROOT / "params.yaml"
DATA_ROOT_ENV = "TOAU_DATA_ROOT"
CACHE_ROOT_ENV = "TOAU_CACHE_DIR"


def load_params(path: str | os.PathLike | None = None, section: str | None = None) -> dict:
    """Read `params.yaml` (or `path`) and return the whole mapping or one section of it."""
    path = Path(path) if path is not None else PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"parameter file {path} not found; run from the project root or pass its path")
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    if section is None:
        return params
    if section not in params:
        raise KeyError(f"section {section!r} missing from {path}; sections present: {sorted(params)}")
    return params[section]


def data_root(configured: str | os.PathLike | None = None) -> Path:
    """Return the raw data folder: $TOAU_DATA_ROOT, else `configured`, else `data/` in the project.

    Relative paths are taken from the project root, so stages and tests agree wherever they run.
    """
    value = os.environ.get(DATA_ROOT_ENV) or configured or "data"
    root = Path(value).expanduser()
    if not root.is_absolute():
        root = PROJECT_ROOT / root
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} not found; set {DATA_ROOT_ENV} to the folder that contains bandai/ "
            f"(see README, 'Data')"
        )
    return root


def cache_root() -> Path:
    """Return the folder for derived files (feature caches, converted models): $TOAU_CACHE_DIR or cache/."""
    root = Path(os.environ.get(CACHE_ROOT_ENV) or PROJECT_ROOT / "cache")
    root.mkdir(parents=True, exist_ok=True)
    return root
