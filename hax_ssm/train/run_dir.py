"""The files of one training run and how they are written.

    SAVE_DIR/
      config.json            resolved TrainConfig, the model's config, provenance
      metrics.jsonl          one JSON object per line: {"step", "split", ...}; appended
      checkpoints/last.pt    everything needed to continue exactly (see Trainer.state_dict)
      checkpoints/best.pt    model weights of the best validation step
      results.json           final: best step, validation and test accuracy, provenance
      eval/<split>.json|png  per-(n_c, n_k) breakdown of the final test

Every file is replaced atomically. metrics.jsonl is the one appended file: on resume it is cut
back to the checkpoint's step (atomically), so a resumed run never repeats or skips a line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from hax_ssm.errors import HaxError
from hax_ssm.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    best_checkpoint = property(lambda self: self.path / "checkpoints" / "best.pt")
    results = property(lambda self: self.path / "results.json")
    eval_dir = property(lambda self: self.path / "eval")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.is_file()

    def is_finished(self) -> bool:
        return self.results.is_file()

    def check_fresh(self, overwrite: bool) -> None:
        """Refuse to start a new run over an existing one (unless asked to)."""
        if self.path.exists() and not self.path.is_dir():
            raise HaxError(f"--save-dir {self.path}: exists and is not a directory")
        if self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            hint = "pass --resume to continue it" if self.has_checkpoint() else "choose another --save-dir"
            raise HaxError(f"--save-dir {self.path}: already holds files; {hint} or --overwrite to start over")

    def check_resumable(self) -> None:
        if not self.has_checkpoint():
            missing = self.last_checkpoint.relative_to(self.path)
            raise HaxError(f"--resume: no run to resume in {self.path} (no {missing})")

    def clear(self) -> None:
        """Remove what a previous run wrote here (only our own files and folders)."""
        import shutil

        for p in (self.config, self.metrics, self.results):
            p.unlink(missing_ok=True)
        for d in (self.path / "checkpoints", self.eval_dir, self.tensorboard_dir):
            shutil.rmtree(d, ignore_errors=True)

    # ---- config and results
    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write_json(path, obj)

    def read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise HaxError(f"{path}: cannot read ({err})") from None

    # ---- metrics.jsonl
    def append_metrics(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        lines = self.metrics.read_text().splitlines()
        # a hard kill can cut the last line short: drop it, the resume rewrites it
        return [json.loads(line) for line in lines if line.strip() and _is_json(line)]

    def truncate_metrics(self, step: int) -> None:
        """Keep the lines of steps <= ``step`` (those a resume from ``step`` will not write again)."""
        kept = [r for r in self.read_metrics() if r["step"] <= step]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    # ---- checkpoints
    def save_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        import torch  # here, so that `hax --help` and `hax data` do not load torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        return load_checkpoint(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise HaxError(f"checkpoint {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise HaxError(f"checkpoint {path}: cannot load ({type(err).__name__}: {err})") from None


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True
