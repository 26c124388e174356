"""One category's evaluation as the report reads it: metrics, curves, per-image scores and the figures folder.

The layout is the evaluate stage's (`dvc.yaml` passes `<categories>/<category>/metrics.json`, `.../plots`,
`.../figures`; `diyt.eval.outputs` names the files inside). A missing or broken file stops with one line
naming it and the stage to run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from diyt.errors import DiytError
from diyt.eval.metrics import METRIC_KEYS

METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
FIGURES_DIR = "figures"


def read_json(path: Path, remedy: str) -> object:
    """The parsed file, or a one-line DiytError naming it and `remedy` (what to run)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DiytError(f"{path}: missing; {remedy}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DiytError(f"{path}: not valid JSON ({err}); {remedy}") from None
    except OSError as err:
        raise DiytError(f"{path}: cannot read it ({err.strerror or err}); {remedy}") from None


@dataclass(frozen=True)
class CategoryResults:
    """Everything the report draws for one category."""

    name: str
    metrics: dict  # the evaluate stage's metrics.json (METRIC_KEYS, threshold, per_defect_type_auroc, counts)
    roc: list[dict[str, float]]  # [{"fpr", "tpr"}], image level
    pro: list[dict[str, float]]  # [{"fpr", "pro"}], pixel level
    scores: list[dict]  # [{"image", "defect_type", "label", "score", "predicted"}], one per test image
    figures: Path  # <defect_type>_<image stem>.png panels

    @property
    def threshold(self) -> float:
        return float(self.metrics["threshold"])


def load_category(categories_dir: Path, category: str) -> CategoryResults:
    """The evaluate stage's outputs for `category` under `categories_dir` (reports/<dataset>/categories)."""
    root = Path(categories_dir) / category
    remedy = f"run the evaluate stage first (dvc repro evaluate@{category})"
    metrics = read_json(root / METRICS_FILE, remedy)
    missing = [k for k in (*METRIC_KEYS, "threshold") if k not in metrics] if isinstance(metrics, dict) else ["all"]
    if missing:
        raise DiytError(f"{root / METRICS_FILE}: missing keys {', '.join(missing)}; {remedy}")
    plots = root / PLOTS_DIR
    return CategoryResults(category, metrics, read_json(plots / "roc.json", remedy),
                           read_json(plots / "pro.json", remedy), read_json(plots / "scores.json", remedy),
                           root / FIGURES_DIR)
