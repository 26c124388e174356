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


def record_stage_time(path: str | os.PathLike | None, stage: str, seconds: float,
                      parts: dict[str, float] | None = None) -> None:
    """Write `path` (a `<timings>/<stage>.json`) atomically; under torchrun only rank 0 writes; None: nothing.
    `parts` names the seconds of steps within the stage (the evaluation's `error_level_fit_seconds`)."""
    if path is None or os.environ.get("RANK", "0") != "0":
        return
    write_json(path, {"stage": stage, "seconds": round(float(seconds), 3),
                      "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      "hardware": hardware(), **{k: round(float(v), 3) for k, v in (parts or {}).items()}})


@contextlib.contextmanager
def stage_timer(path: str | os.PathLike | None, stage: str) -> Iterator[dict[str, float]]:
    """`with stage_timer(args.timing, "prepare") as parts: ...` records the block's wall time if it succeeds,
    with whatever seconds the block puts in `parts`. Wall times live here, never in a metrics file (where they
    would make every rerun differ)."""
    start = time.perf_counter()
    parts: dict[str, float] = {}
    yield parts
    record_stage_time(path, stage, time.perf_counter() - start, parts)


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
