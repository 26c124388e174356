"""The evaluate and report stages' outputs, read from the working tree or, through `git show`, at a revision.

Layout (README, "The pipeline"): `<reports>/<dataset>/metrics.json` is the dataset summary and
`<reports>/<dataset>/categories/<category>/` holds `metrics.json`, `plots/*.json` and `figures/*.png`;
`<models>/<dataset>/<category>/` holds a trained model. The `<reports>` and `<models>` folders are passed in by
the caller, which names them once.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from diyt.eval.metrics import METRIC_KEYS
from diyt.report.results import METRICS_FILE, PLOTS_DIR, CategoryResults
from diyt.report.summary import summarize
from diyt.report.tables import COLUMNS
from diyt.train.checkpoint import CONFIG, WEIGHTS

CATEGORIES_DIR = "categories"
WORKSPACE = "workspace"  # the working tree, as `dvc exp show` names it
HEADLINE = ("image_auroc", "f1", "aupro", "pixel_auroc")  # the seed's table plus pixel AUROC
LABELS = dict(COLUMNS)  # metric key -> column label
CURVES = {"roc": ("fpr", "tpr"), "pr": ("recall", "precision"), "pro": ("fpr", "pro")}  # plot -> (x, y)


# ------------------------------------------------------------------------------------------------- files
def stamp(*folders: Path) -> int:
    """The newest modification time (ns) of any JSON or weights file under `folders`: a cache key for results."""
    newest = 0
    for folder in folders:
        if Path(folder).is_dir():
            for path in Path(folder).rglob("*"):
                if path.suffix in (".json", ".safetensors") and path.is_file():
                    newest = max(newest, path.stat().st_mtime_ns)
    return newest


def read_text_at(root: Path, rev: str, path: Path) -> str | None:
    """The text of `path` (inside `root`) in the working tree or at git revision `rev`; None when absent."""
    path = Path(path)
    if rev == WORKSPACE:
        return path.read_text() if path.is_file() else None
    try:
        rel = path.resolve().relative_to(Path(root).resolve()).as_posix()
        proc = subprocess.run(["git", "-C", str(root), "show", f"{rev}:./{rel}"], capture_output=True, text=True,
                              timeout=30)
    except (ValueError, OSError, subprocess.TimeoutExpired):  # outside the repository, no git, hung
        return None
    return proc.stdout if proc.returncode == 0 else None


def read_json_at(root: Path, rev: str, path: Path) -> object | None:
    """The parsed JSON of `path` in the working tree or at `rev`; None when absent or not valid JSON."""
    text = read_text_at(root, rev, path)
    try:
        return None if text is None else json.loads(text)
    except json.JSONDecodeError:
        return None


# ------------------------------------------------------------------------------------------- discovery
def datasets(reports: Path) -> list[str]:
    """The datasets with results: folders of `reports` holding a summary or per-category results."""
    if not Path(reports).is_dir():
        return []
    return sorted(d.name for d in Path(reports).iterdir()
                  if d.is_dir() and ((d / METRICS_FILE).is_file() or categories(reports, d.name)))


def categories(reports: Path, dataset: str) -> list[str]:
    """The categories of `dataset` whose evaluation wrote metrics, in the summary's order, then by name."""
    folder = Path(reports) / dataset / CATEGORIES_DIR
    found = {d.name for d in folder.iterdir() if (d / METRICS_FILE).is_file()} if folder.is_dir() else set()
    ordered = summary_order(reports, dataset)
    return [c for c in ordered if c in found] + sorted(found - set(ordered))


def summary_order(reports: Path, dataset: str) -> list[str]:
    data = read_json_at(Path(reports), WORKSPACE, Path(reports) / dataset / METRICS_FILE)
    return list(data["categories"]) if _is_summary(data) else []


def trained_categories(models: Path, dataset: str) -> list[str]:
    """The categories of `dataset` with a trained model (weights and config) under `models`."""
    folder = Path(models) / dataset
    if not folder.is_dir():
        return []
    return sorted(d.name for d in folder.iterdir() if (d / CONFIG).is_file() and (d / WEIGHTS).is_file())


# ---------------------------------------------------------------------------------------------- metrics
def _is_summary(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("categories"), dict) and isinstance(data.get("mean"), dict)


def summary(root: Path, reports: Path, dataset: str, rev: str = WORKSPACE) -> dict | None:
    """The dataset summary {"categories", "mean"} at `rev`; in the working tree, rebuilt from the categories'
    metrics when the report stage has not written it yet. None when there is nothing to summarise."""
    data = read_json_at(root, rev, Path(reports) / dataset / METRICS_FILE)
    if _is_summary(data):
        return data
    if rev != WORKSPACE:
        return None
    per_category = {}
    for category in categories(reports, dataset):
        metrics = read_json_at(root, rev, Path(reports) / dataset / CATEGORIES_DIR / category / METRICS_FILE)
        if isinstance(metrics, dict) and all(k in metrics for k in METRIC_KEYS):
            per_category[category] = metrics
    return summarize(per_category) if per_category else None


def _rows(data: Mapping) -> dict[str, Mapping]:
    return {**data.get("categories", {}), "mean": data.get("mean", {})}


def metrics_table(current: Mapping, baseline: Mapping | None = None,
                  keys: Sequence[str] = HEADLINE) -> pd.DataFrame:
    """One row per category and the mean; a column per metric, and its change from `baseline` when given."""
    rows = _rows(current)
    before = _rows(baseline) if baseline else {}
    table = {}
    for name, values in rows.items():
        row = {}
        for key in keys:
            row[LABELS[key]] = values.get(key, float("nan"))
            if baseline is not None:
                row[f"Δ {LABELS[key]}"] = row[LABELS[key]] - before.get(name, {}).get(key, float("nan"))
        table[name] = row
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame.index.name = "category"
    return frame


def comparison_table(summaries: Mapping[str, Mapping], row: str = "mean",
                     keys: Sequence[str] = HEADLINE) -> pd.DataFrame:
    """One row per source (workspace, commit, experiment): its `row` ("mean" or a category) of each metric."""
    table = {name: {LABELS[k]: _rows(s).get(row, {}).get(k, float("nan")) for k in keys}
             for name, s in summaries.items()}
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame.index.name = "source"
    return frame


# ----------------------------------------------------------------------------------------------- curves
def curves(root: Path, reports: Path, dataset: str, category: str, kind: str,
           revs: Mapping[str, str]) -> pd.DataFrame:
    """The `kind` curve ("roc", "pr" or "pro") of each source {label: rev} that has it, stacked with a `source`
    column; columns x, y as the plot names them."""
    x, y = CURVES[kind]
    path = Path(reports) / dataset / CATEGORIES_DIR / category / PLOTS_DIR / f"{kind}.json"
    frames = []
    for label, rev in revs.items():
        points = read_json_at(root, rev, path)
        if isinstance(points, list) and points and all(x in p and y in p for p in points):
            frames.append(pd.DataFrame(points)[[x, y]].assign(source=label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[x, y, "source"])


# ----------------------------------------------------------------------------------------------- scores
def scores_frame(results: CategoryResults) -> pd.DataFrame:
    """One row per test image: image, defect_type, label, score and the path of its evaluate figure."""
    frame = pd.DataFrame(results.scores, columns=["image", "defect_type", "label", "score"])
    frame["figure"] = [str(results.figures / f"{d}_{Path(i).stem}.png")  # as diyt.eval.outputs names them
                       for i, d in zip(frame["image"], frame["defect_type"])]
    return frame
