"""The training loop of the synthetic protocol (PAPER.md section 4), exact across kills.

One optimizer step = one global batch (``batch_size`` rows, split over ranks and accumulation
micro-batches). The loss is the masked next-token cross-entropy averaged over every masked
position of the global batch, plus ``gate_loss_weight`` times the model's gate loss; with that
normalisation a run on 1 process with 2 accumulation steps and a run on 2 ranks compute the same
update.

The hot loop never reads a device value on the host: metrics are summed on the device and read
every ``log_every`` steps (that read is also where a NaN/inf loss is caught). Everything that
decides what happens next (the data at step s, the learning rate, the RNG streams) is a function
of the checkpoint, so ``--resume`` continues a killed run bit for bit on the same hardware.
"""

from __future__ import annotations

import contextlib
import copy
import math
import queue
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from hax_ssm.data.batch import Batch
from hax_ssm.errors import HaxError, require
from hax_ssm.eval.evaluation import EvalResult, autocast_for, evaluate
from hax_ssm.eval.metrics import score_recall
from hax_ssm.train.config import TrainConfig
from hax_ssm.train.data import micro_batches, pin_memory
from hax_ssm.train.distributed import (
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    gather_objects,
    init_distributed,
)
from hax_ssm.train.run_dir import RunDir
from hax_ssm.train.schedule import build_adamw, set_lr
from hax_ssm.train.sinks import MetricSinks
from hax_ssm.utils.provenance import provenance
from hax_ssm.utils.step_graphs import StepGraphs, pad_to_multiple

CHECKPOINT_FORMAT = 1
GRAPH_LENGTH_MULTIPLE = 64  # --cuda-graphs: batch lengths padded up to this, so at most L/64 graphs
# device-side sums kept between two log lines, in this order
_WINDOW_FIELDS = ("lm_loss", "gate_loss", "accuracy_sum", "samples", "grad_norm", "stop")


class _Micro(NamedTuple):
    """The tensors of a (micro-)batch that a training step reads."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor


class Diverged(HaxError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class StepWindow:
    """Metrics accumulated since the last log line (saved in checkpoints: resumed logs match)."""

    sums: torch.Tensor
    steps: int = 0

    @classmethod
    def empty(cls, device: torch.device) -> StepWindow:
        return cls(torch.zeros(len(_WINDOW_FIELDS), dtype=torch.float64, device=device))


ModelFactory = Callable[[TrainConfig], torch.nn.Module]


def build_model_for(config: TrainConfig) -> torch.nn.Module:
    """The model of a run: the models' preset for (base, width) with the sparse options."""
    from hax_ssm.models import build_model

    return build_model(config.preset, **config.model_kwargs())


def recall_loader(*args: Any, **kwargs: Any) -> Any:
    """The recall tasks' loader (imported here: other data need no Arrow)."""
    from hax_ssm.data import RecallLoader

    return RecallLoader(*args, **kwargs)


