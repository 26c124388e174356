"""Run facts for the report: which params, which code, which machine, how long each stage took."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from diyt.report.timings import hardware, read_timings, record_stage_time, stage_timer

__all__ = ["RunFacts", "collect_facts", "git_commit", "record_stage_time", "stage_timer"]


def git_commit(cwd: str | Path = ".") -> str:
    """`git rev-parse HEAD` in `cwd`, or "unknown" outside a git work tree (or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


@dataclass(frozen=True)
class RunFacts:
    params_digest: str  # diyt.config.Params.digest() of the params the report was rendered with
    model_digest: str | None  # the digest the pre-trained model recorded in its config.json
    git_commit: str
    hardware: dict[str, object]  # of the machine that rendered the report
    timings: list[dict] = field(default_factory=list)  # diyt.report.timings.read_timings records


def collect_facts(params_digest: str, model_digest: str | None, timings_dir: Path | None,
                  cwd: str | Path = ".") -> RunFacts:
    timings = read_timings(timings_dir) if timings_dir is not None else []
    return RunFacts(params_digest, model_digest, git_commit(cwd), hardware(), timings)
