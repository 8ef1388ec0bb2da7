"""``hax train`` and ``hax sweep``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from hax_ssm.errors import HaxError, require
from hax_ssm.train.config import TrainConfig, merge_for_resume
from hax_ssm.train.run_dir import RunDir

_DEFAULTS = TrainConfig()
FLAG_HELP = {
    "base_arch": "mamba, mamba2 or samba",
    "sparse_arch": "none, a pattern or a '+' union; hax = sign_bin_lsh+key_selection",
    "width": "1x or 2x (the paper's 'Base (2x dim)'); never switched silently",
    "data_dir": "dataset directory (hax data joint-recall --out DIR)",
    "save_dir": "run directory: config, metrics.jsonl, checkpoints, results",
    "sparse_keys": "key budget k per query, split evenly between the parts of a union",
    "num_hash": "LSH hash functions",
    "gate_loss_weight": "weight of the key-selection ranking (gate) loss",
    "lsh_center": "causal, or sequence (the reference's; leaks future tokens)",
    "attention_impl": "auto, sparse (O(L*k)), triton (CUDA) or reference (dense L x L masks)",
    "lr": "peak learning rate",
    "weight_decay": "AdamW weight decay (matrices only)",
    "grad_clip": "gradient-norm clip, 0 = off",
    "steps": "optimizer steps",
    "warmup_steps": "linear warm-up steps, then constant",
    "batch_size": "global batch per step (split over ranks and accumulation)",
    "grad_accum": "gradient-accumulation micro-batches per step",
    "seed": "seed of the initialisation and of the data order",
    "eval_every": "validate (and keep the best checkpoint) every N steps",
    "eval_batch_size": "evaluation batch size",
    "checkpoint_every": "write the resume checkpoint every N steps, 0 = at every validation",
    "log_every": "read metrics from the device every N steps",
    "bucket_by_length": "batch samples of similar length",
    "device": "auto, cpu, cuda or cuda:N",
    "precision": "auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32",
    "compile": "torch.compile the model",
    "cuda_graphs": "replay each training step as a CUDA graph (lengths padded to multiples of 64; one process)",
    "progress": "show a progress bar",
    "wandb": "also log to Weights & Biases",
    "wandb_project": "W&B project",
}


def config_flag(field: str, defaults: TrainConfig = _DEFAULTS, helps: dict[str, str] = FLAG_HELP) -> Any:
    """A flag for a config field: None when not given, so that --resume can tell."""
    default = getattr(defaults, field)
    flag = "--" + field.replace("_", "-")
    names = (f"{flag}/--no-{flag[2:]}",) if isinstance(default, bool) else ()
    shown = f" [{default}]" if default != "" else ""
    return typer.Option(*names, help=helps[field] + shown)


_S = Optional[str]  # noqa: UP045 (typer reads these annotations at runtime)
_I = Optional[int]  # noqa: UP045
_F = Optional[float]  # noqa: UP045
_B = Optional[bool]  # noqa: UP045


def train(
    base_arch: Annotated[_S, config_flag("base_arch")] = None,
    sparse_arch: Annotated[_S, config_flag("sparse_arch")] = None,
    width: Annotated[_S, config_flag("width")] = None,
    data_dir: Annotated[_S, config_flag("data_dir")] = None,
    save_dir: Annotated[_S, config_flag("save_dir")] = None,
    sparse_keys: Annotated[_I, config_flag("sparse_keys")] = None,
    num_hash: Annotated[_I, config_flag("num_hash")] = None,
    gate_loss_weight: Annotated[_F, config_flag("gate_loss_weight")] = None,
    lsh_center: Annotated[_S, config_flag("lsh_center")] = None,
    attention_impl: Annotated[_S, config_flag("attention_impl")] = None,
    model_override: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="model config override KEY=JSON_VALUE (repeatable), e.g. hidden_size=32"),
    ] = None,
    lr: Annotated[_F, config_flag("lr")] = None,
    weight_decay: Annotated[_F, config_flag("weight_decay")] = None,
    grad_clip: Annotated[_F, config_flag("grad_clip")] = None,
    steps: Annotated[_I, config_flag("steps")] = None,
    warmup_steps: Annotated[_I, config_flag("warmup_steps")] = None,
    batch_size: Annotated[_I, config_flag("batch_size")] = None,
    grad_accum: Annotated[_I, config_flag("grad_accum")] = None,
    seed: Annotated[_I, config_flag("seed")] = None,
    eval_every: Annotated[_I, config_flag("eval_every")] = None,
    eval_batch_size: Annotated[_I, config_flag("eval_batch_size")] = None,
    checkpoint_every: Annotated[_I, config_flag("checkpoint_every")] = None,
    log_every: Annotated[_I, config_flag("log_every")] = None,
    bucket_by_length: Annotated[_B, config_flag("bucket_by_length")] = None,
    device: Annotated[_S, config_flag("device")] = None,
    precision: Annotated[_S, config_flag("precision")] = None,
    compile: Annotated[_B, config_flag("compile")] = None,
    cuda_graphs: Annotated[_B, config_flag("cuda_graphs")] = None,
    progress: Annotated[_B, config_flag("progress")] = None,
    wandb: Annotated[_B, config_flag("wandb")] = None,
    wandb_project: Annotated[_S, config_flag("wandb_project")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file of TrainConfig fields; flags override it")] = None,  # noqa: UP045
    resume: Annotated[bool, typer.Option(help="continue the run in --save-dir from its last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="start over in a --save-dir that holds a previous run")] = False,
    time_limit: Annotated[_F, typer.Option(help="stop after this many seconds with a checkpoint")] = None,
) -> None:
    """Train one model on a joint-recall dataset; validate, keep the best checkpoint, test it."""
    given = {k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    if model_override:
        given["model_overrides"] = parse_overrides(model_override)
    cfg = resolve_config(given, config, resume)
    run_training(cfg, resume=resume, overwrite=overwrite, time_limit=time_limit)


def run_training(
    cfg: TrainConfig,
    *,
    resume: bool,
    overwrite: bool,
    time_limit: float | None,
    trainer_class: type | None = None,
    command: str = "hax train",
) -> dict | None:
    """Train and test one run (under torchrun: every rank calls this); print where things are.

    ``trainer_class`` (default :class:`~hax_ssm.train.trainer.Trainer`) and ``command`` serve other tasks."""
    from hax_ssm.train.distributed import shutdown_distributed
    from hax_ssm.train.trainer import Trainer

    trainer = (trainer_class or Trainer)(cfg, resume=resume, overwrite=overwrite)
    try:
        results = trainer.fit(time_limit=time_limit)
    finally:
        shutdown_distributed(trainer.ctx)
    if not trainer.ctx.is_main:
        return results
    if results is None:
        print(f"stopped at step {trainer.step}; continue with: {command} --save-dir {cfg.save_dir} --resume")
    else:
        print(f"{trainer.summary(results)}; results in {RunDir(cfg.save_dir).results}")
    return results


def resolve_config(
    given: dict[str, Any], config_file: Path | None, resume: bool, config_class: type[TrainConfig] = TrainConfig
) -> TrainConfig:
    """Defaults <- config file <- flags; on --resume the stored config, where flags may not differ."""
    values = dict(read_json_object(config_file, "--config")) if config_file else {}
    values.update(given)
    if not resume:
        return config_class.from_dict(values, "--config").validate()
    require(bool(values.get("save_dir")), "--resume needs --save-dir (the run to continue)")
    run = RunDir(values["save_dir"])
    run.check_resumable()
    stored = config_class.from_dict(run.read_json(run.config)["train"], str(run.config))
    return merge_for_resume(stored, values).validate()


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        require(bool(sep) and key.isidentifier(), f"--model-override {item!r}: expected KEY=VALUE, e.g. hidden_size=32")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # a bare string such as attention_impl=sparse
    return out


def read_json_object(path: Path, flag: str) -> dict[str, Any]:
    try:
        obj = json.loads(Path(path).read_text())
    except OSError as err:
        raise HaxError(f"{flag} {path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise HaxError(f"{flag} {path}: not valid JSON ({err})") from None
    require(isinstance(obj, dict), f"{flag} {path}: must hold a JSON object")
    return obj


def sweep(
    sweep_file: Annotated[
        Path, typer.Argument(help="sweep JSON: data_dir, train, cells, grid (hax_ssm/train/sweep.py)")
    ],
    sweep_dir: Annotated[Path | None, typer.Option(help="where the runs go [runs/<sweep file name>]")] = None,
    data_dir: Annotated[str | None, typer.Option(help="dataset directory (overrides the file's data_dir)")] = None,
    parallel: Annotated[int, typer.Option(help="runs at once (subprocesses; several small ones share a GPU)")] = 1,
    time_limit: Annotated[float | None, typer.Option(help="stop everything after this many seconds, resumable")] = None,
    dry_run: Annotated[bool, typer.Option(help="list the runs and their status, run nothing")] = False,
) -> None:
    """Run a grid of trainings with one step budget; finished runs are skipped, unfinished ones resumed."""
    from hax_ssm.train.sweep import load_sweep, run_sweep

    spec = load_sweep(sweep_file, data_dir)
    outcome = run_sweep(spec, sweep_dir or Path("runs") / sweep_file.stem, parallel, time_limit, dry_run)
    if outcome.get("failed"):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    from hax_ssm.train.demo import demo

    app.command(name="train")(train)
    app.command(name="sweep")(sweep)
    app.command(name="demo")(demo)
