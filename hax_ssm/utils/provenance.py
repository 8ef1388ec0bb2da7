"""Where a number came from: device, software versions, git commit and command line."""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit(repo: str | Path | None = None) -> str | None:
    """The checked-out commit (with a '-dirty' suffix when the tree has changes), or None.

    HAX_GIT_COMMIT overrides it, for copies of a tree whose .git is not the source's (remote GPU runs)."""
    if os.environ.get("HAX_GIT_COMMIT"):
        return os.environ["HAX_GIT_COMMIT"]
    cwd = Path(repo) if repo else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("-dirty" if dirty else "")


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def software_versions() -> dict[str, str]:
    import numpy
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    for name in ("triton", "transformers", "pyarrow"):  # read from the installed metadata, never imported
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    from hax_ssm import __version__

    versions["hax_ssm"] = __version__
    return versions


def provenance(command: list[str] | None = None) -> dict[str, Any]:
    """A dict to store next to any measured result."""
    return {
        "device": device_name(),
        "software": software_versions(),
        "git_commit": git_commit(),
        "command": " ".join(command if command is not None else sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
