"""The training loop of both phases: MAE pre-training and per-category fine-tuning share one recipe.

AdamW with no decay on norm/DyT/bias/token/position parameters, lr = base_lr × batch / 256 with linear warmup
and a half-cycle cosine per iteration, gradient clipping, bf16 autocast on CUDA and on AMX CPUs, DDP under
torchrun. Each step's batch and masks are pure functions of (seed, step), and every RNG is checkpointed, so a
killed run resumes to the same weights as one that was never stopped. A non-finite loss stops the run before it
touches the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diyt.config import PhaseParams
from diyt.errors import DiytError
from diyt.io import remove_stale_temps
from diyt.model import param_groups
from diyt.train import checkpoint as ckpt
from diyt.train.data import Batches, TrainImages
from diyt.train.distributed import Runtime
from diyt.train.log import StepLog
from diyt.train.schedule import lr_at, peak_lr


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often the run is saved, and the params that must match for a checkpoint to be resumed."""

    path: Path  # the checkpoint file
    every: int  # steps
    fingerprint: Mapping


class TrainResult(NamedTuple):
    total_steps: int
    resumed_from: int  # the step this process started at (0: from scratch)
    last_loss: float
    images_per_s: float  # over the steps this process ran


class NonFiniteLoss(DiytError):
    """The loss became NaN or infinite."""


def build_optimizer(model: nn.Module, phase: PhaseParams, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, phase.weight_decay), lr=peak_lr(phase.base_lr, phase.batch_size),
                             betas=phase.betas, fused=device.type == "cuda")


def train(model: nn.Module, dataset: TrainImages, phase: PhaseParams, *, phase_name: str, seed: int,
          runtime: Runtime, checkpointing: Checkpointing, log_dir: Path | None = None,
          desc: str = "train") -> TrainResult:
    """Train `model` in place for `phase` on `dataset`, resuming from `checkpointing.path` when it holds this run.

    Only the main process writes (checkpoints, logs); every process ends with the same weights.
    """
    batches = Batches(dataset, phase.batch_size, phase=phase_name, seed=seed, rank=runtime.rank,
                      world_size=runtime.world_size, num_workers=runtime.num_workers,
                      pin_memory=runtime.device.type == "cuda")
    total = phase.steps or phase.epochs * batches.steps_per_epoch
    model.to(runtime.device)
    optimizer = build_optimizer(model, phase, runtime.device)
    generator = torch.Generator().manual_seed(seed)  # the masks; its state travels with checkpoints
    start = _resume_or_start(checkpointing, total, model, optimizer, generator)
    if runtime.is_main:
        remove_stale_temps(checkpointing.path)
        if start:
            print(f"resuming {checkpointing.path} at step {start}/{total}")
    run_step = _Stepper(_wrap(model, runtime), model, optimizer, generator, phase, phase_name, runtime, dataset)
    peak = peak_lr(phase.base_lr, phase.batch_size)
    log = StepLog(log_dir, start=start, total=total, batch_size=phase.batch_size, desc=desc) if runtime.is_main \
        else None
    model.train()
    step, loss_value = start, math.nan
    try:
        while step < total:
            for images, indices in batches.epoch(*divmod(step, batches.steps_per_epoch)):
                lr = lr_at(step, peak=peak, min_lr=phase.min_lr, warmup_steps=phase.warmup_steps,
                           total_steps=total)
                loss_value = run_step(step, lr, images, indices)
                if log is not None:
                    log.step(step, loss_value, lr)
                step += 1
                if runtime.is_main and (step % checkpointing.every == 0 or step == total):
                    ckpt.save_checkpoint(checkpointing.path, model=model, optimizer=optimizer, generator=generator,
                                         run=ckpt.RunState(step, total, dict(checkpointing.fingerprint)))
                if step == total:
                    break
    finally:
        if log is not None:
            log.close()
    return TrainResult(total, start, loss_value, log.images_per_s if log is not None else math.nan)


@dataclass
class _Stepper:
    """One optimiser step on this rank's share of a global batch; returns the global mean loss."""

    net: nn.Module  # what forward runs through (compiled / DDP)
    model: nn.Module  # the plain module: masks, parameters
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    phase: PhaseParams
    phase_name: str
    runtime: Runtime
    dataset: TrainImages

    def __call__(self, step: int, lr: float, images: torch.Tensor, indices: torch.Tensor) -> float:
        rt = self.runtime
        # masks of the whole global batch on every rank, then this rank's rows: the strided split of the data
        mask = self.model.mask(len(images) * rt.world_size, self.generator)[rt.rank :: rt.world_size]
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            loss = self.net(images.to(rt.device, non_blocking=True), mask=mask.to(rt.device)).loss
        loss_value = _global_mean(loss.detach(), rt)
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f"non-finite loss ({loss_value}) at step {step}, batch of dataset indices "
                                f"{_batch_indices(indices, rt)} ({_first_images(indices, self.dataset)}); lower "
                                f"train.{self.phase_name}.base_lr or set train.{self.phase_name}.grad_clip")
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.phase.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.phase.grad_clip)
        self.optimizer.step()
        return loss_value


def _resume_or_start(checkpointing: Checkpointing, total: int, model: nn.Module,
                     optimizer: torch.optim.Optimizer, generator: torch.Generator) -> int:
    """The step to start at: a compatible unfinished checkpoint's, else 0 (a finished run is trained over)."""
    saved = ckpt.read_run(checkpointing.path)
    if saved is None or saved.finished:
        return 0
    ckpt.check_compatible(checkpointing.path, saved, checkpointing.fingerprint)
    if saved.total_steps != total:  # same params, other dataset size
        raise DiytError(f"{checkpointing.path}: an unfinished run of {saved.total_steps} steps, this one has "
                        f"{total} (the data changed); delete the checkpoint to train from scratch")
    ckpt.resume(checkpointing.path, model=model, optimizer=optimizer, generator=generator)
    return saved.step


def _wrap(model: nn.Module, runtime: Runtime) -> nn.Module:
    """The module the steps call: compiled and/or DDP-wrapped; `model` itself keeps the plain state dict."""
    net = torch.compile(model) if runtime.compile else model
    if runtime.distributed:
        net = DistributedDataParallel(net, device_ids=[runtime.device.index] if runtime.device.type == "cuda"
                                      else None)
    return net


def _global_mean(loss: torch.Tensor, runtime: Runtime) -> float:
    """The loss averaged over ranks (each rank's share holds the same number of masked patches)."""
    if runtime.distributed:
        loss = loss.float().clone()
        dist.all_reduce(loss)
        loss /= runtime.world_size
    return float(loss)


def _batch_indices(indices: torch.Tensor, runtime: Runtime) -> list[int]:
    if not runtime.distributed:
        return indices.tolist()
    shares: list[list[int] | None] = [None] * runtime.world_size
    dist.all_gather_object(shares, indices.tolist())
    return sorted(i for share in shares for i in share or [])


def _first_images(indices: torch.Tensor, dataset: TrainImages, count: int = 3) -> str:
    names = [dataset.describe(int(i)) for i in indices[:count]]
    return ", ".join(names) + (", ..." if len(indices) > count else "")
