"""The ablation table: plain MAE, each seed feature added alone, full DiyT, read from an optional JSON file.

The file (dvc.yaml passes its path, `reports/ablation.json`) is written by the ablation command, one row per
experiment, metrics being the dataset means (the `mean` of `reports/<dataset>/metrics.json`):

    {
      "dataset": "synthetic",                       # optional
      "rows": [
        {"name": "plain MAE",
         "overrides": {"model.norm": "layernorm", "model.masking": "random",
                       "model.pos_embed": "sincos", "model.aggregate_layers": []},
         "image_auroc": 0.71, "aupro": 0.66, "pixel_auroc": 0.90,
         "f1": 0.58,                               # optional: F1 at the validation threshold
         "train_images_per_s": 41.2,               # optional: pre-training throughput
         "seeds": 3,                               # optional: metrics are means over this many training seeds,
         "image_auroc_std": 0.01, "aupro_std": 0.01,  # ... with these standard deviations (also
         "pixel_auroc_std": 0.01, "f1_std": 0.02,  #     optional), shown as mean ± std
         "experiment": "exp-1a2b3"},               # optional: the `dvc exp` name
        {"name": "DiyT (full)", "overrides": {}, ...}
      ]
    }

`overrides` are the `dvc exp run -S key=value` pairs of that row ({} for the default params; values as
given to -S, strings or JSON values). The optional columns (F1, train images/s) are shown when any row has
them. Unknown keys are refused, as in params.yaml, so a typo cannot silently drop a column.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from diyt.errors import DiytError
from diyt.report.results import read_json


HOW_TO_RUN = "python benchmarks/ablation.py"  # trains and evaluates every row, writes the file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AblationRow(_Strict):
    name: str
    overrides: dict[str, object] = {}
    image_auroc: float
    aupro: float
    pixel_auroc: float
    f1: float | None = None
    train_images_per_s: float | None = None
    seeds: int | None = None
    image_auroc_std: float | None = None
    aupro_std: float | None = None
    pixel_auroc_std: float | None = None
    f1_std: float | None = None
    experiment: str | None = None


class Ablation(_Strict):
    dataset: str | None = None
    rows: list[AblationRow]


def read_ablation(path: Path) -> Ablation | None:
    """The parsed file, None when it does not exist, a one-line DiytError when it is malformed."""
    path = Path(path)
    if not path.exists():
        return None
    raw = read_json(path, "rerun the ablation")
    try:
        return Ablation.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"])
        raise DiytError(f"{path}: {key}: {e['msg']}; see diyt.report.ablation for the format") from None


def overrides_text(overrides: dict[str, object]) -> str:
    """`-S key=value` pairs as on the command line (lists in YAML flow style) in backticks, or "defaults"."""
    if not overrides:
        return "defaults"
    return " ".join(f"`-S {k}={json.dumps(v, separators=(',', ':')) if isinstance(v, list | dict) else v}`"
                    for k, v in overrides.items())


def _cell(value: float | None, digits: int, std: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def ablation_table(ablation: Ablation) -> tuple[list[str], list[list[str]]]:
    """Columns and formatted rows in the seed's order (image AUROC, F1, AUPRO), then pixel AUROC, seeds, train
    images/s; the optional columns only when some row has them; mean ± std where the row has a std."""
    rows = ablation.rows
    columns = [("experiment", lambda r: r.name), ("overrides", lambda r: overrides_text(r.overrides)),
               ("image AUROC", lambda r: _cell(r.image_auroc, 3, r.image_auroc_std)),
               ("F1", lambda r: _cell(r.f1, 3, r.f1_std)), ("AUPRO", lambda r: _cell(r.aupro, 3, r.aupro_std)),
               ("pixel AUROC", lambda r: _cell(r.pixel_auroc, 3, r.pixel_auroc_std)),
               ("seeds", lambda r: "–" if r.seeds is None else str(r.seeds)),
               ("train images/s", lambda r: _cell(r.train_images_per_s, 1))]
    optional = {"F1": any(r.f1 is not None for r in rows), "seeds": any(r.seeds is not None for r in rows),
                "train images/s": any(r.train_images_per_s is not None for r in rows)}
    columns = [(name, cell) for name, cell in columns if optional.get(name, True)]
    return [name for name, _ in columns], [[cell(r) for _, cell in columns] for r in rows]
