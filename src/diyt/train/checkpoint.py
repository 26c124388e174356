"""Resumable training state and the trained model, in safetensors only: nothing is ever unpickled.

A checkpoint is one `checkpoint.safetensors` file, renamed into place whole: model weights (`model.*`), AdamW
moments (`optim.<param>.<name>`), and every RNG state as a byte/int tensor (`rng.*`); the step, the run's
length and the training params it was written under are string metadata. A checkpoint of other params is
refused while it is unfinished (resuming it would mix two runs); a finished one is simply trained over.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors
import torch
from safetensors.torch import load_file, save, save_file
from torch import nn

from diyt.errors import DiytError
from diyt.io import atomic_path, json_text

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "diyt-checkpoint-1"


def fingerprint_digest(fingerprint: Mapping) -> str:
    """A short stable hash of the params that decide a run's result."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]


# the code pretrain and finetune depend on in dvc.yaml, less io.py (atomic writes: it computes nothing)
TRAINING_CODE = ("config.py", "data/dataset.py", "data/images.py", "data/layout.py", "model", "train")


def code_digest(package: Path | None = None) -> str:
    """sha256 (12 hex digits) of the source that decides what training computes (`TRAINING_CODE` under the diyt
    package): an unfinished run resumes only under the code that began it. Regular .py files only, line endings
    normalised, so a checkout on another system gives the same digest."""
    package = Path(package or Path(__file__).resolve().parents[1])
    sources = [path for entry in TRAINING_CODE
               for path in ([package / entry] if entry.endswith(".py") else (package / entry).rglob("*.py"))]
    sha = hashlib.sha256()
    for path in sorted(p for p in sources if p.is_file() and not p.is_symlink()):
        sha.update(path.relative_to(package).as_posix().encode() + b"\0")
        sha.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return sha.hexdigest()[:12]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, e.g. the initial weights a fine-tuning starts from."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ weights
def state_tensors(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors, keys prefixed."""
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_model(out_dir: Path, model: nn.Module, config: Mapping) -> None:
    """`out_dir/model.safetensors` (the weights) and `out_dir/config.json` (how to rebuild and feed them). Both are
    written in full to temporaries first and renamed one right after the other, so a killed write leaves the old
    pair or the new one (the folder's other files are left alone)."""
    with atomic_path(Path(out_dir) / WEIGHTS) as weights, atomic_path(Path(out_dir) / CONFIG) as settings:
        save_file(state_tensors(model), weights, metadata={"format": "pt"})
        settings.write_text(json_text(dict(config)))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors weights file, with a clear error when it is missing or not safetensors."""
    try:
        return load_file(path)
    except FileNotFoundError:
        raise DiytError(f"{path}: no weights; run the stage that writes them first (dvc repro)") from None
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise DiytError(f"{path}: not a readable safetensors file ({err}); delete it and train again") from None


def load_into(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: Path) -> None:
    """Copy `tensors` into `model`, naming missing or unexpected keys when the shapes of the two disagree."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = [k for k in own.keys() & tensors.keys() if own[k].shape != tensors[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("other shape", wrong)) if keys)
        raise DiytError(f"{where}: weights do not fit this model ({detail}); the model params changed since "
                        f"they were written: run the stage that writes them again")
    model.load_state_dict(dict(tensors))


# ------------------------------------------------------------------------------------------------- states
def _rng_state(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every RNG a run draws from: torch (CPU, CUDA), numpy, python and the masking generator."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.masking": generator.get_state(),
               "rng.numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
               "rng.python": torch.tensor(internal, dtype=torch.int64)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    meta = {"rng.numpy": json.dumps([kind, pos, has_gauss, cached]),
            "rng.python": json.dumps([version, gauss_next])}
    return tensors, meta


def _restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str], generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.masking"])
    kind, pos, has_gauss, cached = json.loads(meta["rng.numpy"])
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = json.loads(meta["rng.python"])
    random.setstate((version, tuple(int(v) for v in tensors["rng.python"].tolist()), gauss_next))
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"optim.{param}.{name}": value.detach().to("cpu", copy=True).contiguous()
            for param, state in optimizer.state_dict()["state"].items() for name, value in state.items()}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param, name = key.split(".", 2)
            state.setdefault(int(param), {})[name] = value
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)


# --------------------------------------------------------------------------------------------- checkpoint
def save_sorted(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' `save_file` with the metadata in sorted order. The library writes it in hash order, which
    changes from call to call, so the same training state would give other bytes every time (and DVC a new
    cache entry for an identical checkpoint); the tensors and their offsets are kept as they are."""
    blob = save(tensors, metadata=metadata)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data section stays 8-byte aligned, as the library pads it
    with open(path, "wb") as f:  # the tensors' bytes written from the blob, not copied again
        f.write(len(text).to_bytes(8, "little") + text)
        f.write(memoryview(blob)[8 + size :])


@dataclass(frozen=True)
class RunState:
    """What a checkpoint says about its run."""

    step: int  # steps done; training goes on at this step
    total_steps: int
    fingerprint: dict

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


def save_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, run: RunState) -> None:
    """Write the whole training state at a step boundary, atomically."""
    rng, rng_meta = _rng_state(generator)
    tensors = state_tensors(model, "model.") | _optimizer_tensors(optimizer) | rng
    meta = {"format": FORMAT, "step": str(run.step), "total_steps": str(run.total_steps),
            "digest": fingerprint_digest(run.fingerprint), "fingerprint": json.dumps(run.fingerprint)} | rng_meta
    with atomic_path(path) as tmp:
        save_sorted(tensors, tmp, meta)


def read_run(path: Path) -> RunState | None:
    """The run a checkpoint belongs to, or None when there is none."""
    if not Path(path).exists():
        return None
    try:
        with safetensors.safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
        return RunState(int(meta["step"]), int(meta["total_steps"]), json.loads(meta["fingerprint"]))
    except (safetensors.SafetensorError, OSError, ValueError, KeyError) as err:
        raise DiytError(f"{path}: not a readable checkpoint ({err}); delete it to train from scratch") from None


def check_compatible(path: Path, saved: RunState, fingerprint: Mapping) -> None:
    """Refuse to resume an unfinished run of other params, train images or training code, naming what differs."""
    if fingerprint_digest(saved.fingerprint) == fingerprint_digest(fingerprint):
        return
    changes = [f"{key} {old!r} -> {new!r}" for key, old, new in _differences(saved.fingerprint, fingerprint)]
    raise DiytError(f"{path}: an unfinished run (step {saved.step}/{saved.total_steps}) of other params, data or "
                    f"code ({'; '.join(changes[:5]) or 'different params'}); delete the checkpoint to train from "
                    f"scratch, or restore those params, data and code to resume it")


def resume(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    """Load weights, optimiser moments and RNG states from a checkpoint checked by `check_compatible`."""
    tensors = load_weights(path)
    with safetensors.safe_open(path, "pt") as f:
        meta = f.metadata()
    load_into(model, {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}, path)
    _restore_optimizer(optimizer, tensors)
    _restore_rng(tensors, meta, generator)


def _differences(old: Mapping, new: Mapping, prefix: str = "") -> list[tuple[str, object, object]]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out
