"""``hax eval`` (one checkpoint on one split) and ``hax report`` (a sweep as the paper's Table 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hax_ssm.errors import require


def load_trained_model(checkpoint: Path, device: Any) -> tuple[Any, dict[str, Any], Path]:
    """(model in eval mode, checkpoint dict, run directory) from a run dir or a checkpoint file.

    A run directory means its best-validation checkpoint.
    """
    from hax_ssm.train.config import TrainConfig
    from hax_ssm.train.run_dir import RunDir, load_checkpoint
    from hax_ssm.train.trainer import build_model_for

    path = Path(checkpoint)
    run = RunDir(path) if path.is_dir() else RunDir(path.parent.parent)
    state = load_checkpoint(run.best_checkpoint if path.is_dir() else path)
    require("model" in state and "config" in state, f"checkpoint {path}: not a hax train checkpoint")
    model = build_model_for(TrainConfig.from_dict(state["config"], str(path))).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), state, run.path


def eval_command(
    checkpoint: Annotated[Path, typer.Argument(help="a run directory (its best checkpoint) or a .pt checkpoint")],
    split: Annotated[str, typer.Option(help="split to evaluate")] = "test",
    data_dir: Annotated[str | None, typer.Option(help="dataset [the run's --data-dir]")] = None,
    out: Annotated[Path | None, typer.Option(help="output directory [RUN/eval]")] = None,
    batch_size: Annotated[int, typer.Option(help="evaluation batch size")] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA), bf16 or fp32")] = "auto",
) -> None:
    """Accuracy of a checkpoint on a split, overall and per task size (JSON and PNG)."""
    from hax_ssm.data import RecallLoader
    from hax_ssm.eval.breakdown import write_eval_files
    from hax_ssm.eval.evaluation import evaluate
    from hax_ssm.train.config import PRECISIONS
    from hax_ssm.train.distributed import resolve_device

    require(batch_size > 0, f"--batch-size {batch_size}: must be a positive integer")
    require(precision in PRECISIONS, f"--precision {precision!r}: allowed: {', '.join(PRECISIONS)}")
    dev = resolve_device(device)
    model, state, run_path = load_trained_model(checkpoint, dev)
    data = data_dir or state["config"]["data_dir"]
    loader = RecallLoader(data, split, batch_size=batch_size, shuffle=False)
    result = evaluate(model, loader, dev, precision)
    files = write_eval_files(
        out or run_path / "eval",
        split,
        result,
        title=f"{run_path.name} ({split})",
        checkpoint=str(checkpoint),
        step=state.get("step"),
        data_dir=str(data),
    )
    wrote = ", ".join(map(str, files))
    print(f"{split} accuracy {100 * result.accuracy:.2f}% on {result.samples} samples; wrote {wrote}")


def report_command(
    sweep_dir: Annotated[Path, typer.Argument(help="a sweep directory (or any directory of run directories)")],
    out: Annotated[Path | None, typer.Option(help="output directory [SWEEP_DIR]")] = None,
) -> None:
    """The paper's Table 1 layout (markdown, PNG, JSON) for the finished runs, beside the paper's numbers."""
    from hax_ssm.eval.report import write_report

    paths = write_report(sweep_dir, out)
    print(paths[0].read_text(), end="")
    print(f"wrote {', '.join(map(str, paths))}")


def register(app: typer.Typer) -> None:
    app.command(name="eval")(eval_command)
    app.command(name="report")(report_command)
