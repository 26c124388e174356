"""Stage wall times: each stage records its own, the report reads them all.

DVC keeps no durations, and file modification times say nothing reliable about them (a checkout or a cache
restore rewrites them), so a stage measures itself and writes `<timings>/<stage>.json`:

    {"stage": "pretrain", "seconds": 412.3, "finished": "2025-01-01T12:00:00+00:00",
     "hardware": {"cpu": ..., "cores": 2, "gpu": null, "gpus": 0, "torch": "2.x", "python": "3.11.x"}}

This module is kept free of heavy imports (torch is imported only to name the GPU) so every stage can use it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

from diyt.errors import DiytError
from diyt.io import write_json


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else whatever `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def hardware() -> dict[str, object]:
    """CPU model, logical cores, first GPU's name (None without CUDA), GPU count, torch and Python versions."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if gpus else None,
            "gpus": gpus, "torch": torch.__version__, "python": platform.python_version()}


def record_stage_time(path: str | os.PathLike | None, stage: str, seconds: float) -> None:
    """Write `path` (a `<timings>/<stage>.json`) atomically; under torchrun only rank 0 writes; None: nothing."""
    if path is None or os.environ.get("RANK", "0") != "0":
        return
    write_json(path, {"stage": stage, "seconds": round(float(seconds), 3),
                      "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "hardware": hardware()})


@contextlib.contextmanager
def stage_timer(path: str | os.PathLike | None, stage: str) -> Iterator[None]:
    """`with stage_timer(args.timing, "prepare"): ...` records the block's wall time if it succeeds."""
    start = time.perf_counter()
    yield
    record_stage_time(path, stage, time.perf_counter() - start)


def read_timings(timings_dir: str | os.PathLike) -> list[dict]:
    """Every `<stage>.json` under `timings_dir` in the order the stages finished; [] when there is none."""
    records = []
    for path in sorted(Path(timings_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            records.append({"stage": str(record["stage"]), "seconds": float(record["seconds"]),
                            "finished": str(record.get("finished", "")), "hardware": record.get("hardware") or {}})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DiytError(f"{path}: not a stage timing ({err!r}); rerun that stage or delete the file") from None
    return sorted(records, key=lambda r: (r["finished"], r["stage"]))
