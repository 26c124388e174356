"""Where training runs: the device, and the process group when launched through torchrun.

A stage asking for `train.nproc > 1` re-executes itself under `torchrun --standalone`, which sets RANK,
WORLD_SIZE and LOCAL_RANK; every process then joins one group (NCCL on GPU, gloo on CPU). A single process
never creates a group, so it pays nothing for DDP.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from diyt.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    """One process's view: its device, its rank among `world_size`, and the speed switches that apply there."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp: bool = False  # bf16 autocast (CUDA, or a CPU with bf16 matrix units)
    compile: bool = False
    num_workers: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files, logs and draws a progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch_under_torchrun(nproc: int, device: Literal["auto", "cpu", "cuda"]) -> None:
    """Replace this process by `torchrun --standalone --nproc_per_node nproc <this script> <same args>`, after
    checking that each process will have a GPU of its own where training runs on CUDA."""
    gpus = torch.cuda.device_count() if pick_device(device).type == "cuda" else 0
    if gpus and nproc > gpus:
        raise ConfigError(f"train.nproc: {nproc} processes, but only {gpus} CUDA device(s) are visible and each "
                          f"process needs its own; set train.nproc to at most {gpus}, or train.device: cpu")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "--", sys.argv[0], *sys.argv[1:]]  # "--": none of our flags is read as an abbreviation of torchrun's
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def pick_device(kind: Literal["auto", "cpu", "cuda"], local_rank: int = 0) -> torch.device:
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA device is visible; use auto or cpu")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices on AMX tiles that the kernel has granted this process, where bf16
    autocast pays off (a training step ~1.4x faster). Other CPUs train in float32, where bf16 was not measured
    to pay off."""
    capabilities = getattr(torch.cpu, "get_capabilities", lambda: {})()
    init = getattr(torch.cpu, "_init_amx", lambda: False)  # asks the kernel for the tile state (Linux >= 5.16)
    return bool(capabilities.get("amx_bf16", False)) and bool(init())


def uses_bf16(device: torch.device, amp: bool) -> bool:
    """Whether steps on `device` run in bf16 autocast: `train.amp` on CUDA, or on a CPU with AMX."""
    return amp and (device.type == "cuda" or cpu_has_bf16_matmul())


def start(device: Literal["auto", "cpu", "cuda"], *, amp: bool, compile: bool, num_workers: int) -> Runtime:
    """The runtime of this process, joining the process group when torchrun started it."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in
                          (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    where = pick_device(device, local)
    if where.type == "cuda":
        torch.cuda.set_device(where)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        # bit-identical CPU runs: same data, params and thread count → same weights
        torch.use_deterministic_algorithms(True)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo", device_id=where
                                if where.type == "cuda" else None)
    return Runtime(where, rank, world, uses_bf16(where, amp), compile, num_workers)


def stop(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
