"""Training speed of the real loop (data, masks, forward, backward, AdamW, clipping): images/s per preset,
model FLOP utilisation against a matmul measured in the same run, peak memory, and what that means in time.

Prints, asserts nothing. Each preset trains `--steps` steps after a short warm-up run, through
`diyt.train.train` as the stages do (with the feature target, on the frozen backbone's maps computed once
before the timed steps, and FLOPs counted for the trained model only), on a stand-in dataset of generated
images at the preset's size (or `--data`, a prepared dataset folder), in bf16 autocast where `train.amp` and
the hardware allow it (CUDA, or a CPU with AMX; the utilisation is then against a bf16 matmul), compiled where
`train.compile` says so (the warm-up run then pays the compilation). On CUDA the seed preset runs at 224 px and
the time to pre-train and fine-tune all 15 MVTec AD categories is projected from it.

Usage: python benchmarks/train_speed.py [--device auto|cpu|cuda] [--presets tiny small seed] [--steps 10]
       [--batch 32] [--data data/prepared/synthetic] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diyt.config import DataParams, ModelParams, PhaseParams, load_params
from diyt.data.layout import write_category
from diyt.data.sample import Sample
from diyt.model import ArchConfig, build_model, forward_flops
from diyt.train import Checkpointing, train, train_images
from diyt.train.data import TrainFeatures
from diyt.train.distributed import start, uses_bf16
from roofline import matmul_flops

MVTEC_AD_TRAIN_IMAGES = 3629  # train/good images of the 15 categories together
GPU_BATCH = {"tiny": 256, "small": 128, "seed": 64}


def stand_in(root: Path, size: int, count: int) -> Path:
    """A one-category prepared dataset of `count` smooth random images (and the test image layout needs)."""
    rng = np.random.default_rng(0)

    def image(seed: int) -> Image.Image:
        noise = np.random.default_rng(seed).normal(128, 40, (size // 8, size // 8, 3)).clip(0, 255)
        return Image.fromarray(noise.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)

    samples = [Sample(f"{i:04d}", "train", "good", lambda i=i: image(i), None, "stand-in") for i in range(count)]
    samples.append(Sample("0000", "test", "good", lambda: image(int(rng.integers(1 << 30))), None, "stand-in"))
    write_category(samples, root / "standin", size, 0.01, 0)
    return root


def with_preset(model: ModelParams, preset: str) -> ModelParams:
    """The same switches (norm, masking, ...) at another preset's sizes (the size overrides dropped)."""
    sizes = {f.name for f in dataclasses.fields(ArchConfig)}
    return ModelParams(**{k: v for k, v in model.model_dump().items() if k not in sizes} | {"preset": preset})


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (RSS)"


def measure(model_params: ModelParams, data: DataParams, dataset_dir: Path, categories: list[str], batch: int,
            steps: int, device_kind: str, amp: bool, compile: bool, work: Path) -> tuple[float, float, torch.device]:
    """(images/s of `steps` training steps, forward FLOPs per image, device) after a 2-step warm-up run."""
    runtime = start(device_kind, amp=amp, compile=compile, num_workers=0)
    dataset = train_images(dataset_dir, categories, data, model_params.arch.image_size, seed=0)
    model = build_model(model_params).to(runtime.device)
    size = model_params.arch.image_size
    sample = torch.zeros(1, 3, size, size, device=runtime.device)
    if not model.source.is_pixels:  # as the runner: the frozen backbone's maps once, before the timed steps
        dataset = TrainFeatures(dataset, model.source, runtime.device)
        sample = model.source.feature_map(sample)
    flops = forward_flops(model, sample)  # what is trained; a frozen backbone's forward is not part of a step
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    result = None
    for n, name in ((2, "warmup"), (steps, "timed")):
        phase = PhaseParams(steps=n, batch_size=batch, warmup_steps=1)
        result = train(model, dataset, phase, phase_name="pretrain", seed=0, runtime=runtime,
                       checkpointing=Checkpointing(work / f"{name}.safetensors", 10**9, {}), desc=name)
    return result.images_per_s, flops, runtime.device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--presets", nargs="+", default=None, choices=["tiny", "small", "seed"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the params' pretrain batch "
                        "on CPU, a larger one per preset on CUDA)")
    parser.add_argument("--data", type=Path, default=None, help="a prepared dataset folder instead of stand-ins")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    presets = args.presets or (["tiny", "seed"] if cuda else ["tiny"])
    dtype = torch.bfloat16 if uses_bf16(device, params.train.amp) else torch.float32  # as the stages' steps
    roof = matmul_flops(device, dtype, 8192 if cuda else 1024)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if cuda else 'cpu'}, "
          f"{torch.get_num_threads()} threads; matmul {str(dtype).removeprefix('torch.')}: {roof / 1e9:.1f} GFLOP/s")
    print(f"{'preset':<7} {'px':>4} {'batch':>5} {'fwd GFLOP/img':>13} {'img/s':>8} {'train GFLOP/s':>13} "
          f"{'MFU':>6}  peak memory")
    speeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            model_params = params.model if preset == params.model.preset else with_preset(params.model, preset)
            size = model_params.arch.image_size
            batch = args.batch or (GPU_BATCH[preset] if cuda else params.train.pretrain.batch_size)
            if args.data is not None:
                dataset_dir, categories = args.data, list(params.data.categories)
            else:
                dataset_dir = stand_in(Path(tmp) / preset, size, batch * 2 + 2)
                categories = ["standin"]
            img_s, flops, where = measure(model_params, params.data, dataset_dir, categories, batch, args.steps,
                                          args.device, params.train.amp, params.train.compile, Path(tmp))
            achieved = 3 * flops * img_s  # backward ≈ 2x forward
            speeds[preset] = img_s
            print(f"{preset:<7} {size:>4} {batch:>5} {flops / 1e9:>13.3f} {img_s:>8.1f} {achieved / 1e9:>13.1f} "
                  f"{achieved / roof:>6.1%}  {peak_memory(where)}")
    print(f"matmul again at the end: {matmul_flops(device, dtype, 8192 if cuda else 1024) / 1e9:.1f} GFLOP/s")
    pre, fine = params.train.pretrain.epochs, params.train.finetune.epochs
    for preset, img_s in speeds.items():
        if cuda or preset == "tiny":
            images = MVTEC_AD_TRAIN_IMAGES * (1 - params.data.val_fraction)
            hours = (pre + fine) * images / img_s / 3600
            print(f"projected, {preset}: pre-train {pre} + fine-tune {fine} epochs over all 15 MVTec AD categories "
                  f"({images:.0f} train images) = {hours:.2f} h on one {device.type} device")


if __name__ == "__main__":
    main()
