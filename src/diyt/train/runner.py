"""One training phase from validated params to written model: what the pretrain and finetune stages share."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from diyt.config import DataParams, ModelParams, TrainParams
from diyt.model import build_model
from diyt.model.map_cache import MapCache
from diyt.train import checkpoint as ckpt
from diyt.train.data import TrainFeatures, train_images
from diyt.train.distributed import start, stop
from diyt.train.loop import Checkpointing, TrainResult, train

Phase = Literal["pretrain", "finetune"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_phase(phase: Phase, *, model_params: ModelParams, data: DataParams, train_params: TrainParams,
              params_digest: str, dataset_dir: Path, categories: Sequence[str], out_dir: Path,
              checkpoint_dir: Path, log_dir: Path | None, init_dir: Path | None = None,
              feature_cache: Path | None = None) -> TrainResult | None:
    """Train one phase on the train split of `categories` and write `out_dir/{model.safetensors,config.json}`.

    Starts from `init_dir`'s weights when given (fine-tuning). A frozen backbone's train maps are read from and
    written to `feature_cache` when given (`MapCache`). Under torchrun every rank trains, rank 0 writes
    and gets the result; the other ranks get None.
    """
    runtime = start(train_params.device, amp=train_params.amp, compile=train_params.compile,
                    num_workers=train_params.num_workers)
    try:
        seed_everything(train_params.seed)
        model = build_model(model_params)
        init_sha = None
        if init_dir is not None:
            weights = Path(init_dir) / ckpt.WEIGHTS
            ckpt.load_into(model, ckpt.load_weights(weights), weights)
            init_sha = ckpt.file_digest(weights)
        arch = model_params.arch
        dataset = train_images(Path(dataset_dir), categories, data, arch.image_size, train_params.seed)
        images_sha = dataset.digest()
        if not model.source.is_pixels:  # a frozen backbone: its feature maps once, not once per epoch
            dataset = TrainFeatures(dataset, model.source.to(runtime.device), runtime.device, MapCache(feature_cache))
            if init_dir is None:  # pre-training fits the feature statistics; fine-tuning keeps them
                dataset.maps = model.source.fit_statistics(dataset.maps)
        phase_params = getattr(train_params, phase)
        # what decides the resulting weights, keyed as in params.yaml, and the precision the steps run in (bf16
        # where train.amp and the hardware allow it); device, nproc, compile, ... only change speed
        fingerprint = {"phase": phase, "categories": list(categories), "init": init_sha,
                       "precision": "bf16" if runtime.amp else "float32",
                       "data": data.model_dump(mode="json"), "model": model_params.model_dump(mode="json"),
                       "train": {"seed": train_params.seed, phase: phase_params.model_dump(mode="json")}}
        result = train(model, dataset, phase_params, phase_name=phase, seed=train_params.seed, runtime=runtime,
                       checkpointing=Checkpointing(Path(checkpoint_dir) / ckpt.CHECKPOINT,
                                                   train_params.checkpoint_every,  # resumed only on the same images
                                                   {**fingerprint, "train_images": images_sha[:12],
                                                    "code": ckpt.code_digest()}),
                       log_dir=log_dir, desc=f"{phase} {'+'.join(categories)}")
        if not runtime.is_main:
            return None
        ckpt.save_model(out_dir, model, {
            "model": model_params.model_dump(mode="json"), "arch": dataclasses.asdict(arch),
            "image_size": arch.image_size, "normalize": data.normalize, "dataset": data.dataset,
            "categories": list(categories), "phase": phase, "steps": result.total_steps,
            "params_digest": params_digest, "train_digest": ckpt.fingerprint_digest(fingerprint)})
        return result
    finally:
        stop(runtime)
