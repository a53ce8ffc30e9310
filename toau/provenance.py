"""Provenance records (code version, packages, machine) written into every result file."""

import importlib.metadata
import os
import platform
import subprocess
from datetime import datetime, timezone

from toau.config import PROJECT_ROOT

PACKAGES = ("numpy", "scipy", "torch", "transformers", "mediapipe", "av", "imageio-ffmpeg", "safetensors")


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, or platform.processor() where that file does not exist."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        return result.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(names=PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def provenance(**extra) -> dict:
    """Build a record of the code, packages and machine. `extra` adds params, seeds, splits and model ids."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine(),
        "packages": package_versions(),
        **extra,
    }