class Trainer:
    """Build with a validated config; ``fit()`` trains, validates, checkpoints and tests.

    ``resume=True`` continues the run in ``config.save_dir`` from its last checkpoint;
    ``overwrite=True`` clears a previous run there. ``model_factory`` replaces the models'
    presets (tests, experiments); ``loader_factory`` the recall loader (same call signature:
    ``(data_dir, split, batch_size=, shuffle=, ...)``, e.g. language-model windows). What is
    scheduled and how the best step is chosen come from the config (``lr_at``, ``best_by``).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool = False,
        overwrite: bool = False,
        model_factory: ModelFactory = build_model_for,
        loader_factory: Callable[..., Any] | None = None,
    ):
        self.config = config.validate()
        self.run = RunDir(config.save_dir)
        self.ctx, self.device = init_distributed(config.device)
        # every check before anything is written (and on every rank before rank 0 writes)
        if resume:
            self.run.check_resumable()
        else:
            self.run.check_fresh(overwrite)
        config.check_batch_split(self.ctx.world_size)
        require(
            not (config.cuda_graphs and self.ctx.enabled),
            "--cuda-graphs runs one process (DDP's gradient all-reduce is not captured): drop torchrun or the flag",
        )
        self._open_loader = loader_factory or recall_loader
        self._loader("train", train=True)  # a data dir that is not a dataset fails here
        for split in (config.val_split, config.test_split):
            self._loader(split, train=False)
        barrier(self.ctx)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        self.model = model_factory(config).to(self.device)
        graphed = config.cuda_graphs and self.device.type == "cuda"  # elsewhere the flag changes nothing
        self.optimizer = build_adamw(self.model, config.lr, config.weight_decay, capturable=graphed)
        self.step = 0
        self.best: dict[str, Any] = {"step": None, "val_accuracy": -math.inf, "val_loss": math.inf}
        self.window = StepWindow.empty(self.device)
        if resume:
            self._load_checkpoint()
        elif self.ctx.is_main:
            self.run.clear()
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.run.write_json(self.run.config, self._config_record())
        barrier(self.ctx)
        self.train_model = self._wrap_for_training(self.model)
        self.graphs = StepGraphs(self._graph_step, params=self.model.parameters()) if graphed else None
        self.sinks = None
        if self.ctx.is_main:
            self.sinks = MetricSinks(self.run, config.to_dict(), config.wandb, config.wandb_project)

    # ------------------------------------------------------------------ setup
    def _loader(self, split: str, train: bool, start_step: int = 0) -> Any:
        c = self.config
        if train:
            return self._open_loader(
                c.data_dir,
                split,
                batch_size=c.batch_size // self.ctx.world_size,  # the loader's batch is per rank
                seed=c.seed,
                start_step=start_step,
                bucket_by_length=c.bucket_by_length,
                rank=self.ctx.rank,
                world_size=self.ctx.world_size,
                shuffle=True,
            )
        return self._open_loader(c.data_dir, split, batch_size=c.eval_batch_size, shuffle=False)

    def _wrap_for_training(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.config.compile:
            model = torch.compile(model)
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return model

    def _config_record(self) -> dict[str, Any]:
        model_config = getattr(self.model, "config", None)
        return {
            "train": self.config.to_dict(),
            "model": model_config.to_dict() if hasattr(model_config, "to_dict") else None,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "world_size": self.ctx.world_size,
            "provenance": provenance(),
        }

    # ------------------------------------------------------------------ checkpoints
    def _rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def state_dict(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_states,  # one per rank: the ranks' streams diverge (LSH draws, gate-loss sampling)
            "best": dict(self.best),
            "window": {"sums": self.window.sums.cpu(), "steps": self.window.steps},
            **self._what_was_trained(),
        }

    def _what_was_trained(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild its model (``hax eval`` reads it)."""
        return {
            "config": self.config.to_dict(),
            "model_build": {"preset": self.config.preset, "kwargs": self.config.model_kwargs()},
            "model_config": self.model.config.to_dict() if hasattr(self.model, "config") else None,
        }

    def _save_checkpoint(self) -> None:
        if self.window.steps:  # never write a checkpoint after a NaN: check the unlogged steps
            self._check_finite(self._read_window(False)[0], self.step - self.window.steps + 1)
        rng_states = gather_objects(self.ctx, self._rng_state())
        if self.ctx.is_main:
            self.run.save_checkpoint(self.run.last_checkpoint, self.state_dict(rng_states))
        barrier(self.ctx)

    def _load_checkpoint(self) -> None:
        state = self.run.load_checkpoint(self.run.last_checkpoint)
        if state.get("format") != CHECKPOINT_FORMAT:
            found = state.get("format")
            raise HaxError(f"{self.run.last_checkpoint}: checkpoint format {found}, expected {CHECKPOINT_FORMAT}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.best = state["step"], state["best"]
        self.window = StepWindow(state["window"]["sums"].to(self.device), state["window"]["steps"])
        rng = state["rng"]
        self._set_rng_state(rng[self.ctx.rank] if len(rng) == self.ctx.world_size else rng[0])
        if self.ctx.is_main:
            self.run.truncate_metrics(self.step)

    def _save_best(self, result: EvalResult) -> None:
        self.best = {"step": self.step, "val_accuracy": result.accuracy, "val_loss": result.loss}
        if self.ctx.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "step": self.step,
                "model": self.model.state_dict(),
                "best": dict(self.best),
                **self._what_was_trained(),
            }
            self.run.save_checkpoint(self.run.best_checkpoint, state)

    # ------------------------------------------------------------------ one step
    def _train_step(self, batch: Batch) -> None:
        c = self.config
        set_lr(self.optimizer, c.lr_at(self.step))
        if self.graphs is not None:  # one graph per padded length; no micro-batches, one process
            b = batch.to(self.device, non_blocking=True)
            pad_id = getattr(getattr(self.model, "config", None), "pad_token_id", None) or 0
            stats = self.graphs(
                pad_to_multiple(b.input_ids, GRAPH_LENGTH_MULTIPLE, pad_id),
                pad_to_multiple(b.attention_mask, GRAPH_LENGTH_MULTIPLE, False),
                pad_to_multiple(b.loss_mask, GRAPH_LENGTH_MULTIPLE, False),
            )
        else:
            stats = self._update([m.to(self.device, non_blocking=True) for m in micro_batches(batch, c.grad_accum)])
        self.window.sums += stats.double()
        self.window.steps += 1

    def _graph_step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
    ) -> torch.Tensor:
        return self._update([_Micro(input_ids, attention_mask, loss_mask)])

    def _update(self, micros: list[Any]) -> torch.Tensor:
        """Forward and backward over the micro-batches, one optimizer update; the step's metric sums
        (no host sync: under --cuda-graphs this is what a graph replays)."""
        c = self.config
        # normalise by the masked positions of the whole global batch (all micro-batches, all ranks)
        masked = all_reduce_sum(self.ctx, torch.stack([m.loss_mask.sum() for m in micros]).sum().float())
        scale = self.ctx.world_size / masked  # DDP averages gradients over ranks
        zero = torch.zeros((), device=self.device)
        lm_total, gate_total, acc_total = zero, zero, zero
        for i, micro in enumerate(micros):
            sync_grads = i == len(micros) - 1 or not self.ctx.enabled
            with contextlib.nullcontext() if sync_grads else self.train_model.no_sync():
                with autocast_for(self.device, c.precision):
                    out = self.train_model(micro.input_ids, attention_mask=micro.attention_mask)
                scores = score_recall(out.logits, micro.input_ids, micro.loss_mask)
                lm = scores.ce_sum.sum() * scale
                gate = out.gate_loss.float() / c.grad_accum if getattr(out, "gate_loss", None) is not None else zero
                (lm + c.gate_loss_weight * gate).backward()
            lm_total = lm_total + lm.detach() / self.ctx.world_size  # summed over ranks when read
            gate_total = gate_total + gate.detach()
            acc_total = acc_total + scores.sample_accuracy.sum()
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip) if c.grad_clip > 0 else zero
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        rows = torch.full_like(zero, sum(len(m.input_ids) for m in micros))
        return torch.stack([lm_total, gate_total, acc_total, rows, grad_norm, zero])

    # ------------------------------------------------------------------ logging and validation
    def _read_window(self, stop_requested: bool) -> tuple[dict[str, float], bool]:
        """Reduce the window over ranks and read it (the one host sync of the loop)."""
        sums = self.window.sums.clone()
        sums[-1] = float(stop_requested)
        values = dict(zip(_WINDOW_FIELDS, all_reduce_sum(self.ctx, sums).tolist(), strict=True))
        steps, world = max(self.window.steps, 1), self.ctx.world_size
        lm, gate = values["lm_loss"] / steps, values["gate_loss"] / (steps * world)
        metrics = {
            "loss": lm + self.config.gate_loss_weight * gate,
            "lm_loss": lm,
            "gate_loss": gate,
            "accuracy": values["accuracy_sum"] / max(values["samples"], 1),
            "grad_norm": values["grad_norm"] / (steps * world),
        }
        return metrics, values["stop"] > 0

    def _check_finite(self, metrics: dict[str, float], first_step: int) -> None:
        if not all(math.isfinite(v) for v in metrics.values()):
            good = self.run.last_checkpoint if self.run.has_checkpoint() else None
            kept = f"the last good checkpoint {good} is kept" if good else "no checkpoint was written yet"
            raise Diverged(
                f"loss became {metrics['loss']} between steps {first_step} and {self.step}: stopped; {kept} "
                f"(lower --lr or raise --warmup-steps)"
            )

    def _log_train(self, stop_requested: bool, pbar: tqdm, clock: dict[str, float]) -> bool:
        metrics, stop = self._read_window(stop_requested)
        self._check_finite(metrics, self.step - self.window.steps + 1)
        now = time.perf_counter()
        steps_per_s = self.window.steps / max(now - clock["last"], 1e-9)
        clock["last"] = now
        lr = self.config.lr_at(self.step - 1)
        record = {"step": self.step, "split": "train", **metrics, "lr": lr, "steps_per_s": steps_per_s}
        if self.sinks is not None:
            self.sinks.write([record])
        pbar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.3f}", it_s=f"{steps_per_s:.1f}")
        self.window = StepWindow.empty(self.device)
        return stop

    def _validate(self) -> None:
        result = torch.zeros(2, dtype=torch.float64, device=self.device)
        if self.ctx.is_main:
            res = evaluate(
                self.model, self._loader(self.config.val_split, False), self.device, self.config.precision, False
            )
            result[0], result[1] = res.accuracy, res.loss
        acc, loss = broadcast_from_main(self.ctx, result).tolist()
        if not math.isfinite(loss):
            raise Diverged(f"validation loss became {loss} at step {self.step}: stopped; the last checkpoint is kept")
        if self.sinks is not None:
            self.sinks.write([{"step": self.step, "split": self.config.val_split, "loss": loss, "accuracy": acc}])
        if self._improves(acc, loss):
            self._save_best(EvalResult(accuracy=acc, loss=loss, samples=0))

    def _improves(self, accuracy: float, loss: float) -> bool:
        """Is this validation the best so far, by the config's criterion (ties keep the earlier step)?"""
        if self.config.best_by == "loss":
            return loss < self.best["val_loss"]
        return accuracy > self.best["val_accuracy"]

    # ------------------------------------------------------------------ the run
    def fit(self, stop_at: int | None = None, time_limit: float | None = None) -> dict[str, Any] | None:
        """Train to ``config.steps``, then test the best-validation checkpoint; return results.

        Returns None when the run stopped early (``stop_at`` step, ``time_limit`` seconds,
        SIGTERM/SIGINT) after writing a checkpoint to resume from.
        """
        c = self.config
        if self.step >= c.steps and self.run.is_finished():
            return self.run.read_json(self.run.results)
        started = time.perf_counter()
        clock = {"last": started}
        pbar = tqdm(
            total=c.steps, initial=self.step, disable=not (self.ctx.is_main and c.progress), desc="train", unit="step"
        )
        batches = _prefetch(iter(self._loader("train", True, start_step=self.step)), self.device)
        try:
            with _graceful_stop() as signalled:
                while self.step < c.steps:
                    self._train_step(next(batches))
                    self.step += 1
                    pbar.update(1)
                    last = self.step == c.steps
                    out_of_time = time_limit is not None and time.perf_counter() - started > time_limit
                    wants_stop = signalled.is_set() or out_of_time
                    # one process stops at once; ranks must agree, so they decide at the next log line
                    stopping = self.step == stop_at or (wants_stop and not self.ctx.enabled)
                    if self.step % c.log_every == 0 or last:  # (a stop saves the open window instead)
                        stopping = self._log_train(wants_stop, pbar, clock) or stopping
                    if self.step % c.eval_every == 0 or last:
                        self._validate()
                    if self.step % c.checkpoint_interval == 0 or last or stopping:
                        self._save_checkpoint()
                    if stopping and not last:
                        return None
        finally:
            pbar.close()
            if self.sinks is not None:
                self.sinks.close()
        return self._test()

    def _test(self) -> dict[str, Any] | None:
        """Test the best-validation weights on the test split; write eval/ and results.json."""
        if not self.ctx.is_main:
            barrier(self.ctx)
            return None
        best = self.run.load_checkpoint(self.run.best_checkpoint)
        model = copy.deepcopy(self.model)  # same architecture and buffers; the best weights replace its own
        model.load_state_dict(best["model"])
        result = evaluate(model, self._loader(self.config.test_split, False), self.device, self.config.precision)
        results = {
            "best": self.best,
            "test": {"split": self.config.test_split, **self._record_test(result)},
            "steps": self.step,
            "config": self.config.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "provenance": provenance(),
        }
        self.run.write_json(self.run.results, results)
        barrier(self.ctx)
        return results

    def summary(self, results: dict[str, Any]) -> str:
        """One line on a finished run's results."""
        best, test = results["best"], results["test"]
        return (
            f"test accuracy {100 * test['accuracy']:.2f}% on {test['samples']} samples "
            f"(best validation {100 * best['val_accuracy']:.2f}% at step {best['step']})"
        )

    def _record_test(self, result: EvalResult) -> dict[str, Any]:
        """The test record of results.json; also writes its per-size breakdown under eval/."""
        from hax_ssm.eval.breakdown import write_eval_files

        write_eval_files(self.run.eval_dir, self.config.test_split, result, title=self.run.path.name)
        return result.to_json()


def _prefetch(batches: Iterator[Batch], device: torch.device, depth: int = 4) -> Iterator[Batch]:
    """On CUDA, read and pin the next batches in a thread so the GPU never waits on the loader.

    The order is the loader's (one producer, FIFO), so prefetching changes nothing computed.
    """
    if device.type != "cuda":
        yield from batches
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                ready.put(pin_memory(batch))
        except BaseException as err:  # surfaced in the consumer
            ready.put(err)
        ready.put(done)

    threading.Thread(target=produce, daemon=True, name="hax-prefetch").start()
    while (item := ready.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


@contextlib.contextmanager
def _graceful_stop() -> Iterator[threading.Event]:
    """SIGTERM/SIGINT set an event (the loop checkpoints and stops); a second SIGINT interrupts."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: Any) -> None:
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
