"""Pre-training and fine-tuning: the loop, its lr schedule, safetensors checkpoints, torchrun/DDP, logging."""

from diyt.train.checkpoint import CHECKPOINT, CONFIG, WEIGHTS, load_into, load_weights, save_model
from diyt.train.data import Batches, TrainImages, train_images
from diyt.train.distributed import Runtime, relaunch_under_torchrun, under_torchrun
from diyt.train.loop import Checkpointing, NonFiniteLoss, TrainResult, train
from diyt.train.runner import run_phase
from diyt.train.schedule import lr_at, peak_lr

__all__ = [
    "CHECKPOINT", "CONFIG", "WEIGHTS", "Batches", "Checkpointing", "NonFiniteLoss", "Runtime", "TrainImages",
    "TrainResult", "load_into", "load_weights", "lr_at", "peak_lr", "relaunch_under_torchrun", "run_phase",
    "save_model", "train", "train_images", "under_torchrun",
]
