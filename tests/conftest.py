"""Shared fixtures: the real data folder and a prepared subset of the Bandai clips."""

import os
from pathlib import Path

import pytest
import torch

from toau.config import DATA_ROOT_ENV, data_root


@pytest.fixture(autouse=True)
def one_thread():
    """Run torch on one thread: OpenMP threads spin-wait when other processes share the cores, and
    two threads measured 4-7x slower than one on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The raw data root; skips when none is configured, fails when a configured one is missing."""
    try:
        return data_root()
    except FileNotFoundError as error:
        if os.environ.get(DATA_ROOT_ENV):
            raise
        pytest.skip(f"real data not available: {error}")


@pytest.fixture(scope="session")
def reference_dir(data_dir) -> Path:
    return data_dir / "humanml3d_reference"


@pytest.fixture(scope="session")
def bandai_dir(data_dir) -> Path:
    return data_dir / "bandai"


@pytest.fixture(scope="session")
def prepared_small(bandai_dir, tmp_path_factory) -> Path:
    """60 evenly spaced Bandai clips prepared into a temporary folder (about 2 s)."""
    from toau.data.prepare import prepare_bandai

    out = tmp_path_factory.mktemp("prepared_small")
    prepare_bandai(bandai_dir, out, max_clips=60, workers=2)
    return out
