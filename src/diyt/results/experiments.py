"""DVC experiments as `dvc exp show --json` lists them: the workspace, the commits and their experiments.

Each becomes an `Experiment` with flattened params ("model.norm") and metrics ("<file>: mean.image_auroc");
two of them compare as tables of the keys whose values differ.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from diyt.report.results import METRICS_FILE

WORKSPACE = "workspace"
PARAMS_FILE = "params.yaml"  # its keys are shown without the file name


@dataclass(frozen=True)
class Experiment:
    """One row of `dvc exp show`: the workspace, a commit, or an experiment run on top of `baseline`."""

    label: str  # what the dashboard shows: "workspace", "main (3177267)", the experiment's name
    rev: str  # "workspace" or a commit sha (also the experiment's git ref target)
    kind: str  # "workspace" | "commit" | "experiment"
    baseline: str = ""  # the commit an experiment branched from (its own sha for a commit)
    params: dict[str, object] = field(default_factory=dict)  # flattened: "eval.sigma" -> 4.0
    metrics: dict[str, object] = field(default_factory=dict)  # file -> its parsed contents


def experiments(root: Path, timeout: float = 120) -> list[Experiment]:
    """Everything `dvc exp show --json` lists in the project at `root`; [] when DVC or git is missing or fails."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        proc = subprocess.run(["dvc", "exp", "show", "--json"], cwd=root, capture_output=True, text=True,
                              timeout=timeout, env=env)
        table = json.loads(proc.stdout) if proc.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return []
    return parse_exp_show(table)


def parse_exp_show(table: object) -> list[Experiment]:
    """`dvc exp show --json` output (a list of revisions, each with its experiments) as Experiments in order."""
    out: list[Experiment] = []
    for row in table if isinstance(table, list) else []:
        if not isinstance(row, dict) or not row.get("rev"):
            continue
        rev = str(row["rev"])
        if rev == WORKSPACE:
            out.append(_experiment(WORKSPACE, WORKSPACE, "workspace", "", row))
            continue
        name = row.get("name") or "commit"
        out.append(_experiment(f"{name} ({rev[:7]})", rev, "commit", rev, row))
        for group in row.get("experiments") or []:
            runs = group.get("revs") if isinstance(group, dict) else None
            for run in runs or []:
                if isinstance(run, dict) and run.get("rev"):
                    label = run.get("name") or group.get("name") or str(run["rev"])[:7]
                    out.append(_experiment(label, str(run["rev"]), "experiment", rev, run))
    return out


def _experiment(label: str, rev: str, kind: str, baseline: str, row: Mapping) -> Experiment:
    data = row.get("data") if isinstance(row.get("data"), dict) else {}
    params: dict[str, object] = {}
    for file, content in (data.get("params") or {}).items():
        prefix = "" if file == PARAMS_FILE else f"{file}:"
        params.update(flatten((content or {}).get("data") or {}, prefix))
    metrics = {file: (content or {}).get("data") for file, content in (data.get("metrics") or {}).items()
               if isinstance((content or {}).get("data"), dict)}
    return Experiment(label, rev, kind, baseline, params, metrics)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def summary_of(experiment: Experiment, summary_path: str) -> dict | None:
    """The dataset summary ({"categories", "mean"}) an experiment recorded at `summary_path` (relative to the
    project root, as DVC names metrics files), or None."""
    data = experiment.metrics.get(summary_path)
    ok = isinstance(data, dict) and isinstance(data.get("categories"), dict) and isinstance(data.get("mean"), dict)
    return data if ok else None


def summary_path(reports: str, dataset: str) -> str:
    """How DVC names a dataset summary: "<reports>/<dataset>/metrics.json", relative and with forward slashes."""
    return Path(reports, dataset, METRICS_FILE).as_posix()


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _table(a: Mapping[str, object], b: Mapping[str, object], only_changed: bool, numeric_change: bool
           ) -> pd.DataFrame:
    rows = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if only_changed and _same(va, vb):
            continue
        row = {"key": key, "A": _show(va), "B": _show(vb)}
        if numeric_change:
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
            row["B - A"] = float(vb) - float(va) if numbers else None
        rows.append(row)
    columns = ["key", "A", "B"] + (["B - A"] if numeric_change else [])
    return pd.DataFrame(rows, columns=columns)


def _show(value: object) -> str:
    """A value as one table cell (cells of one column must share a type to display)."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def diff_frames(a: Experiment, b: Experiment, only_changed: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(params, metrics) tables of A against B: key, A, B (and B - A for metrics), the differing keys only
    unless `only_changed` is False. Metrics keys are "<file>: <key path>"."""
    metrics_a, metrics_b = (
        {f"{file}: {key}": value for file, data in e.metrics.items() for key, value in flatten(data).items()}
        for e in (a, b))
    return _table(a.params, b.params, only_changed, False), _table(metrics_a, metrics_b, only_changed, True)
