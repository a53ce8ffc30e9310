"""The whole DVC pipeline on the smoke profile, in a copy of the repository.

Checks that `dvc repro` runs every stage from nothing and writes every declared output, metric
and plot, non-empty. Metrics must be finite. A second `dvc repro` must do nothing, and a changed
parameter must rerun only the stages that depend on it.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import numbers
from toau.config import PROJECT_ROOT

pytestmark = pytest.mark.slow
STAGE_TIMEOUT_S = 900


def _tracked_files() -> list[str]:
    result = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return [line for line in result.stdout.splitlines() if line]


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=STAGE_TIMEOUT_S)


def _declared_files(project: Path) -> tuple[list[Path], list[Path]]:
    """Every out, metric and plot of dvc.yaml as (files, metric files); folders count as files too."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    files, metrics = [], []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path = project / (entry if isinstance(entry, str) else next(iter(entry)))
                files.append(path)
                if kind == "metrics":
                    metrics.append(path)
    return files, metrics


@pytest.fixture(scope="module")
def smoke_project(data_dir, tmp_path_factory) -> Path:
    """A copy of the tracked files with the smoke profile as params.yaml, and a fresh `dvc repro`."""
    project = tmp_path_factory.mktemp("smoke") / "toau"
    for name in _tracked_files():
        target = project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target)
    for stale in ["dvc.lock", *[p.relative_to(PROJECT_ROOT) for p in (PROJECT_ROOT / "results").rglob("*") if p.is_file()]]:
        (project / stale).unlink(missing_ok=True)
    shutil.copy(PROJECT_ROOT / "profiles" / "smoke.yaml", project / "params.yaml")
    (project / "data").symlink_to(data_dir)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)

    result = _dvc(project, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return project


def test_every_output_written(smoke_project):
    files, _ = _declared_files(smoke_project)
    missing = [str(p.relative_to(smoke_project)) for p in files if not p.exists()]
    assert missing == []
    empty = [str(p.relative_to(smoke_project)) for p in files if p.is_file() and p.stat().st_size == 0]
    assert empty == []


def test_metrics_are_finite(smoke_project):
    _, metrics = _declared_files(smoke_project)
    for path in metrics:
        values = list(numbers(json.loads(path.read_text()).get("rows", [])))
        assert all(math.isfinite(value) for value in values), path.name


def test_report_has_tables(smoke_project):
    report = (smoke_project / "results" / "REPORT.md").read_text()
    assert "Table I" in report
    assert "Table III" in report


def test_second_repro_does_nothing(smoke_project):
    result = _dvc(smoke_project, "status")
    assert "up to date" in result.stdout, result.stdout


def test_parameter_change_reruns_dependents(smoke_project):
    params = smoke_project / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("max_new_tokens: 4", "max_new_tokens: 5", 1))
    try:
        status = _dvc(smoke_project, "status", "--json")
        changed = set(json.loads(status.stdout))
    finally:
        params.write_text(original)
    assert changed == {"benchmark"}
